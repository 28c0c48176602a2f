"""Money defects found in review, each with the test that would have caught it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts.subscribers import touch
from store import catalogue, fulfilment, jobs, orders, redemption
from store import services as store_services
from store.boss import BossUnavailableError, boss
from store.models import CodeStatus, Fulfilment, Order, OrderStatus, RedeemCode
from tests import helpers
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db


@pytest.fixture
def shop(app: Flask, create_account: Any, simulator: str) -> dict[str, Any]:
    account, fields, _ = create_account("plain", kind="mini_program")
    merchant = helpers.register_merchant(simulator, account.id)
    product = catalogue.add_product(
        account_id=account.id, code="t10", name="10 元话费", kind="topup", price_fen=1000, face_value_fen=1000
    )
    sub = touch(account.id, "oHARD000000001", None)
    store_services.bind_phone(account.id, sub.id, "13800139700", method="sms")
    db.session.commit()
    return {"account": account, "fields": fields, "product": product, "sub": sub, **merchant}


def test_a_code_given_back_can_be_redeemed_again(shop: dict[str, Any]) -> None:
    _, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=1)
    store_services.bind_phone(shop["account"].id, shop["sub"].id, "13800000000", method="sms")  # refused
    first = redemption.redeem(shop["account"].id, shop["sub"].id, codes[0], "mp")
    db.session.commit()
    assert jobs.fulfil(first["fulfilment_id"]) == "failed"
    store_services.bind_phone(shop["account"].id, shop["sub"].id, "13800139701", method="sms")
    second = redemption.redeem(shop["account"].id, shop["sub"].id, codes[0], "mp")
    db.session.commit()
    assert jobs.fulfil(second["fulfilment_id"]) == "succeeded"
    keys = db.session.scalars(sa.select(Fulfilment.idempotency_key).order_by(Fulfilment.id)).all()
    assert len(set(keys)) == 2
    db.session.expire_all()
    assert db.session.scalar(sa.select(RedeemCode.status)) is CodeStatus.redeemed


def test_rate_limits_from_the_boss_are_retryable(app: Flask) -> None:
    boss().send_sms("13800139702")
    with pytest.raises(BossUnavailableError) as exc:
        boss().send_sms("13800139702")  # one a minute
    assert exc.value.code == "RATE_LIMITED" and exc.value.retryable


def test_notifications_for_the_wrong_kind_of_merchant_or_a_huge_id_are_404(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    alipay = helpers.register_alipay(simulator, shop["account"].id)
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
    order = orders.create_order(
        shop["account"].id, shop["sub"].id, shop["product"].id, "never-prepaid-1", "wechatpay_v3"
    )
    db.session.execute(
        sa.update(Order).where(Order.id == order.id).values(created_at=utcnow() - timedelta(hours=1))
    )
    db.session.commit()
    assert jobs.sweep_orders()["closed"] == 1
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.closed


def test_a_fulfilment_finished_but_never_settled_is_settled_by_the_sweep(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    from payments import services as payments

    order = orders.create_order(
        shop["account"].id, shop["sub"].id, shop["product"].id, "settle-key-01", "wechatpay_v3"
    )
    payments.prepay(order, "oHARD000000001", "x")
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


def test_idempotency_keys_belong_to_their_client(app: Flask, simulator: str) -> None:
    """Two deployments sharing one BOSS number their keys alike (redeem-1-1…): the contract scopes a
    key to the calling client, so the second one's top-up is carried out, not replayed."""
    import secrets

    from store.boss import HttpBoss

    other_id, other_secret = f"staging-{secrets.token_hex(4)}", secrets.token_hex(16)
    requests.post(
        f"{simulator}/_sim/boss/clients", json={"app_id": other_id, "secret": other_secret}, timeout=5
    ).raise_for_status()
    ours = HttpBoss(f"{simulator}/boss", "wechat-service-test", helpers.BOSS_SECRET)
    theirs = HttpBoss(f"{simulator}/boss", other_id, other_secret)
    phone, key = "13800139207", f"redeem-{secrets.token_hex(4)}-1"
    before = requests.get(f"{simulator}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    assert not ours.topup(phone, 500, key).get("replayed")
    assert not theirs.topup(phone, 500, key).get("replayed")  # another client: carried out
    assert ours.topup(phone, 500, key).get("replayed")  # the same client again: replayed
    assert theirs.query_request(key)["status"] == "succeeded"
    after = requests.get(f"{simulator}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    assert after == before + 1000
