"""Refunds through WeChat Pay v3: full and partial, never beyond what was paid, finished by the
REFUND.* notification (verified like any other), and money for unknown orders sent back."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from payments import refunds
from payments.models import PaymentTransaction, Refund, RefundStatus
from store import jobs, orders
from store.models import Order, OrderStatus
from tests import factories
from wechat_service.errors import InvalidInputError
from wechat_service.extensions import db

OPENID = "oREFUND0000001"


@pytest.fixture
def shop(app: Flask, simulator: str) -> dict[str, Any]:
    return factories.shop(
        simulator,
        refund_status="PROCESSING",
        product={"code": "r50", "price_fen": 4990, "face_value_fen": 5000},
        openid=OPENID,
        phone="13800139202",
    )


def _fulfilled_order(app: Flask, shop: dict[str, Any], simulator: str, key: str = "refund-key-0001") -> Order:
    from payments import services as payments

    order = factories.order(shop["sub"], shop["product"], key)
    payments.prepay(order, OPENID, "50 元话费")
    db.session.commit()
    note = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False},
        timeout=10,
    ).json()
    assert _notify(app, shop, note["headers"], note["body"]).status_code == 204
    db.session.expire_all()
    assert jobs.fulfil(db.session.get(Order, order.id).fulfilment_id) == "succeeded"
    db.session.expire_all()
    return db.session.get(Order, order.id)


def _notify(app: Flask, shop: dict[str, Any], headers: dict[str, str], body: str) -> Any:
    return app.test_client().post(
        f"/payments/wechatpay/v3/{shop['merchant'].id}/notify", headers=headers, data=body.encode()
    )


def _finish(simulator: str, refund: Refund, **extra: Any) -> dict[str, Any]:
    return requests.post(
        f"{simulator}/_sim/wechatpay/refunds/{refund.out_refund_no}/finish",
        json={"deliver": False, **extra},
        timeout=5,
    ).json()


def test_partial_refunds_never_exceed_the_payment(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    order = _fulfilled_order(app, shop, simulator)
    first = refunds.partial(order, 1000, "late delivery", staff_user_id=None)  # type: ignore[arg-type]
    second = refunds.partial(order, 3990, "goodwill", staff_user_id=None)  # type: ignore[arg-type]
    assert first.out_refund_no != second.out_refund_no
    with pytest.raises(InvalidInputError):
        refunds.partial(order, 1, "one fen too many", staff_user_id=None)  # type: ignore[arg-type]
    db.session.expire_all()
    assert db.session.get(Order, order.id).refunded_fen == 4990
    assert {r.status for r in refunds.of(order)} == {RefundStatus.processing}


def test_refund_success_notification_finishes_the_refund_once(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order = _fulfilled_order(app, shop, simulator)
    orders.refund(order, "customer complaint")
    db.session.expire_all()
    refund = db.session.scalars(sa.select(Refund)).one()
    assert db.session.get(Order, order.id).status is OrderStatus.refunding
    note = _finish(simulator, refund)
    for _ in range(3):
        assert _notify(app, shop, note["headers"], note["body"]).status_code == 204
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunded
    assert db.session.get(Refund, refund.id).status is RefundStatus.success
    refund_rows = db.session.scalars(
        sa.select(PaymentTransaction).where(PaymentTransaction.kind == "refund")
    ).all()
    assert [(r.amount_fen, r.anomaly) for r in refund_rows] == [(4990, None)]


def test_refund_notification_with_the_wrong_amount_is_refused(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order = _fulfilled_order(app, shop, simulator)
    refund = refunds.partial(order, 990, "goodwill", staff_user_id=None)  # type: ignore[arg-type]
    note = _finish(simulator, refund, tamper={"amount": {"refund": 4990, "total": 4990}})
    assert _notify(app, shop, note["headers"], note["body"]).status_code == 400
    forged = _finish(simulator, refund)
    assert _notify(app, shop, forged["headers"], forged["body"].replace("a", "b", 1)).status_code == 401
    db.session.expire_all()
    assert db.session.get(Refund, refund.id).status is RefundStatus.processing
    anomaly = db.session.scalars(
        sa.select(PaymentTransaction.anomaly).where(PaymentTransaction.kind == "refund")
    )
    assert list(anomaly) == ["amount_mismatch"]


def test_abnormal_refund_releases_its_reservation(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    order = _fulfilled_order(app, shop, simulator)
    refund = refunds.partial(order, 2000, "goodwill", staff_user_id=None)  # type: ignore[arg-type]
    note = _finish(simulator, refund, status="ABNORMAL")
    assert _notify(app, shop, note["headers"], note["body"]).status_code == 204
    db.session.expire_all()
    assert db.session.get(Refund, refund.id).status is RefundStatus.failed
    order = db.session.get(Order, order.id)
    assert order.refunded_fen == 0 and order.status is OrderStatus.fulfilled
    assert orders.history(order.id)[-1].detail == {"refund_failed": "ABNORMAL", "amount_fen": 2000}


def test_payment_for_an_unknown_order_is_recorded_and_sent_back(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    from payments import services as payments

    order = factories.order(shop["sub"], shop["product"], "ghost-key-001")
    payments.prepay(order, OPENID, "50 元话费")
    db.session.commit()
    note = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={
            "out_trade_no": order.out_trade_no,
            "deliver": False,
            "tamper": {"out_trade_no": "WXGHOST000000001"},
        },
        timeout=10,
    ).json()
    assert _notify(app, shop, note["headers"], note["body"]).status_code == 204
    row = db.session.scalars(
        sa.select(PaymentTransaction).where(PaymentTransaction.anomaly == "unknown_order")
    ).one()
    refund = db.session.scalars(sa.select(Refund).where(Refund.intent_id.is_(None))).one()
    assert row.amount_fen == 4990 and refund.amount_fen == 4990 and refund.out_trade_no == "WXGHOST000000001"
    assert _notify(app, shop, note["headers"], note["body"]).status_code == 204  # a resend: no second refund
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Refund)) == 1


def test_a_refund_number_taken_meanwhile_is_a_conflict_not_someone_elses_refund(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    from wechat_service.errors import ConflictError

    order = _fulfilled_order(app, shop, simulator)
    first = refunds.partial(order, 1000, "goodwill", staff_user_id=None)  # type: ignore[arg-type]
    # A second staff member computed the same number before the first one's row existed.
    with pytest.raises(ConflictError):
        refunds.request(order, 2000, "late", out_refund_no=first.out_refund_no)
    db.session.expire_all()
    assert db.session.get(Order, order.id).refunded_fen == 1000


def test_the_order_is_refunded_only_when_every_refund_has_succeeded(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order = _fulfilled_order(app, shop, simulator)
    partial = refunds.partial(order, 4990, "everything, by hand", staff_user_id=None)  # type: ignore[arg-type]
    db.session.refresh(order)
    orders.refund(order, "cancel")  # nothing left to ask for: the partial refund is still processing
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunding
    note = _finish(simulator, partial)
    assert _notify(app, shop, note["headers"], note["body"]).status_code == 204
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunding  # noted; the sweep finishes
    assert jobs.sweep_orders().get("refunded") == 1
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunded
