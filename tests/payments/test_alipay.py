"""Alipay wap pay against the simulator: RSA2 only, exact yuan amounts, the merchant's app and
seller, TRADE_FINISHED after TRADE_SUCCESS without a second effect, reply exactly `success`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from payments import jobs as payment_jobs
from payments import merchants
from payments.models import PaymentTransaction
from payments.providers.alipay import yuan_to_fen
from payments.providers.base import NotificationError
from store import jobs
from store import services as store_services
from store.models import Order, OrderStatus
from tests import factories, helpers
from wechat_service.extensions import db


@pytest.fixture
def shop(app: Flask, simulator: str) -> dict[str, Any]:
    return factories.shop(
        simulator,
        pay=["alipay"],
        product={"code": "t20", "price_fen": 1999, "face_value_fen": 2000},
        openid="oALI0000000001",
        phone="13800139400",
    )


def _order(shop: dict[str, Any]) -> tuple[Order, str]:
    from payments import services as payments

    order = factories.order(shop["sub"], shop["product"], "alipay-key-0001", "alipay")
    url = payments.prepay(order, "oALI0000000001", "20 元话费")["url"]
    db.session.commit()
    return order, url


def _form(simulator: str, order: Order, **extra: Any) -> dict[str, str]:
    return requests.post(
        f"{simulator}/_sim/alipay/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False, **extra},
        timeout=10,
    ).json()["form"]


def _notify(app: Flask, shop: dict[str, Any], form: dict[str, str]) -> str:
    return (
        app.test_client()
        .post(f"/payments/alipay/{shop['alipay_merchant'].id}/notify", data=form)
        .get_data(as_text=True)
    )


@pytest.mark.parametrize(("given", "fen"), [("19.99", 1999), ("0.01", 1), ("100", 10000), ("100.10", 10010)])
def test_yuan_strings_become_exact_fen(given: str, fen: int) -> None:
    assert yuan_to_fen(given) == fen


@pytest.mark.parametrize("bad", ["19.999", "-1", "0", "abc", ""])
def test_inexact_amounts_are_refused(bad: str) -> None:
    with pytest.raises(NotificationError):
        yuan_to_fen(bad)


def test_wap_pay_url_is_signed_and_opens_the_cashier(shop: dict[str, Any], simulator: str) -> None:
    order, url = _order(shop)
    query = parse_qs(urlsplit(url).query)
    assert query["method"] == ["alipay.trade.wap.pay"] and query["sign_type"] == ["RSA2"]
    assert '"total_amount":"19.99"' in query["biz_content"][0].replace(" ", "")
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "¥19.99" in page.text  # the simulator accepted our signature


def test_paid_then_finished_applies_once(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    order, url = _order(shop)
    requests.get(url, timeout=10)
    assert _notify(app, shop, _form(simulator, order)) == "success"
    assert _notify(app, shop, _form(simulator, order, trade_status="TRADE_FINISHED")) == "success"
    db.session.expire_all()
    order = db.session.get(Order, order.id)
    assert order.status is OrderStatus.fulfilling
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 1
    assert jobs.fulfil(order.fulfilment_id) == "succeeded"


@pytest.mark.parametrize("forgery", ["sha1", "amount", "seller", "app", "signature"])
def test_forged_alipay_notifications_change_nothing(
    forgery: str, app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order, url = _order(shop)
    requests.get(url, timeout=10)
    if forgery == "sha1":
        form = _form(simulator, order, sign_type="RSA")  # Alipay's legacy SHA-1 signature: refused
    elif forgery == "amount":
        form = _form(simulator, order, tamper={"total_amount": "0.01"})  # changed after signing
    elif forgery == "seller":
        form = _form(simulator, order, tamper={"seller_id": "2088000000000000"})
    elif forgery == "app":
        form = _form(simulator, order, tamper={"app_id": "2021000000000000"})
    else:
        form = {**_form(simulator, order), "sign": _form(simulator, order)["sign"][::-1]}
    assert _notify(app, shop, form) == "failure"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 0


def test_lost_alipay_notification_recovered_by_query(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    from datetime import timedelta

    order, url = _order(shop)
    requests.get(url, timeout=10)
    _form(simulator, order)  # paid at Alipay; the notification never arrives
    helpers.age_order(order, timedelta(minutes=5))
    db.session.commit()
    assert payment_jobs.sweep_payments()["paid"] == 1
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling


def test_alipay_refund_on_failed_fulfilment(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    store_services.bind_phone(shop["account"].id, shop["sub"].id, "13800000000", method="sms")
    db.session.commit()
    order, url = _order(shop)
    requests.get(url, timeout=10)
    assert _notify(app, shop, _form(simulator, order)) == "success"
    db.session.expire_all()
    assert jobs.fulfil(db.session.get(Order, order.id).fulfilment_id) == "failed"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunded


def test_alipay_refund_whose_first_answer_was_lost_is_confirmed_by_the_refund_query(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    """Alipay says fund_change=Y only to the call that moved the money; asked again it says N,
    and only the refund query (REFUND_SUCCESS) may then mark the refund done."""
    from payments import refunds
    from payments.models import Refund, RefundStatus

    order, url = _order(shop)
    requests.get(url, timeout=10)
    assert _notify(app, shop, _form(simulator, order)) == "success"
    db.session.expire_all()
    assert jobs.fulfil(db.session.get(Order, order.id).fulfilment_id) == "succeeded"
    order = db.session.get(Order, order.id)
    client = merchants.client_for(shop["alipay_merchant"])
    number = f"RP{order.out_trade_no[2:]}01"
    # Our first call reached Alipay and moved the money; its answer never came back to us.
    assert (
        client.refund(out_trade_no=order.out_trade_no, out_request_no=number, refund_fen=500, reason="x")[
            "fund_change"
        ]
        == "Y"
    )
    assert client.refund_status(order.out_trade_no, "RPNEVERASKED01")["status"] == "PROCESSING"
    refund = refunds.partial(order, 500, "x", staff_user_id=None)  # type: ignore[arg-type]
    assert refund.out_refund_no == number
    db.session.expire_all()
    assert db.session.get(Refund, refund.id).status is RefundStatus.success


def _bare(pem: str) -> str:
    """A key as Alipay's console shows it: the base64 body alone, on one line."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def test_bare_base64_keys_are_accepted_on_save(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    merchant = shop["alipay_merchant"]
    public_pem, private_pem = merchant.config["alipay_public_key"], merchant.config["app_private_key"]
    saved = merchants.add_alipay_merchant(
        shop["account"].id,
        app_id=shop["alipay_app_id"],
        seller_id=shop["seller_id"],
        app_private_key=_bare(private_pem),
        alipay_public_key=_bare(public_pem),
    )
    db.session.commit()
    assert saved.config["alipay_public_key"].startswith("-----BEGIN PUBLIC KEY-----")  # stored as PEM
    assert _bare(saved.config["alipay_public_key"]) == _bare(public_pem)
    order, url = _order(shop)
    assert requests.get(url, timeout=10).status_code == 200  # our request still signs
    assert _notify(app, shop, _form(simulator, order)) == "success"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling


