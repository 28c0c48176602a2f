"""Points exchange: debited at the BOSS first (never below zero), settled when the product is
carried out, credited back when it fails; idempotent by the client's key."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from store import catalogue, jobs, points
from store.models import HoldStatus, PointsHold
from tests import factories
from wechat_service.errors import ServiceError
from wechat_service.extensions import db


def _line(simulator: str, phone: str) -> dict[str, Any]:
    return requests.get(f"{simulator}/_sim/boss/lines/{phone}", timeout=5).json()


@pytest.fixture
def shop(app: Flask, create_account: Any, simulator: str) -> dict[str, Any]:
    account, _, _ = create_account("plain")
    phone = "13800139600"
    have = _line(simulator, phone)["points"]
    cheap = catalogue.add_product(
        account_id=account.id,
        code="data1g",
        name="1GB 流量",
        kind="data_package",
        price_fen=1000,
        package_code="DATA1G",
        points_price=max(1, have // 3),
    )
    dear = catalogue.add_product(
        account_id=account.id, code="dear", name="dear", kind="voucher", price_fen=1, points_price=have + 1
    )
    sub = factories.subscriber(account.id, "oPOINTS0000001", phone)
    db.session.commit()
    return {"account": account, "cheap": cheap, "dear": dear, "sub": sub, "phone": phone, "have": have}


def test_exchange_debits_then_settles(shop: dict[str, Any], simulator: str) -> None:
    hold = points.exchange(shop["account"].id, shop["sub"].id, shop["cheap"].id, "points-key-0001")
    db.session.commit()
    assert _line(simulator, shop["phone"])["points"] == shop["have"] - hold.points
    again = points.exchange(shop["account"].id, shop["sub"].id, shop["cheap"].id, "points-key-0001")
    assert again.id == hold.id  # the client's key: no second debit
    assert _line(simulator, shop["phone"])["points"] == shop["have"] - hold.points
    assert jobs.fulfil(hold.fulfilment_id) == "succeeded"
    db.session.expire_all()
    assert db.session.get(PointsHold, hold.id).status is HoldStatus.settled


def test_never_below_zero(shop: dict[str, Any], simulator: str) -> None:
    with pytest.raises(ServiceError) as exc:
        points.exchange(shop["account"].id, shop["sub"].id, shop["dear"].id, "points-key-0002")
    assert exc.value.code == "insufficient_points"
    assert _line(simulator, shop["phone"])["points"] == shop["have"]
    assert db.session.scalar(sa.select(PointsHold.status)) is HoldStatus.released


def test_failed_fulfilment_credits_the_points_back(shop: dict[str, Any], simulator: str, app: Flask) -> None:
    plan = catalogue.add_product(
        account_id=shop["account"].id,
        code="plan",
        name="plan",
        kind="plan_change",
        price_fen=1,
        plan_code="P",
        points_price=1,
    )
    db.session.commit()
    hold = points.exchange(shop["account"].id, shop["sub"].id, plan.id, "points-key-0003")
    db.session.commit()
    # The BOSS refused the plan change (how refusals arise is tested with the fulfilment itself).
    from store.models import Fulfilment, FulfilmentStatus

    db.session.execute(
        sa.update(Fulfilment)
        .where(Fulfilment.id == hold.fulfilment_id)
        .values(status=FulfilmentStatus.failed, error="test: refused")
    )
    db.session.commit()
    before = _line(simulator, shop["phone"])["points"]
    jobs.fulfil(hold.fulfilment_id)
    db.session.expire_all()
    assert db.session.get(PointsHold, hold.id).status is HoldStatus.released
    assert _line(simulator, shop["phone"])["points"] == before + 1
    jobs.fulfil(hold.fulfilment_id)  # again: no second credit
    assert _line(simulator, shop["phone"])["points"] == before + 1


def _exchangeable(shop: dict[str, Any], **fields: Any) -> Any:
    product = catalogue.add_product(
        account_id=shop["account"].id,
        code=fields.pop("code"),
        name="5 元话费",
        kind="topup",
        price_fen=500,
        face_value_fen=500,
        points_price=1,
        **fields,
    )
    db.session.commit()
    return product


def test_exchange_takes_stock_like_an_order(shop: dict[str, Any]) -> None:
    from store.models import Product

    product = _exchangeable(shop, code="stock1", stock=1)
    points.exchange(shop["account"].id, shop["sub"].id, product.id, "points-stock-0001")
    db.session.commit()
    assert db.session.scalar(sa.select(Product.stock).where(Product.id == product.id)) == 0
    with pytest.raises(ServiceError) as exc:
        points.exchange(shop["account"].id, shop["sub"].id, product.id, "points-stock-0002")
    assert exc.value.code == "sold_out"
    db.session.rollback()
    with pytest.raises(ServiceError) as exc:  # and the paid path sees the same stock
        factories.order(shop["sub"], product, "order-stock-03")
    assert exc.value.code == "sold_out"


def test_exchange_counts_towards_the_per_subscriber_limit(shop: dict[str, Any]) -> None:

    product = _exchangeable(shop, code="limit1", per_subscriber_limit=1)
    points.exchange(shop["account"].id, shop["sub"].id, product.id, "points-limit-0001")
    db.session.commit()
    with pytest.raises(ServiceError) as exc:
        points.exchange(shop["account"].id, shop["sub"].id, product.id, "points-limit-0002")
    assert exc.value.code == "limit_reached"
    db.session.rollback()
    with pytest.raises(ServiceError) as exc:  # one limit across orders and exchanges
        factories.order(shop["sub"], product, "order-limit-03")
    assert exc.value.code == "limit_reached"


def test_refused_debit_gives_the_stock_back(shop: dict[str, Any]) -> None:
    from store.models import Product

    dear = catalogue.add_product(
        account_id=shop["account"].id, code="dear1", name="dear", kind="voucher", price_fen=1,
        points_price=shop["have"] + 1, stock=1, per_subscriber_limit=1,
    )  # fmt: skip
    db.session.commit()
    with pytest.raises(ServiceError) as exc:
        points.exchange(shop["account"].id, shop["sub"].id, dear.id, "points-dear-0001")
    assert exc.value.code == "insufficient_points"
    assert db.session.scalar(sa.select(Product.stock).where(Product.id == dear.id)) == 1
    with pytest.raises(ServiceError) as exc:  # a released hold does not count towards the limit
        points.exchange(shop["account"].id, shop["sub"].id, dear.id, "points-dear-0002")
    assert exc.value.code == "insufficient_points"


def test_failed_fulfilment_gives_the_stock_back(shop: dict[str, Any]) -> None:
    from store.models import Fulfilment, FulfilmentStatus, Product

    product = _exchangeable(shop, code="stockback", stock=1)
    hold = points.exchange(shop["account"].id, shop["sub"].id, product.id, "points-back-0001")
    db.session.commit()
    db.session.execute(
        sa.update(Fulfilment)
        .where(Fulfilment.id == hold.fulfilment_id)
        .values(status=FulfilmentStatus.failed, error="test: refused")
    )
    db.session.commit()
    jobs.fulfil(hold.fulfilment_id)
    db.session.expire_all()
    assert db.session.get(PointsHold, hold.id).status is HoldStatus.released
    assert db.session.scalar(sa.select(Product.stock).where(Product.id == product.id)) == 1
    jobs.fulfil(hold.fulfilment_id)  # settled once: the stock is not given back twice
    assert db.session.scalar(sa.select(Product.stock).where(Product.id == product.id)) == 1


def test_client_key_of_another_product_is_refused(shop: dict[str, Any]) -> None:
    from wechat_service.errors import ConflictError

    points.exchange(shop["account"].id, shop["sub"].id, shop["cheap"].id, "points-key-0009")
    db.session.commit()
    other = _exchangeable(shop, code="other")
    with pytest.raises(ConflictError):
        points.exchange(shop["account"].id, shop["sub"].id, other.id, "points-key-0009")


# -- holds left unresolved (the BOSS unreachable during the exchange): the periodic sweep ----------


@pytest.fixture
def impatient_boss(app: Flask, simulator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real BOSS client with a short write timeout, so a write answered too late fails fast."""
    from store.boss import HttpBoss

    client = HttpBoss(
        f"{simulator}/boss", app.config["BOSS_APP_ID"], app.config["BOSS_SECRET"], write_timeout=0.5
    )
    monkeypatch.setitem(app.extensions, "boss", client)


