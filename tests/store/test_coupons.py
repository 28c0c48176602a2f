"""Coupons at order creation: fixed and percent off in whole fen, minimum spend, per-person and
total limits (taken atomically), validity, and their use given back when an order closes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from store import coupons, orders
from store.coupons import CouponError
from store.models import Coupon, Order
from tests import factories
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db


@pytest.fixture
def shop(app: Flask, create_account: Any) -> dict[str, Any]:
    account, _, _ = create_account("plain")
    product = factories.topup(account.id, "p50", 4999, 5000)
    subs = []
    for i in range(3):
        sub = factories.subscriber(account.id, f"oCOUPON{i:06d}", f"1380013{9500 + i}")
        subs.append(sub)
    db.session.commit()
    return {"account": account, "product": product, "subs": subs}


def _coupon(shop: dict[str, Any], **kw: Any) -> Coupon:
    fields = {
        "code": "SAVE10",
        "name": "save",
        "kind": "fixed",
        "value": 1000,
        "valid_from": utcnow() - timedelta(days=1),
        "valid_until": utcnow() + timedelta(days=1),
        **kw,
    }
    coupon = coupons.add_coupon(shop["account"].id, **fields)
    db.session.commit()
    return coupon


def _buy(shop: dict[str, Any], sub: int, key: str, code: str | None) -> Order:
    order = factories.order(shop["subs"][sub], shop["product"], key, coupon_code=code)
    db.session.commit()
    return order


def test_fixed_and_percent_discounts_are_whole_fen(shop: dict[str, Any]) -> None:
    _coupon(shop)
    _coupon(shop, code="PCT15", kind="percent", value=15)
    fixed = _buy(shop, 0, "coupon-key-0001", "save10")
    assert (fixed.list_price_fen, fixed.discount_fen, fixed.amount_fen) == (4999, 1000, 3999)
    percent = _buy(shop, 1, "coupon-key-0002", "PCT15")
    assert percent.discount_fen == 749 and percent.amount_fen == 4250  # 15 % of 4999 fen, rounded down


def test_minimum_spend_and_validity(shop: dict[str, Any]) -> None:
    _coupon(shop, code="BIG", min_spend_fen=10000)
    _coupon(
        shop, code="OLD", valid_from=utcnow() - timedelta(days=10), valid_until=utcnow() - timedelta(days=1)
    )
    for code in ("BIG", "OLD", "NOPE"):
        with pytest.raises(CouponError):
            _buy(shop, 0, f"coupon-key-{code}", code)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 0


def test_per_person_and_total_limits(shop: dict[str, Any]) -> None:
    _coupon(shop, per_person_limit=1, total_limit=2)
    _buy(shop, 0, "coupon-key-a001", "SAVE10")
    with pytest.raises(CouponError, match="每人"):
        _buy(shop, 0, "coupon-key-a002", "SAVE10")
    _buy(shop, 1, "coupon-key-b001", "SAVE10")
    with pytest.raises(CouponError, match="领完"):
        _buy(shop, 2, "coupon-key-c001", "SAVE10")
    assert db.session.scalar(sa.select(Coupon.used_count)) == 2


def test_a_closed_order_gives_its_coupon_back(shop: dict[str, Any]) -> None:
    _coupon(shop, total_limit=1)
    order = _buy(shop, 0, "coupon-key-x001", "SAVE10")
    assert orders.close(order)
    db.session.commit()
    assert db.session.scalar(sa.select(Coupon.used_count)) == 0
    assert orders.close(order) is False  # once
    db.session.commit()
    assert db.session.scalar(sa.select(Coupon.used_count)) == 0
    _buy(shop, 1, "coupon-key-y001", "SAVE10")  # available again


def test_a_coupon_never_makes_an_order_free(shop: dict[str, Any]) -> None:
    _coupon(shop, code="HUGE", value=100_000)
    order = _buy(shop, 0, "coupon-key-z001", "HUGE")
    assert order.amount_fen == 1 and order.discount_fen == 4998


def test_invalid_coupons_are_refused_at_creation(shop: dict[str, Any]) -> None:
    from wechat_service.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        coupons.add_coupon(
            shop["account"].id,
            code="x",
            name="x",
            kind="percent",
            value=150,
            valid_from=utcnow(),
            valid_until=utcnow() - timedelta(days=1),
        )