def test_an_existing_row_with_a_bare_key_is_normalised_on_use(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    merchant = shop["alipay_merchant"]
    merchant.config = {**merchant.config, "alipay_public_key": _bare(merchant.config["alipay_public_key"])}
    db.session.commit()
    order, url = _order(shop)
    requests.get(url, timeout=10)
    assert _notify(app, shop, _form(simulator, order)) == "success"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling


def test_a_key_that_is_not_one_is_refused_on_save(shop: dict[str, Any]) -> None:
    from wechat_service.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as exc:
        merchants.add_alipay_merchant(
            shop["account"].id,
            app_id=shop["alipay_app_id"],
            seller_id=shop["seller_id"],
            app_private_key=shop["alipay_merchant"].config["app_private_key"],
            alipay_public_key="MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA-not-a-key",
        )
    assert set(exc.value.fields) == {"alipay_public_key"}


def test_a_broken_key_answers_failure_not_500(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    order, url = _order(shop)
    requests.get(url, timeout=10)
    form = _form(simulator, order)
    merchant = shop["alipay_merchant"]
    merchant.config = {
        **merchant.config,
        "alipay_public_key": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtruncated",
    }
    db.session.commit()
    resp = app.test_client().post(f"/payments/alipay/{shop['alipay_merchant'].id}/notify", data=form)
    assert (resp.status_code, resp.get_data(as_text=True)) == (200, "failure")  # Alipay sends it again
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 0