def _fault(simulator: str, kind: str, operation: str, **extra: Any) -> None:
    requests.post(
        f"{simulator}/_sim/boss/faults", json={"kind": kind, "operation": operation, **extra}, timeout=5
    ).raise_for_status()


def _stranded(shop: dict[str, Any], product_id: int, key: str) -> PointsHold:
    """The exchange fails with the BOSS unreachable: the hold stays held, with no fulfilment."""
    with pytest.raises(ServiceError) as exc:
        points.exchange(shop["account"].id, shop["sub"].id, product_id, key)
    assert exc.value.code == "boss_unavailable"
    db.session.expire_all()
    hold = db.session.scalar(sa.select(PointsHold).where(PointsHold.client_key == key))
    assert hold.status is HoldStatus.held and hold.fulfilment_id is None
    return hold


def _age(hold: PointsHold) -> None:
    from datetime import timedelta

    from wechat_service.dbtypes import utcnow

    db.session.execute(
        sa.update(PointsHold).where(PointsHold.id == hold.id).values(created_at=utcnow() - timedelta(hours=1))
    )
    db.session.commit()


def _stock(product_id: int) -> int | None:
    from store.models import Product

    return db.session.scalar(sa.select(Product.stock).where(Product.id == product_id))


def test_sweep_fulfils_a_hold_the_boss_debited_without_answering(
    shop: dict[str, Any], simulator: str, impatient_boss: None
) -> None:
    from store.models import Fulfilment

    product = _exchangeable(shop, code="lost-debit", stock=1)
    balance = _line(simulator, shop["phone"])["balance_fen"]
    _fault(simulator, "timeout_after_accept", "points-debit", ms=1500)  # debited, answer lost
    _fault(simulator, "busy", "requests/query")  # and the follow-up query fails too
    hold = _stranded(shop, product.id, "points-lost-0001")
    assert _line(simulator, shop["phone"])["points"] == shop["have"] - 1
    assert _stock(product.id) == 0
    assert jobs.sweep_points_holds() == {"fulfilled": 0, "released": 0}  # within the grace period
    _age(hold)
    assert jobs.sweep_points_holds() == {"fulfilled": 1, "released": 0}
    db.session.expire_all()
    hold = db.session.get(PointsHold, hold.id)
    assert hold.fulfilment_id is not None
    assert jobs.fulfil(hold.fulfilment_id) == "succeeded"
    assert jobs.sweep_points_holds() == {"fulfilled": 0, "released": 0}  # twice: nothing more
    db.session.expire_all()
    assert db.session.get(PointsHold, hold.id).status is HoldStatus.settled
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Fulfilment)) == 1
    line = _line(simulator, shop["phone"])
    assert line["points"] == shop["have"] - 1  # debited once, not credited back
    assert line["balance_fen"] == balance + 500  # the top-up carried out once
    assert _stock(product.id) == 0  # the subscriber kept it


