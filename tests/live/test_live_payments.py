"""The same WeChat Pay notification fifty times at once, through gunicorn: one payment, one
fulfilment, one top-up."""

from __future__ import annotations

import requests
import sqlalchemy as sa

from tests import helpers
from tests.live.conftest import Live


def test_fifty_concurrent_duplicate_notifications_have_one_effect(live: Live) -> None:
    from accounts import services
    from accounts.subscribers import touch
    from payments import services as payments
    from payments.models import PaymentTransaction
    from store import catalogue, orders
    from store import services as store_services
    from store.models import Fulfilment, Order
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain", kind="mini_program")
    phone = "13800139300"

    def setup() -> tuple[int, str]:
        account = services.account_by_appid(fields["appid"])
        helpers.register_merchant(live.sim, account.id)
        product = catalogue.add_product(
            account_id=account.id,
            code="t100",
            name="100 元话费",
            kind="topup",
            price_fen=9950,
            face_value_fen=10000,
        )
        sub = touch(account.id, "oSTORM00000001", None)
        store_services.bind_phone(account.id, sub.id, phone, method="sms")
        order = orders.create_order(account.id, sub.id, product.id, "storm-key-0001", "wechatpay_v3")
        payments.prepay(order, "oSTORM00000001", product.name)
        db.session.commit()
        return order.id, order.out_trade_no

    order_id, out_trade_no = live.in_app(setup)
    before = requests.get(f"{live.sim}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    result = requests.post(
        f"{live.sim}/_sim/wechatpay/pay",
        json={"out_trade_no": out_trade_no, "copies": 50, "concurrent": True},
        timeout=60,
    ).json()
    assert len(result["statuses"]) == 50 and set(result["statuses"]) == {204}, result["statuses"]
    assert live.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 1
    assert live.scalar(sa.select(sa.func.count()).select_from(Fulfilment)) == 1
    live.wait_for(
        lambda: live.scalar(sa.select(Order.status).where(Order.id == order_id)).value == "fulfilled",
        30,
        "the order to be fulfilled",
    )
    after = requests.get(f"{live.sim}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    assert after == before + 10000


def test_v2_storm_then_failed_fulfilment_is_refunded_by_notification(live: Live) -> None:
    """API v2, HMAC-SHA256: fifty concurrent copies pay once; the BOSS refuses the line, the refund
    is asked for, and WeChat Pay's encrypted refund notification (posted by the simulator on its
    own, to the live web process) finishes it — no sweep involved."""
    from accounts import services
    from accounts.subscribers import touch
    from payments import services as payments
    from payments.models import PaymentTransaction, Refund
    from store import catalogue, orders
    from store import services as store_services
    from store.models import Order
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain")

    def setup() -> tuple[int, str]:
        account = services.account_by_appid(fields["appid"])
        helpers.register_wechatpay_v2(live.sim, account.id, sign_type="HMAC-SHA256")
        product = catalogue.add_product(
            account_id=account.id,
            code="v2t",
            name="20 元话费",
            kind="topup",
            price_fen=1990,
            face_value_fen=2000,
        )
        sub = touch(account.id, "oSTORMV2000001", None)
        store_services.bind_phone(account.id, sub.id, "13800000000", method="sms")  # the BOSS refuses it
        order = orders.create_order(account.id, sub.id, product.id, "storm-v2-0001", "wechatpay_v2")
        payments.prepay(order, "oSTORMV2000001", product.name, client_ip="10.1.2.3")
        db.session.commit()
        return order.id, order.out_trade_no

    order_id, out_trade_no = live.in_app(setup)
    result = requests.post(
        f"{live.sim}/_sim/wechatpay/v2/pay",
        json={"out_trade_no": out_trade_no, "copies": 50, "concurrent": True},
        timeout=60,
    ).json()
    assert len(result["statuses"]) == 50 and set(result["statuses"]) == {200}, result["statuses"]
    live.wait_for(
        lambda: live.scalar(sa.select(Order.status).where(Order.id == order_id)).value == "refunded",
        30,
        "the order to be refunded",
    )
    kinds = live.in_app(
        lambda: sorted(k.value for k in db.session.scalars(sa.select(PaymentTransaction.kind)))
    )
    assert kinds == ["payment", "refund"]
    assert live.in_app(lambda: [r.value for r in db.session.scalars(sa.select(Refund.status))]) == ["success"]
