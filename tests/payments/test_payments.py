"""Buying with WeChat Pay API v3 against the simulator: order → prepay → notification verified
and applied once → fulfilment through the BOSS → receipt; and every way a notification can lie."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask

from payments import jobs as payment_jobs
from payments.models import PaymentIntent, PaymentTransaction, Refund
from store import catalogue, fulfilment, jobs, orders
from store import services as store_services
from store.models import Fulfilment, Order, OrderStatus
from tests import factories, helpers
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ServiceError
from wechat_service.extensions import db


@pytest.fixture
def shop(app: Flask, simulator: str) -> dict[str, Any]:
    return factories.shop(
        simulator,
        kind="mini_program",
        product={
            "code": "t30",
            "price_fen": 2990,
            "face_value_fen": 3000,
            "stock": 5,
            "per_subscriber_limit": 3,
        },
        openid="oPAY0000000001",
        phone="13800139200",
    )


def _order(shop: dict[str, Any], key: str = "client-key-0001") -> tuple[Order, dict[str, Any]]:
    from payments import services as payments

    order = factories.order(shop["sub"], shop["product"], key)
    params = payments.prepay(order, "oPAY0000000001", "30 元话费")
    db.session.commit()
    return order, params


def _notification(simulator: str, order: Order, **extra: Any) -> tuple[dict[str, str], str]:
    note = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False, **extra},
        timeout=10,
    ).json()
    return note["headers"], note["body"]


def _notify(app: Flask, shop: dict[str, Any], headers: dict[str, str], body: str | bytes) -> Any:
    return app.test_client().post(
        f"/payments/wechatpay/v3/{shop['merchant'].id}/notify",
        headers=headers,
        data=body if isinstance(body, bytes) else body.encode(),
    )


def _balance(simulator: str) -> int:
    return requests.get(f"{simulator}/_sim/boss/lines/13800139200", timeout=5).json()["balance_fen"]


def test_prepay_gives_signed_jsapi_parameters(shop: dict[str, Any]) -> None:
    order, params = _order(shop)
    assert params["package"] == f"prepay_id={params['prepay_id']}" and params["signType"] == "RSA"
    message = "\n".join([params["appId"], params["timeStamp"], params["nonceStr"], params["package"]]) + "\n"
    shop["public_key"].verify(
        base64.b64decode(params["paySign"]), message.encode(), padding.PKCS1v15(), hashes.SHA256()
    )  # raises if the merchant did not sign it
    again = factories.order(shop["sub"], shop["product"], "client-key-0001")
    assert again.id == order.id  # the client's idempotency key


def test_paid_notification_fulfils_once(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    order, _ = _order(shop)
    before = _balance(simulator)
    headers, body = _notification(simulator, order)
    for _ in range(3):  # WeChat Pay resends until it sees 2xx; each copy has the same effect: none
        resp = _notify(app, shop, headers, body)
        assert resp.status_code == 204 and resp.data == b""
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    assert order.status is OrderStatus.fulfilling and order.paid_at is not None
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 1
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Fulfilment)) == 1
    status = jobs.fulfil(order.fulfilment_id)
    assert status == "succeeded", db.session.get(Fulfilment, order.fulfilment_id).error
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilled
    assert _balance(simulator) == before + 3000
    assert [e.to_status for e in orders.history(order.id)] == [
        "pending_payment",
        "paid",
        "fulfilling",
        "fulfilled",
    ]


@pytest.mark.parametrize("forgery", ["body", "signature", "serial", "stale", "no_type"])
def test_forged_notifications_change_nothing(
    forgery: str, app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order, _ = _order(shop)
    headers, body = _notification(simulator, order)
    if forgery == "body":
        signed_body = body
        body = body.replace('"summary":"支付成功"', '"summary":"x"').replace(
            '"summary": "支付成功"', '"summary": "x"'
        )
        assert body != signed_body  # the signed text really changed
    elif forgery == "signature":
        headers["Wechatpay-Signature"] = base64.b64encode(b"\x00" * 256).decode()
    elif forgery == "serial":
        headers["Wechatpay-Serial"] = "PUB_KEY_ID_SOMEONE_ELSE"
    elif forgery == "stale":
        headers["Wechatpay-Timestamp"] = str(int(headers["Wechatpay-Timestamp"]) - 3600)
    else:
        del headers["Wechatpay-Signature-Type"]
    resp = _notify(app, shop, headers, body)
    assert resp.status_code == 401 and resp.get_json()["code"] == "FAIL"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 0


def test_tampered_amount_is_refused_and_recorded(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    order, _ = _order(shop)
    headers, body = _notification(simulator, order, tamper={"amount": {"total": 1, "currency": "CNY"}})
    resp = _notify(app, shop, headers, body)
    assert resp.status_code == 400
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment
    assert db.session.scalar(sa.select(PaymentTransaction.anomaly)) == "amount_mismatch"


def test_notification_for_another_merchants_appid_is_refused(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order, _ = _order(shop)
    headers, body = _notification(simulator, order, tamper={"appid": "wx0000000000000000"})
    assert _notify(app, shop, headers, body).status_code == 400
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment


def test_failed_fulfilment_refunds_in_full(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    store_services.bind_phone(
        shop["account"].id, shop["sub"].id, "13800000000", method="sms"
    )  # BOSS: unknown
    db.session.commit()
    order, _ = _order(shop)
    headers, body = _notification(simulator, order)
    assert _notify(app, shop, headers, body).status_code == 204
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    assert jobs.fulfil(order.fulfilment_id) == "failed"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunded
    kinds = db.session.execute(sa.select(PaymentTransaction.kind, PaymentTransaction.amount_fen)).all()
    assert sorted((k.value, a) for k, a in kinds) == [("payment", 2990), ("refund", 2990)]
    assert [e.to_status for e in orders.history(order.id)][-3:] == [
        "fulfilment_failed",
        "refunding",
        "refunded",
    ]


def test_lost_notification_is_recovered_by_the_active_query(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order, _ = _order(shop)
    _notification(simulator, order)  # paid at WeChat Pay; the notification never arrives
    helpers.age_order(order, timedelta(minutes=5))
    db.session.commit()
    assert payment_jobs.sweep_payments()["paid"] == 1
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling


def test_unpaid_order_closes_and_gives_its_stock_back(app: Flask, shop: dict[str, Any]) -> None:
    order, _ = _order(shop)
    db.session.expire_all()
    assert catalogue.product_for(shop["account"].id, shop["product"].id).stock == 4
    helpers.age_order(order, timedelta(hours=1))
    db.session.commit()
    assert payment_jobs.sweep_payments()["closed"] == 1
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.closed
    assert catalogue.product_for(shop["account"].id, shop["product"].id).stock == 5


def test_limits_and_stock(app: Flask, shop: dict[str, Any]) -> None:
    for i in range(3):
        factories.order(shop["sub"], shop["product"], f"limit-key-{i:04d}")
    with pytest.raises(ServiceError) as exc:
        factories.order(shop["sub"], shop["product"], "limit-key-9999")
    assert exc.value.code == "limit_reached"


def test_mini_program_order_api(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    code = requests.post(
        f"{simulator}/_sim/accounts/{shop['fields']['appid']}/js-codes",
        json={"openid": "oPAY0000000001"},
        timeout=5,
    ).json()["code"]
    client = app.test_client()
    token = client.post(f"/api/mp/{shop['fields']['appid']}/session", json={"code": code}).get_json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    listed = client.get(f"/api/mp/{shop['fields']['appid']}/products", headers=auth).get_json()
    assert [p["code"] for p in listed] == ["t30"]
    resp = client.post(
        f"/api/mp/{shop['fields']['appid']}/orders",
        headers=auth,
        json={"product_id": shop["product"].id, "client_key": "mp-key-000001"},
    )
    body = resp.get_json()
    assert resp.status_code == 201 and body["payment"]["package"].startswith("prepay_id=")
    assert body["order"]["amount_fen"] == 2990 and body["order"]["status"] == "pending_payment"
    got = client.get(
        f"/api/mp/{shop['fields']['appid']}/orders/{body['order']['id']}", headers=auth
    ).get_json()
    assert got["out_trade_no"] == body["order"]["out_trade_no"]
    assert json.loads(json.dumps(got))["history"][0]["to"] == "pending_payment"


def test_staff_refund_a_fulfilled_order_by_hand(
    app: Flask, shop: dict[str, Any], simulator: str, create_staff: Any
) -> None:
    from accounts.models import AuditLog

    order, _ = _order(shop)
    headers, body = _notification(simulator, order)
    assert _notify(app, shop, headers, body).status_code == 204
    db.session.expire_all()
    jobs.fulfil(db.session.get(Order, order.id).fulfilment_id)
    support = create_staff("support", account_id=shop["account"].id)
    seen = support.api("GET", f"/api/v1/accounts/{shop['account'].id}/orders/{order.id}").get_json()
    assert seen["phone"] == "138****9200" and [h["to"] for h in seen["history"]][-1] == "fulfilled"
    url = f"/api/v1/accounts/{shop['account'].id}/orders/{order.id}/refund"
    assert support.api("POST", url, {"reason": "customer complaint"}).status_code == 403
    manager = create_staff("account_manager", account_id=shop["account"].id)
    assert manager.api("POST", url, {"reason": "x"}).status_code == 400  # a reason is required
    done = manager.api("POST", url, {"reason": "customer complaint"}).get_json()
    assert done["status"] == "refunded"
    assert manager.api("POST", url, {"reason": "again please"}).status_code == 409  # once
    entry = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "order.refund")).one()
    assert entry.after["amount_fen"] == 2990 and entry.after["reason"] == "customer complaint"
    page = manager.get(f"/console/accounts/{shop['account'].id}/orders/{order.id}").get_data(as_text=True)
    refund = db.session.scalars(sa.select(Refund).where(Refund.out_trade_no == order.out_trade_no)).one()
    txns = db.session.scalars(
        sa.select(PaymentTransaction)
        .join(PaymentIntent, PaymentIntent.id == PaymentTransaction.intent_id)
        .where(PaymentIntent.out_trade_no == order.out_trade_no)
    ).all()
    assert sorted(t.kind.value for t in txns) == ["payment", "refund"]
    # The page lists this refund and both provider transactions, by their numbers.
    assert f"<code>{refund.out_refund_no}</code>" in page
    assert all(f"<code>{t.provider_txn_id}</code>" in page for t in txns)


def test_a_second_prepay_of_the_same_order_is_the_same_request(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    """The pay page reloaded after its cached parameters expired: WeChat Pay refuses the same order
    number with other parameters, so the expiry comes from the order, not from the clock."""
    import time

    from payments import services as payments

    order, first = _order(shop)
    time.sleep(1.1)  # a later second: a clock-based expiry would differ now
    again = payments.prepay(order, "oPAY0000000001", "30 元话费")
    assert again["prepay_id"] == first["prepay_id"]


def test_a_broken_platform_key_answers_fail_not_500(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    """A configuration problem is logged and answered with WeChat Pay's failure reply, so it sends
    the notification again once the operator fixed the key; the order stays unpaid meanwhile."""
    order, _ = _order(shop)
    headers, body = _notification(simulator, order)
    broken = "-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----"
    shop["merchant"].config = {**shop["merchant"].config, "platform_public_key": broken}
    db.session.commit()
    resp = _notify(app, shop, headers, body)
    assert resp.status_code == 503 and resp.get_json() == {
        "code": "FAIL",
        "message": "merchant configuration problem",
    }
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 0


def test_closing_an_order_wechat_pay_reports_paid_marks_it_paid(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    """Paid between our last query and the close: WeChat Pay answers ORDERPAID to the close. The
    order must not close; it is queried and marked paid (its notification may come later)."""
    from payments import services as payments

    order, _ = _order(shop)
    _notification(simulator, order)  # paid at WeChat Pay; the notification is not here yet
    assert payments.close_at_provider(order) == "paid"
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 1
    headers, body = _notification(simulator, order)  # the late notification: no second effect
    assert _notify(app, shop, headers, body).status_code == 204
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 1


def test_sweep_counts_an_order_paid_through_the_orderpaid_close(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    """The sweep's query finds the order unpaid; the subscriber pays before the close, which WeChat
    Pay answers ORDERPAID. The order is marked paid there, and the sweep's summary says so."""
    order, _ = _order(shop)
    at_close = {"out_trade_no": order.out_trade_no, "at": "close"}
    requests.post(f"{simulator}/_sim/wechatpay/pay", json=at_close, timeout=10).raise_for_status()
    helpers.age_order(order, timedelta(hours=1))
    db.session.commit()
    assert payment_jobs.sweep_payments() == {"paid": 1, "closed": 0}
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 1
    assert payment_jobs.sweep_payments() == {"paid": 0, "closed": 0}  # nothing pending is left to count


