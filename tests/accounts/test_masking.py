"""Personal numbers in free text (messages, voice transcripts) as a masked role sees them: every
way a subscriber writes a mobile number is masked with its layout kept; other numbers are not."""

from __future__ import annotations

import pytest

from accounts.masking import mask_detail, mask_text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("13800138000", "138****8000"),
        ("我的手机号13800138000", "我的手机号138****8000"),
        ("号码:13800138000,谢谢", "号码:138****8000,谢谢"),
        ("138-0013-8000", "138-****-8000"),
        ("138 0013 8000", "138 **** 8000"),
        ("138.0013.8000", "138.****.8000"),
        ("打 138-0013 8000 找我", "打 138-**** 8000 找我"),
        ("+8613800138000", "+86138****8000"),
        ("+86 138 0013 8000", "+86 138 **** 8000"),
        ("+86-138-0013-8000", "+86-138-****-8000"),
        ("008613800138000", "0086138****8000"),
        ("0086 13800138000", "0086 138****8000"),
        ("(+86)13800138000", "(+86)138****8000"),
        ("8613800138000", "86138****8000"),
        ("１３８００１３８０００", "１３８****８０００"),
        ("手机：１３８－００１３－８０００", "手机：１３８－****－８０００"),
        ("＋８６　１３８　００１３　８０００", "＋８６　１３８　****　８０００"),
        ("（+86）13800138000", "（+86）138****8000"),
        ("19912345678 或 15000001111", "199****5678 或 150****1111"),
        ("tel:13800138000.", "tel:138****8000."),
        # A resident identity number and a card number are personal data too.
        ("身份证11010519491231002X", "身份证110105**********2X"),
        ("卡号 4111 1111 1111 1111", "卡号 4111 **** **** 1111"),
        ("6222600260001072444", "6222***********2444"),
    ],
)
def test_mobile_and_identity_numbers_are_masked(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "订单号 20261203138001380001",  # a mobile number inside a longer digit run is not one
        "订单 2026120313800138000",
        "单号 4111111111111112",  # 16 digits failing the card check
        "流水 1234567890123",
        "金额 13800.00 元",
        "¥1,380,013.80",
        "2026-12-03 13:80",
        "20261203",
        "1380013800",  # ten digits
        "12800138000",  # 12x is no mobile prefix
        "23800138000",
        "138-00138-000",
        "房间 1380 0138",
        "010-12345678",
        "工号 001234567",
        "",
    ],
)
def test_other_numbers_stay_readable(text: str) -> None:
    assert mask_text(text) == text


def test_detail_values_are_masked_but_labels_kept() -> None:
    detail = {"type": "text", "content": "call +86 138 0013 8000 about order 20261203000123"}
    assert mask_detail("message", detail) == {
        "type": "text",
        "content": "call +86 138 **** 8000 about order 20261203000123",
    }
