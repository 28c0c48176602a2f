"""Fund pools: draws never take the balance below zero, each threshold alerts once (ledger entry +
template message to the pool's staff through the simulator), and a failed fulfilment gives back."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from payments import funds
from payments.models import AlertLevel, FundPool, FundPoolEntry, PoolEntryKind
from store import catalogue, fulfilment, redemption
from store.models import Fulfilment, FulfilmentStatus
from templates_msg import jobs as campaign_jobs
from tests import factories
from wechat_service.errors import ConflictError, InvalidInputError
from wechat_service.extensions import db, get_queue

STAFF_OPENID = "oFUNDSTAFF0001"


@pytest.fixture
def pool_setup(app: Flask, create_account: Any, simulator: str) -> dict[str, Any]:
    account, fields, _ = create_account("plain")
    appid = fields["appid"]
    requests.post(
        f"{simulator}/_sim/accounts/{appid}/templates",
        json={
            "templates": [{"template_id": "TPL_FUND_ALERT", "title": "资金预警", "content": "{{first.DATA}}"}]
        },
        timeout=5,
    ).raise_for_status()
    requests.post(
        f"{simulator}/_sim/accounts/{appid}/followers", json={"count": 1, "prefix": "oFUNDSTAFF"}, timeout=5
    ).raise_for_status()
    pool = funds.create_pool(
        account.id,
        name="合作方流量礼包",
        warning_fen=5000,
        critical_fen=2000,
        alert_openids=["oFUNDSTAFF00000000"],
        alert_template_id="TPL_FUND_ALERT",
    )
    get_queue("high").empty()
    db.session.commit()
    return {"account": account, "appid": appid, "pool": pool}


def _alerts(pool_id: int) -> list[str]:
    return [
        e.ref.split("-")[0]
        for e in db.session.scalars(
            sa.select(FundPoolEntry)
            .where(FundPoolEntry.pool_id == pool_id, FundPoolEntry.kind == PoolEntryKind.alert)
            .order_by(FundPoolEntry.id)
        )
    ]


def test_pool_validation() -> None:
    with pytest.raises(InvalidInputError) as exc:
        funds.create_pool(1, name="", warning_fen=100, critical_fen=200)
    assert set(exc.value.fields) == {"name", "critical_fen"}


def test_draws_stop_at_zero_and_thresholds_alert_once(
    app: Flask, pool_setup: dict[str, Any], simulator: str
) -> None:
    pool_id = pool_setup["pool"].id
    funds.top_up(pool_id, 10000, ref="transfer-0001", note="partner transfer")
    funds.top_up(pool_id, 10000, ref="transfer-0001")  # the same transfer recorded twice: once
    with pytest.raises(ConflictError):  # another transfer under a reused reference: refused, not dropped
        funds.top_up(pool_id, 50000, ref="transfer-0001")
    db.session.commit()
    assert db.session.get(FundPool, pool_id).balance_fen == 10000
    assert db.session.get(FundPool, pool_id).alert_level == AlertLevel.ok
    assert funds.draw(pool_id, 3000, "f-1") and funds.draw(pool_id, 3000, "f-1")  # one draw per ref
    assert db.session.get(FundPool, pool_id).balance_fen == 7000 and _alerts(pool_id) == []
    assert funds.draw(pool_id, 3000, "f-2")  # 4000 < 5000: warning
    assert funds.draw(pool_id, 500, "f-3")  # still warning: no second alert
    assert funds.draw(pool_id, 2000, "f-4")  # 1500 < 2000: critical
    assert not funds.draw(pool_id, 2000, "f-5")  # would go below zero: refused, nothing taken
    db.session.commit()
    pool = db.session.get(FundPool, pool_id)
    assert pool.balance_fen == 1500 and pool.alert_level == AlertLevel.critical
    assert _alerts(pool_id) == ["warning", "critical"]
    assert not db.session.scalar(
        sa.select(sa.func.count()).where(FundPoolEntry.pool_id == pool_id, FundPoolEntry.ref == "f-5")
    )
    # Payments announces after commit; templates_msg (its receiver) queues the alert with its data.
    name = "templates_msg.jobs.send_fund_alert"
    queued = [j.args[0] for j in get_queue("high").jobs if j.func_name == name]
    assert [(a["pool_id"], a["level"], a["balance_fen"]) for a in queued] == [
        (pool_id, "warning", 4000),
        (pool_id, "critical", 1500),
    ]
    assert campaign_jobs.send_fund_alert(queued[1]) == {"sent": 1, "failed": 0}
    sent = requests.get(f"{simulator}/_sim/accounts/{pool_setup['appid']}", timeout=5).json()[
        "template_messages"
    ]
    assert sent[-1]["touser"] == "oFUNDSTAFF00000000" and sent[-1]["template_id"] == "TPL_FUND_ALERT"
    assert "15.00 元" in sent[-1]["data"]["keyword2"]["value"]
    # A top-up lifts the level; the next crossing alerts again.
    funds.top_up(pool_id, 8500, ref="transfer-0002")
    assert db.session.get(FundPool, pool_id).alert_level == AlertLevel.ok
    funds.draw(pool_id, 6000, "f-6")
    assert _alerts(pool_id) == ["warning", "critical", "warning"]
    ledger = sum(e.amount_fen for e in funds.entries(pool_id))
    assert ledger == db.session.get(FundPool, pool_id).balance_fen == 4000


def test_gift_fulfilment_draws_and_a_failure_gives_back(
    app: Flask, pool_setup: dict[str, Any], simulator: str
) -> None:
    account, pool_id = pool_setup["account"], pool_setup["pool"].id
    funds.top_up(pool_id, 1000, ref="transfer-0001")
    product = catalogue.add_product(
        account_id=account.id, code="gift1g", name="1GB 流量礼包", kind="data_package", price_fen=600,
        package_code="DATA1G",
    )  # fmt: skip
    product.fund_pool_id = pool_id
    _, codes = redemption.create_batch(account.id, product.id, name="gift", count=3, valid_days=30)
    good = factories.subscriber(account.id, "oGIFT000000001", "13800139204")
    failing = factories.subscriber(account.id, "oGIFT000000002", "13800000000")  # BOSS: unknown line
    db.session.commit()
    first = redemption.redeem(account.id, good.id, codes[0], "api")["fulfilment_id"]
    db.session.commit()
    assert fulfilment.run(first) is FulfilmentStatus.succeeded
    assert db.session.get(FundPool, pool_id).balance_fen == 400
    second = redemption.redeem(account.id, failing.id, codes[1], "api")["fulfilment_id"]
    db.session.commit()
    assert fulfilment.run(second) is FulfilmentStatus.failed  # 400 < 600: the pool cannot cover it
    db.session.expire_all()
    assert db.session.get(Fulfilment, second).error == "fund pool exhausted"
    funds.top_up(pool_id, 1000, ref="transfer-0002")
    db.session.commit()
    third = redemption.redeem(account.id, failing.id, codes[2], "api")["fulfilment_id"]
    db.session.commit()
    assert fulfilment.run(third) is FulfilmentStatus.failed  # the BOSS refuses the line
    db.session.expire_all()
    assert db.session.get(FundPool, pool_id).balance_fen == 1400  # the draw came back
    kinds = [e.kind.value for e in reversed(funds.entries(pool_id)) if e.kind is not PoolEntryKind.alert]
    assert kinds == ["top_up", "debit", "top_up", "debit", "release"]
