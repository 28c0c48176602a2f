"""Catalogue, redeem codes and fulfilment through the BOSS simulator: single use, throttled
guessing, exactly-once top-ups even when the BOSS's answer is lost, and codes given back when
the BOSS refuses."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts import services as account_services
from store import catalogue, fulfilment, jobs, redemption
from store import services as store_services
from store.models import CodeStatus, Fulfilment, FulfilmentStatus, RedeemCode
from tests import factories
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError, ServiceError
from wechat_service.extensions import db


@pytest.fixture
def shop(app: Flask, create_account: Any, simulator: str) -> dict[str, Any]:
    account, fields, target = create_account("plain")
    store_services.enable_store(account.id)
    product = factories.topup(account.id, "topup-10", 980, 1000)
    sub = factories.subscriber(account.id, "oSHOP00000000")
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/followers",
        json={"count": 1, "prefix": "oSHOP"},
        timeout=5,
    )
    db.session.commit()
    return {"account": account, "fields": fields, "target": target, "product": product, "sub": sub}


def _balance(simulator: str, phone: str) -> int:
    return requests.get(f"{simulator}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]


def test_batches_keep_only_keyed_hashes(shop: dict[str, Any]) -> None:
    batch, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="spring", count=200)
    assert len(set(codes)) == 200 and all(len(c) == 19 and c.count("-") == 3 for c in codes)
    stored = db.session.scalars(sa.select(RedeemCode.code_hash).where(RedeemCode.batch_id == batch.id)).all()
    assert len(stored) == 200 and redemption.code_hash(codes[0]) in stored
    raw = " ".join(db.session.execute(sa.text("SELECT code_hash FROM redeem_codes")).scalars())
    assert not any(c.replace("-", "") in raw or c in raw for c in codes)
    csv_text = redemption.export_csv(batch, codes)
    assert csv_text.splitlines()[0] == "code,batch,valid_from,valid_until" and codes[5] in csv_text


def test_redeem_in_chat_tops_up_once_and_sends_a_receipt(
    shop: dict[str, Any], app: Flask, simulator: str
) -> None:
    from tests.store.test_inquiry import _text

    phone = "13800139001"
    store_services.bind_phone(shop["account"].id, shop["sub"].id, phone, method="sms")
    _, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=3)
    db.session.commit()
    before = _balance(simulator, phone)
    reply = _text(app, shop["target"], f"兑换 {codes[0].lower()}", "oSHOP00000000", 8_000_001)
    assert reply["Content"].startswith("兑换码有效：10 元话费")
    job = db.session.scalar(sa.select(Fulfilment))
    assert job.idempotency_key.startswith("redeem-") and job.status is FulfilmentStatus.pending
    assert jobs.fulfil(job.id) == "succeeded"
    assert jobs.fulfil(job.id) == "succeeded"  # a second run (a retried job) does nothing more
    assert _balance(simulator, phone) == before + 1000
    sent = requests.get(f"{simulator}/_sim/accounts/{shop['fields']['appid']}", timeout=5).json()[
        "custom_messages"
    ]
    assert "兑换成功：10 元话费已充入 138****9001" in sent[-1]["text"]["content"]
    again = _text(app, shop["target"], f"兑换 {codes[0]}", "oSHOP00000000", 8_000_002)
    assert again["Content"] == "兑换码无效、已使用或已过期"


def test_no_phone_no_redemption_and_the_code_stays_unused(shop: dict[str, Any]) -> None:
    _, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=1)
    with pytest.raises(ServiceError) as exc:
        redemption.redeem(shop["account"].id, shop["sub"].id, codes[0], "mp")
    assert exc.value.code == "phone_required"
    assert db.session.scalar(sa.select(RedeemCode.status)) is CodeStatus.unused


def test_lost_answer_is_resolved_by_query_without_a_second_topup(
    shop: dict[str, Any], app: Flask, simulator: str
) -> None:
    phone = "13800139002"
    store_services.bind_phone(shop["account"].id, shop["sub"].id, phone, method="sms")
    _, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=1)
    done = redemption.redeem(shop["account"].id, shop["sub"].id, codes[0], "mp")
    db.session.commit()
    before = _balance(simulator, phone)
    requests.post(
        f"{simulator}/_sim/boss/faults",
        json={"kind": "timeout_after_accept", "operation": "topup", "ms": 1500},
        timeout=5,
    )
    app.extensions.pop("boss", None)
    app.config["BOSS_WRITE_TIMEOUT"] = 0.4
    try:
        with pytest.raises(fulfilment.RetryLaterError):
            jobs.fulfil(done["fulfilment_id"])
    finally:
        app.config["BOSS_WRITE_TIMEOUT"] = 10.0
        app.extensions.pop("boss", None)
    db.session.expire_all()
    assert db.session.get(Fulfilment, done["fulfilment_id"]).status is FulfilmentStatus.unknown
    assert jobs.fulfil(done["fulfilment_id"]) == "succeeded"  # asked, not resent
    assert _balance(simulator, phone) == before + 1000


def test_boss_refusal_fails_and_gives_the_code_back(shop: dict[str, Any]) -> None:
    store_services.bind_phone(
        shop["account"].id, shop["sub"].id, "13800000000", method="sms"
    )  # not the operator's
    _, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=1)
    done = redemption.redeem(shop["account"].id, shop["sub"].id, codes[0], "mp")
    db.session.commit()
    assert jobs.fulfil(done["fulfilment_id"]) == "failed"
    assert db.session.get(Fulfilment, done["fulfilment_id"]).error.startswith("UNKNOWN_NUMBER")
    db.session.expire_all()
    assert db.session.scalar(sa.select(RedeemCode.status)) is CodeStatus.unused


def test_guessing_is_throttled(shop: dict[str, Any]) -> None:
    store_services.bind_phone(shop["account"].id, shop["sub"].id, "13800139003", method="sms")
    _, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=1)
    for i in range(redemption.FAILURES_PER_HOUR):
        with pytest.raises(InvalidInputError):
            redemption.redeem(shop["account"].id, shop["sub"].id, f"AAAA-BBBB-CCCC-{i:04d}", "chat")
    with pytest.raises(store_services.ThrottledError):
        redemption.redeem(shop["account"].id, shop["sub"].id, codes[0], "chat")


def test_expired_and_foreign_codes_are_invalid(shop: dict[str, Any], create_account: Any) -> None:
    store_services.bind_phone(shop["account"].id, shop["sub"].id, "13800139004", method="sms")
    _, old = redemption.create_batch(
        shop["account"].id,
        shop["product"].id,
        name="old",
        count=1,
        valid_days=1,
        valid_from=utcnow() - timedelta(days=2),
    )
    other, _, _ = create_account("plain")
    other_product = catalogue.add_product(
        account_id=other.id, code="p", name="p", kind="voucher", price_fen=1
    )
    _, foreign = redemption.create_batch(other.id, other_product.id, name="x", count=1)
    for code in (old[0], foreign[0]):
        with pytest.raises(InvalidInputError):
            redemption.redeem(shop["account"].id, shop["sub"].id, code, "chat")


def test_org_unit_products_are_shared_below(app: Flask, create_account: Any) -> None:
    account_services.add_org_unit("shop-g", "Group", "group")
    account_services.add_org_unit("shop-p", "Province", "province", "shop-g")
    db.session.commit()
    account, _, _ = create_account("plain", org_unit_code="shop-p")
    group_unit = account_services.org_unit_by_code("shop-g")
    shared = catalogue.add_product(
        org_unit_id=group_unit.id,
        code="g-topup",
        name="group top-up",
        kind="topup",
        price_fen=5000,
        face_value_fen=5000,
    )
    own = catalogue.add_product(account_id=account.id, code="own", name="own", kind="voucher", price_fen=100)
    ids = [p.id for p in db.session.scalars(catalogue.visible_products(account.id))]
    assert ids == [own.id, shared.id]
    with pytest.raises(InvalidInputError):
        catalogue.add_product(account_id=account.id, code="bad", name="x", kind="topup", price_fen=0)


def test_codes_still_redeem_after_the_master_key_is_rotated(
    shop: dict[str, Any], app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotation puts a new master key first; codes hashed under the old one cannot be re-hashed
    (their clear text is gone), so they are looked up under every configured key."""
    from cryptography.fernet import Fernet

    store_services.bind_phone(shop["account"].id, shop["sub"].id, "13800139208", method="sms")
    _, old_codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="old", count=2)
    db.session.commit()
    rotated = f"{Fernet.generate_key().decode()},{app.config['MASTER_KEY']}"
    monkeypatch.setitem(app.config, "MASTER_KEY", rotated)
    assert redemption.redeem(shop["account"].id, shop["sub"].id, old_codes[0], "api")["fulfilment_id"]
    _, new_codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="new", count=1)
    stored = db.session.scalars(sa.select(RedeemCode.code_hash).where(RedeemCode.status == "unused")).all()
    assert redemption.code_hash(new_codes[0]) in stored  # new codes under the new key
    assert redemption.code_hash(old_codes[1]) not in stored  # the old one under the old key…
    assert redemption.redeem(shop["account"].id, shop["sub"].id, old_codes[1], "api")  # …still redeems


def test_an_export_that_cannot_be_handed_out_is_kept_for_a_retry(shop: dict[str, Any]) -> None:
    from wechat_service.errors import ServiceError
    from wechat_service.extensions import get_redis

    first, _ = redemption.create_batch(shop["account"].id, shop["product"].id, name="a", count=2)
    second, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=3)
    redemption.stash_export(second, codes)
    # The first batch's slot holds the second's export (a stale or crossed value): refused, and kept.
    get_redis().set(redemption._export_key(first.id), get_redis().get(redemption._export_key(second.id)))
    with pytest.raises(ServiceError) as exc:
        redemption.take_export(shop["account"].id, first.id)
    assert exc.value.code == "export_mismatch"
    assert redemption.export_expires_in(first.id) is not None
    _, text, _ = redemption.take_export(shop["account"].id, second.id)
    assert codes[0] in text and redemption.export_expires_in(second.id) is None


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
