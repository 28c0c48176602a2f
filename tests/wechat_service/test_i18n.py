"""Language (DESIGN.md "Console, H5 and language"): the catalogue is complete and compiled, the
console speaks Chinese by default, English by the staff member's choice or the browser's before
sign-in, and enums carry their titles."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask
from flask_babel import force_locale

from accounts.models import AuditLog, StaffUser
from payments.models import Provider
from store.models import OrderStatus
from templates_msg.models import CampaignState
from wechat_service.extensions import db
from wechat_service.i18n import TRANSLATIONS, TitledEnum

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wechat_service", "accounts", "payments", "store", "templates_msg", "metrics")
PO = TRANSLATIONS / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po"  # Babel's name for zh_CN
MO = PO.with_suffix(".mo")
KEYWORDS = {"_": None, "lazy_gettext": None, "gettext": None, "ngettext": (1, 2)}


def _catalogue() -> Any:
    with PO.open("rb") as f:
        return read_po(f, locale="zh_CN")


def _msgids_in_the_code() -> set[str]:
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
    found = set()
    for package in PACKAGES:
        for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT / package), method_map, keywords=KEYWORDS
        ):
            found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_string_of_the_code_has_a_chinese_translation() -> None:
    catalogue = _catalogue()
    translated = {m.id: m for m in catalogue if m.id}
    missing = sorted(m for m in _msgids_in_the_code() if m not in translated or not translated[m].string)
    fuzzy = sorted(m.id for m in catalogue if m.id and m.fuzzy)
    assert not missing, f"run scripts/i18n and translate: {missing}"
    assert not fuzzy, f"fuzzy entries left in {PO.name}: {fuzzy}"


def test_the_compiled_catalogue_is_not_stale() -> None:
    compiled = io.BytesIO()
    write_mo(compiled, _catalogue())
    assert MO.read_bytes() == compiled.getvalue(), "run scripts/i18n compile and commit the .mo"


def test_titled_enums_have_a_title_for_every_member_in_both_languages(app: Flask) -> None:
    zh_titles = set()
    for enum_cls in (OrderStatus, CampaignState, Provider):
        assert issubclass(enum_cls, TitledEnum)
        for member in enum_cls:
            with app.test_request_context(), force_locale("en"):
                english = member.title
            with app.test_request_context(), force_locale("zh_CN"):
                chinese = member.title
            assert english != member.value and chinese != english, member
            zh_titles.add(chinese)
    with app.test_request_context(), force_locale("zh_CN"):
        assert OrderStatus.pending_payment.title == "待支付"
        assert Provider.alipay.title == "支付宝"
    assert OrderStatus("paid") is OrderStatus.paid and OrderStatus.paid == "paid"  # still a StrEnum


@pytest.fixture
def admin(create_staff: Any) -> Any:
    return create_staff(admin=True)


def test_the_console_speaks_chinese_unless_asked_otherwise(app: Flask, admin: Any) -> None:
    page = admin.get("/console/").get_data(as_text=True)
    assert "矩阵总览" in page and '<html lang="zh-CN">' in page
    english = admin.get("/console/", headers={"Accept-Language": "en-US,en;q=0.9"}).get_data(as_text=True)
    assert ">Matrix<" in english and '<html lang="en">' in english
    chinese = admin.get("/console/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).get_data(as_text=True)
    assert "矩阵总览" in chinese


def test_a_staff_members_choice_wins_over_the_browser_and_is_audited(app: Flask, admin: Any) -> None:
    resp = admin.form("/console/language", {"locale": "en", "timezone": "Asia/Urumqi"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/console/language")
    user = db.session.scalars(sa.select(StaffUser).where(StaffUser.username == admin.username)).one()
    db.session.refresh(user)
    assert (user.locale, user.timezone) == ("en", "Asia/Urumqi")
    page = admin.get("/console/", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert ">Matrix<" in page and "矩阵总览" not in page
    entry = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "staff.language")).one()
    assert entry.before == {"locale": None, "timezone": None}
    assert entry.after == {"locale": "en", "timezone": "Asia/Urumqi"}


def test_an_unknown_language_or_timezone_is_refused(app: Flask, admin: Any) -> None:
    page = admin.form("/console/language", {"locale": "fr", "timezone": "Mars/Olympus"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "unknown language" in text and "unknown timezone" in text
    user = db.session.scalars(sa.select(StaffUser).where(StaffUser.username == admin.username)).one()
    assert (user.locale, user.timezone) == (None, None)