def test_sweep_releases_a_hold_the_boss_never_debited(
    shop: dict[str, Any], simulator: str, impatient_boss: None
) -> None:
    from store.models import Fulfilment

    product = _exchangeable(shop, code="never-debited", stock=1)
    _fault(simulator, "busy", "points-debit")  # refused before carrying anything out
    _fault(simulator, "busy", "requests/query")
    hold = _stranded(shop, product.id, "points-none-0001")
    assert _line(simulator, shop["phone"])["points"] == shop["have"]
    assert _stock(product.id) == 0
    _age(hold)
    _fault(simulator, "busy", "requests/query")  # still unreachable: the hold waits
    assert jobs.sweep_points_holds() == {"fulfilled": 0, "released": 0}
    db.session.expire_all()
    assert db.session.get(PointsHold, hold.id).status is HoldStatus.held
    assert jobs.sweep_points_holds() == {"fulfilled": 0, "released": 1}  # the BOSS is back
    assert jobs.sweep_points_holds() == {"fulfilled": 0, "released": 0}
    db.session.expire_all()
    assert db.session.get(PointsHold, hold.id).status is HoldStatus.released
    assert _stock(product.id) == 1  # given back once
    assert _line(simulator, shop["phone"])["points"] == shop["have"]  # nothing taken, nothing credited
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Fulfilment)) == 0


def test_the_cron_process_runs_the_points_sweep(redis_conn: Any) -> None:
    from rq.cron import CronScheduler

    from wechat_service.worker import periodic_jobs

    scheduler = CronScheduler(connection=redis_conn)
    periodic_jobs(scheduler)
    sweeps = [j for j in scheduler.get_jobs() if j.func_name == "store.jobs.sweep_points_holds"]
    assert len(sweeps) == 1 and sweeps[0].interval == 300