def test_notifications_for_the_wrong_kind_of_merchant_or_a_huge_id_are_404(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    alipay = factories.merchant(simulator, shop["account"].id, "alipay")
    db.session.commit()
    client = app.test_client()
    resp = client.post(
        f"/payments/wechatpay/v3/{alipay['alipay_merchant'].id}/notify",
        data=b"{}",
        headers={"Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"},
    )
    assert resp.status_code == 404
    assert client.post("/payments/wechatpay/v3/99999999999999999999/notify", data=b"{}").status_code == 404
    assert client.post("/payments/alipay/99999999999999999999/notify", data={"a": "b"}).status_code == 404


def test_an_order_whose_prepay_never_happened_still_closes(app: Flask, shop: dict[str, Any]) -> None:
    order = factories.order(shop["sub"], shop["product"], "never-prepaid-1")
    helpers.age_order(order, timedelta(hours=1))
    db.session.commit()
    assert payment_jobs.sweep_payments()["closed"] == 1
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.closed


def test_a_fulfilment_finished_but_never_settled_is_settled_by_the_sweep(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    from payments import services as payments

    order = factories.order(shop["sub"], shop["product"], "settle-key-01")
    payments.prepay(order, shop["sub"].openid, "x")
    db.session.commit()
    note = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False},
        timeout=10,
    ).json()
    app.test_client().post(
        f"/payments/wechatpay/v3/{shop['merchant'].id}/notify",
        headers=note["headers"],
        data=note["body"].encode(),
    )
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    fulfilment.run(order.fulfilment_id)  # carried out; the worker dies before settling the order
    db.session.execute(
        sa.update(Fulfilment)
        .where(Fulfilment.id == order.fulfilment_id)
        .values(finished_at=utcnow() - timedelta(minutes=10))
    )
    db.session.commit()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling
    jobs.sweep_fulfilments()
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilled
