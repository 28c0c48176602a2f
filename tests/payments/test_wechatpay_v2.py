"""WeChat Pay API v2 against the simulator: XML signed with MD5 or HMAC-SHA256 (both verified),
JSAPI prepay, notifications applied once, refunds finished by the encrypted refund notification."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from payments import intents, refunds
from payments import jobs as payment_jobs
from payments.models import PaymentTransaction, Refund, RefundStatus
from payments.providers.wechatpay_v2 import decrypt_req_info, sign, signature_valid
from store import jobs, orders
from store import services as store_services
from store.models import Order, OrderStatus
from tests import factories, helpers
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db

OPENID = "oV2PAY00000001"


def test_signature_matches_the_official_example() -> None:
    # PROTOCOLS.md: WeChat Pay's own worked example of the v2 MD5 signature.
    params = {
        "appid": "wxd930ea5d5a258f4f",
        "mch_id": "10000100",
        "device_info": "1000",
        "body": "test",
        "nonce_str": "ibuaiVcKdpRxkhJA",
    }
    key = "192006250b4c09247ec02edce69f6a2d"
    # The string WeChat Pay's example signs: sorted k=v pairs, then &key=.
    text = (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
        f"&nonce_str=ibuaiVcKdpRxkhJA&key={key}"
    )
    assert hashlib.md5(text.encode()).hexdigest().upper() == "9A0A8659F005D6984697E2CA0A9CF3B7"  # noqa: S324
    assert sign(params, key) == "9A0A8659F005D6984697E2CA0A9CF3B7"  # the published value
    hmac_sig = sign(params, key, "HMAC-SHA256")
    assert hmac_sig == hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    for signature in ("9A0A8659F005D6984697E2CA0A9CF3B7", hmac_sig):
        assert signature_valid({**params, "sign": signature}, "192006250b4c09247ec02edce69f6a2d")
        assert not signature_valid(
            {**params, "body": "tset", "sign": signature}, "192006250b4c09247ec02edce69f6a2d"
        )
    assert not signature_valid(params, "192006250b4c09247ec02edce69f6a2d")  # unsigned


def _shop(simulator: str, sign_type: str, refund_status: str = "SUCCESS") -> dict[str, Any]:
    return factories.shop(
        simulator,
        pay=["wechatpay_v2"],
        sign_type=sign_type,
        refund_status=refund_status,
        product={"code": "v2t", "price_fen": 1990, "face_value_fen": 2000},
        openid=OPENID,
        phone="13800139201",
    )


@pytest.fixture(params=["MD5", "HMAC-SHA256"])
def shop(request: pytest.FixtureRequest, app: Flask, simulator: str) -> dict[str, Any]:
    return _shop(simulator, request.param)


def _order(shop: dict[str, Any], key: str = "v2-key-000001") -> tuple[Order, dict[str, Any]]:
    from payments import services as payments

    order = factories.order(shop["sub"], shop["product"], key, "wechatpay_v2")
    params = payments.prepay(order, OPENID, "20 元话费", client_ip="10.0.0.8")
    db.session.commit()
    return order, params


def _paid(simulator: str, order: Order, **extra: Any) -> str:
    return requests.post(
        f"{simulator}/_sim/wechatpay/v2/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False, **extra},
        timeout=10,
    ).json()["body"]


def _notify(app: Flask, shop: dict[str, Any], body: str | bytes, path: str = "notify") -> Any:
    return app.test_client().post(
        f"/payments/wechatpay/v2/{shop['merchant'].id}/{path}",
        data=body if isinstance(body, bytes) else body.encode(),
        content_type="text/xml",
    )


def test_prepay_gives_jsapi_parameters_signed_with_the_merchants_sign_type(shop: dict[str, Any]) -> None:
    order, params = _order(shop)
    assert (
        params["package"] == f"prepay_id={params['prepay_id']}" and params["appId"] == shop["fields"]["appid"]
    )
    assert params["signType"] == shop["merchant"].config["sign_type"]
    fields = {k: params[k] for k in ("appId", "timeStamp", "nonceStr", "package", "signType")}
    assert params["paySign"] == sign(fields, shop["api_key"], shop["merchant"].config["sign_type"])
    assert intents.of(order).prepay_id == params["prepay_id"]


def test_notification_is_verified_applied_once_and_fulfilled(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order, _ = _order(shop)
    body = _paid(simulator, order)
    for _ in range(3):  # WeChat Pay resends; every copy is acknowledged, one has an effect
        resp = _notify(app, shop, body)
        assert resp.status_code == 200 and "<return_code><![CDATA[SUCCESS]]>" in resp.get_data(as_text=True)
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    assert order.status is OrderStatus.fulfilling
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 1
    assert jobs.fulfil(order.fulfilment_id) == "succeeded"


def test_payment_time_is_beijing_wall_time_and_counts_on_it(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    """v2's time_end is Beijing time without a zone (the simulator once wrote UTC wall time, which
    put every payment made between 00:00 and 08:00 Beijing time on the previous day)."""
    order, _ = _order(shop)
    body = _paid(simulator, order)
    time_end = re.search(r"<time_end><!\[CDATA\[(\d{14})\]\]></time_end>|<time_end>(\d{14})</time_end>", body)
    assert time_end, body
    wall = datetime.strptime(time_end.group(1) or time_end.group(2), "%Y%m%d%H%M%S")
    beijing_now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
    assert abs(wall - beijing_now) < timedelta(minutes=5)
    assert _notify(app, shop, body).status_code == 200
    moved = db.session.scalar(sa.select(PaymentTransaction.moved_at))
    assert abs(moved - utcnow()) < timedelta(minutes=5)  # the same instant, stored in UTC


def test_hmac_notification_for_an_md5_merchant_is_accepted(app: Flask, simulator: str) -> None:
    """WeChat Pay signs with what the order asked for; wechatpy checks MD5 only — we check both."""
    shop = _shop(simulator, "MD5")
    order, _ = _order(shop)
    body = _paid(simulator, order, sign_type="HMAC-SHA256")
    assert "<sign_type><![CDATA[HMAC-SHA256]]>" in body
    assert _notify(app, shop, body).status_code == 200
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling


def test_forged_tampered_and_malformed_notifications_change_nothing(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order, _ = _order(shop)
    body = _paid(simulator, order)
    forged = body.replace("<total_fee><![CDATA[1990]]>", "<total_fee><![CDATA[1]]>")
    assert forged != body and _notify(app, shop, forged).status_code == 401
    # Signed correctly but for another amount (a merchant-side bug or a replay of another order).
    wrong_amount = _paid(simulator, order, tamper={"total_fee": 1})
    assert _notify(app, shop, wrong_amount).status_code == 400
    assert _notify(app, shop, b"<!DOCTYPE xml [<!ENTITY x 'y'>]><xml>&x;</xml>").status_code == 401
    assert _notify(app, shop, b"not xml").status_code == 401
    non_ascii = body.replace("<sign><![CDATA[", "<sign><![CDATA[签名")  # 401, not a 500
    assert non_ascii != body and _notify(app, shop, non_ascii).status_code == 401
    assert app.test_client().post("/payments/wechatpay/v2/999999/notify", data=body).status_code == 404
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment
    anomalies = db.session.scalars(sa.select(PaymentTransaction.anomaly)).all()
    assert anomalies == ["amount_mismatch"]


def test_lost_notification_is_found_by_the_order_query(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order, _ = _order(shop)
    _paid(simulator, order)  # paid; the notification never arrives
    helpers.age_order(order, timedelta(minutes=5))
    db.session.commit()
    assert payment_jobs.sweep_payments()["paid"] == 1
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling


def test_unpaid_order_is_closed_at_wechat_pay_first(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    order, _ = _order(shop)
    helpers.age_order(order, timedelta(hours=1))
    db.session.commit()
    assert payment_jobs.sweep_payments()["closed"] == 1
    resp = requests.post(
        f"{simulator}/_sim/wechatpay/v2/pay", json={"out_trade_no": order.out_trade_no}, timeout=5
    )
    assert resp.status_code == 409  # closed at WeChat Pay: it can no longer be paid


def test_failed_fulfilment_refund_finishes_by_the_refund_notification(app: Flask, simulator: str) -> None:
    shop = _shop(simulator, "MD5", refund_status="PROCESSING")
    store_services.bind_phone(
        shop["account"].id, shop["sub"].id, "13800000000", method="sms"
    )  # BOSS: unknown
    db.session.commit()
    order, _ = _order(shop)
    assert _notify(app, shop, _paid(simulator, order)).status_code == 200
    db.session.expire_all()
    assert jobs.fulfil(db.session.get(Order, order.id).fulfilment_id) == "failed"
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    refund = db.session.scalars(sa.select(Refund)).one()
    assert order.status is OrderStatus.refunding and order.refunded_fen == 1990
    assert refund.status is RefundStatus.processing and refund.amount_fen == 1990
    note = requests.post(
        f"{simulator}/_sim/wechatpay/v2/refunds/{refund.out_refund_no}/finish",
        json={"status": "SUCCESS", "deliver": False},
        timeout=5,
    ).json()["body"]
    # The refund notification is not signed: only our API key opens req_info.
    wrong_key = note.replace("<req_info><![CDATA[", "<req_info><![CDATA[AAAA")
    assert _notify(app, shop, wrong_key, "refund-notify").status_code == 401
    for _ in range(2):
        assert _notify(app, shop, note, "refund-notify").status_code == 200
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunded
    assert db.session.get(Refund, refund.id).status is RefundStatus.success
    kinds = sorted(k.value for k in db.session.scalars(sa.select(PaymentTransaction.kind)))
    assert kinds == ["payment", "refund"]


def test_refund_sweep_finishes_a_refund_whose_notification_was_lost(app: Flask, simulator: str) -> None:
    shop = _shop(simulator, "HMAC-SHA256")  # the simulator finishes refunds at once
    order, _ = _order(shop)
    assert _notify(app, shop, _paid(simulator, order)).status_code == 200
    db.session.expire_all()
    jobs.fulfil(db.session.get(Order, order.id).fulfilment_id)
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    refund = refunds.partial(order, 500, "goodwill", staff_user_id=None)  # type: ignore[arg-type]
    assert refund.status is RefundStatus.processing  # v2 only says "accepted"
    db.session.execute(sa.update(Refund).values(created_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    assert refunds.sweep() == {"success": 1}
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    assert order.status is OrderStatus.fulfilled and order.refunded_fen == 500
    assert [e.detail for e in orders.history(order.id)][-1] == {"partial_refund_fen": 500}


def test_req_info_decrypts_with_md5_of_the_api_key() -> None:
    import base64

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.padding import PKCS7

    api_key = "192006250b4c09247ec02edce69f6a2d"
    key = hashlib.md5(api_key.encode()).hexdigest().encode()  # noqa: S324
    padder = PKCS7(128).padder()
    plain = b"<root><out_refund_no><![CDATA[R1]]></out_refund_no><refund_fee>5</refund_fee></root>"
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    blob = base64.b64encode(enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()).decode()
    assert decrypt_req_info(blob, api_key) == {"out_refund_no": "R1", "refund_fee": "5"}


def test_a_second_v2_prepay_of_the_same_order_is_the_same_request(shop: dict[str, Any]) -> None:
    import time

    from payments import services as payments

    order, first = _order(shop)
    time.sleep(1.1)
    again = payments.prepay(order, OPENID, "20 元话费", client_ip="10.0.0.8")
    assert again["prepay_id"] == first["prepay_id"]


def test_a_broken_configuration_answers_fail_not_500(app: Flask, simulator: str) -> None:
    shop = _shop(simulator, "MD5")
    order, _ = _order(shop)
    body = _paid(simulator, order)
    shop["merchant"].config = {**shop["merchant"].config, "sign_type": "SHA1"}  # no form can write it
    db.session.commit()
    resp = _notify(app, shop, body)
    assert resp.status_code == 503
    assert "<return_code><![CDATA[FAIL]]></return_code>" in resp.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment


def test_closing_an_order_wechat_pay_reports_paid_marks_it_paid(app: Flask, simulator: str) -> None:
    from payments import services as payments

    shop = _shop(simulator, "HMAC-SHA256")
    order, _ = _order(shop)
    _paid(simulator, order)  # paid at WeChat Pay; the notification is not here yet
    assert payments.close_at_provider(order) == "paid"  # closeorder answered ORDERPAID
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling
