"""The metric definitions decided in review #19, each against a hand-built fixture: money on the
provider's payment time in the account's timezone, refunds on their own success day (a negative
month explained), one redemption per code however often fulfilment was retried, active
subscribers distinct over a period and never from location reports, the daily re-roll up to each
account's own today; and closed periods keep their frozen figures with the definitions they used."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from accounts.access import Access
from metrics import contracts, queries, rollups
from metrics import reports as metric_reports
from metrics.registry import DEFINITIONS_VERSION, REGISTRY
from store.models import Fulfilment, Product
from tests.metrics.test_rollups import day_values, ledger, ts  # noqa: F401 - the fixture
from wechat_service.extensions import db

ADMIN = Access(0, True, {})


def month(account_id: int, keys: list[str], d0: date, d1: date) -> dict[str, Any]:
    return queries.period_values([account_id], keys, d0, d1)[account_id]


def test_a_payment_counts_on_the_providers_time_not_when_we_recorded_it(ledger: Any) -> None:  # noqa: F811
    a = ledger.account("Asia/Shanghai")
    s = ledger.subscriber(a)
    order = ledger.order(s, 5_000, "2026-03-31T15:50:00")
    # Paid 23:59:58 Beijing on 31 March (WeChat Pay v3 success_time); the notification we recorded
    # at 00:00:03 on 1 April.
    ledger.txn(
        order, "payment", 5_000, "2026-03-31T16:00:03", raw={"success_time": "2026-03-31T23:59:58+08:00"}
    )
    v2 = ledger.order(s, 700, "2026-04-30T15:00:00")  # WeChat Pay v2: time_end, Beijing time
    ledger.txn(v2, "payment", 700, "2026-04-30T16:00:01", raw={"time_end": "20260430235959"})
    db.session.commit()
    rollups.refresh(now=ts("2026-05-02T00:00:00"))
    assert day_values(a.id, date(2026, 3, 31))["gmv_fen"] == 5_000
    assert "gmv_fen" not in day_values(a.id, date(2026, 4, 1))
    keys = ["gmv_fen", "paid_transactions"]
    assert month(a.id, keys, date(2026, 3, 1), date(2026, 3, 31)) == {
        "gmv_fen": 5_000,
        "paid_transactions": 1,
    }
    assert month(a.id, keys, date(2026, 4, 1), date(2026, 4, 30)) == {"gmv_fen": 700, "paid_transactions": 1}
    assert "provider's payment time" in REGISTRY["gmv_fen"].description


def test_a_refund_counts_on_its_own_success_day_and_a_negative_month_says_why(ledger: Any) -> None:  # noqa: F811
    a = ledger.account("Asia/Shanghai")
    s = ledger.subscriber(a)
    order = ledger.order(s, 8_000, "2026-03-05T02:00:00")
    ledger.txn(
        order, "payment", 8_000, "2026-03-05T02:01:00", raw={"success_time": "2026-03-05T10:01:00+08:00"}
    )
    # The refund succeeded at 23:50 Beijing on 2 April; its notification came after midnight.
    ledger.txn(
        order, "refund", 8_000, "2026-04-02T16:20:00", raw={"success_time": "2026-04-02T23:50:00+08:00"}
    )
    db.session.commit()
    rollups.refresh(now=ts("2026-05-01T00:00:00"))
    assert day_values(a.id, date(2026, 4, 2))["refunds_fen"] == 8_000
    keys = ["gmv_fen", "refunds_fen", "net_revenue_fen"]
    assert month(a.id, keys, date(2026, 3, 1), date(2026, 3, 31)) == {
        "gmv_fen": 8_000,
        "refunds_fen": 0,
        "net_revenue_fen": 8_000,
    }
    april = month(a.id, keys, date(2026, 4, 1), date(2026, 4, 30))
    assert april == {"gmv_fen": 0, "refunds_fen": 8_000, "net_revenue_fen": -8_000}
    report = metric_reports.month_report(ADMIN, "2026-04")
    assert report["totals"]["net_revenue_fen"] <= -8_000
    assert any("refunds count on the day they succeeded" in n for n in report["notes"])
    assert not metric_reports.month_report(ADMIN, "2026-01")["notes"]


def test_a_redemption_counts_once_per_code_however_often_fulfilment_was_retried(ledger: Any) -> None:  # noqa: F811
    a = ledger.account()
    s = ledger.subscriber(a)
    product = Product(
        account_id=a.id, code="rc", name="10 yuan", kind="topup", price_fen=1000, face_value_fen=1000
    )
    db.session.add(product)
    db.session.flush()
    attempts = [
        (1001, "2026-03-01T02:00:00", "failed"),  # code 1001: failed, given back, redeemed again…
        (1001, "2026-03-01T03:00:00", "failed"),
        (1001, "2026-03-02T02:00:00", "succeeded"),  # …the third attempt, the next day, succeeds
        (1002, "2026-03-02T05:00:00", "succeeded"),  # another code, once
    ]
    for i, (code_id, at, status) in enumerate(attempts):
        db.session.add(
            Fulfilment(account_id=a.id, subscriber_id=s.id, product_id=product.id, source="redemption",
                       source_id=code_id, phone="13800000000", idempotency_key=f"redeem-{code_id}-{i}",
                       status=status, attempts=3, created_at=ts(at))
        )  # fmt: skip
    db.session.add(
        Fulfilment(account_id=a.id, subscriber_id=s.id, product_id=product.id, source="order", source_id=1001,
                   phone="13800000000", idempotency_key="order-1001", created_at=ts("2026-03-02T06:00:00"))
    )  # an order's fulfilment with the same number is not a redemption  # fmt: skip
    db.session.commit()
    rollups.refresh(now=ts("2026-04-01T00:00:00"))
    assert day_values(a.id, date(2026, 3, 1)).get("redemptions") == 1  # the code's first day
    assert day_values(a.id, date(2026, 3, 2)).get("redemptions") == 1  # only code 1002
    assert month(a.id, ["redemptions"], date(2026, 3, 1), date(2026, 3, 31))["redemptions"] == 2


def test_active_subscribers_are_distinct_over_a_period_and_location_is_not_activity(ledger: Any) -> None:  # noqa: F811
    a = ledger.account()
    s1, s2, s3 = ledger.subscriber(a), ledger.subscriber(a), ledger.subscriber(a)
    for day in ("01", "02", "03"):  # s1 every day
        ledger.event(s1, "message", f"2026-03-{day}T02:00:00")
    ledger.event(s2, "click", "2026-03-02T03:00:00")
    ledger.event(s2, "view", "2026-03-02T03:01:00")
    for minute in range(5):  # s3's client reports its location; s3 does nothing itself
        ledger.event(s3, "location", f"2026-03-02T04:0{minute}:00")
    ledger.event(s3, "unfollow", "2026-03-03T04:00:00")
    db.session.commit()
    rollups.refresh(now=ts("2026-04-01T00:00:00"))
    assert [day_values(a.id, date(2026, 3, d)).get("active_subscribers") for d in (1, 2, 3)] == [1, 2, 1]
    keys = ["active_subscribers"]
    assert month(a.id, keys, date(2026, 3, 1), date(2026, 3, 31))["active_subscribers"] == 2  # not 4
    assert month(a.id, keys, date(2026, 3, 2), date(2026, 3, 3))["active_subscribers"] == 2
    assert month(a.id, keys, date(2026, 3, 3), date(2026, 3, 3))["active_subscribers"] == 1
    assert month(a.id, keys, date(2026, 4, 1), date(2026, 4, 30))["active_subscribers"] == 0
    assert "location" in REGISTRY["active_subscribers"].description


def test_the_daily_reroll_runs_up_to_each_accounts_own_today(ledger: Any) -> None:  # noqa: F811
    auckland, shanghai = ledger.account("Pacific/Auckland"), ledger.account("Asia/Shanghai")
    # 11:30 UTC on 9 March: 19:30 in Shanghai (9 March), 00:30 on 10 March in Auckland (NZDT).
    now = datetime(2026, 3, 9, 11, 30, tzinfo=UTC)
    ledger.event(ledger.subscriber(auckland), "follow", "2026-03-09T11:10:00")  # Auckland's 10 March
    ledger.event(ledger.subscriber(shanghai), "follow", "2026-03-09T11:10:00")  # Shanghai's 9 March
    db.session.commit()
    rollups.reroll(7, now)
    assert day_values(auckland.id, date(2026, 3, 10)).get("follows") == 1
    assert day_values(shanghai.id, date(2026, 3, 9)).get("follows") == 1


def test_a_closed_period_keeps_its_figures_and_records_its_definitions(
    app: Any,
    ledger: Any,  # noqa: F811
    create_staff: Any,
) -> None:
    from metrics.models import ContractPeriod

    a = ledger.account()
    s = ledger.subscriber(a)
    contract = contracts.create_contract(
        None,
        {
            "customer": "Operator",
            "name": "Definitions",
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 12, 31),
            "price_fen": 4_000_000,
            "fixed_share": "0.5",
            "formula": "linear",
        },
    )
    q1, q2 = contracts.periods_of(contract.id)[:2]
    for period in (q1, q2):
        contracts.add_target(
            None,
            contract,
            {
                "metric": "active_subscribers",
                "account_id": a.id,
                "starts_on": period.starts_on,
                "ends_on": period.ends_on,
                "target_value": "4",
            },
        )
    for day in ("01-05", "02-05", "03-05"):
        ledger.event(s, "message", f"2026-{day}T02:00:00")
    rollups.rebuild(date(2026, 1, 1), date(2026, 3, 31))
    contracts.close_period(None, contract, q1, now=datetime(2026, 4, 1, 1, tzinfo=UTC))
    assert q1.definitions == DEFINITIONS_VERSION
    frozen = contracts.period_report(contract, q1)
    assert frozen["definitions"] == DEFINITIONS_VERSION and frozen["targets"][0]["actual"] == "1"
    # Later ledger rows and a rebuild move live figures, never the closed period's.
    ledger.event(ledger.subscriber(a), "message", "2026-02-10T02:00:00")
    rollups.rebuild(date(2026, 1, 1), date(2026, 3, 31))
    again = contracts.period_report(contract, q1)
    assert (again["fee"], again["targets"], again["definitions"]) == (
        frozen["fee"],
        frozen["targets"],
        DEFINITIONS_VERSION,
    )
    assert contracts.evaluate_period(contract, q1)["targets"][0]["actual"] == "2"
    # A period closed before definitions were versioned says so (the migration marks them v1).
    db.session.execute(sa.update(ContractPeriod).where(ContractPeriod.id == q1.id).values(definitions=1))
    db.session.commit()
    admin = create_staff(admin=True)
    closed_page = admin.get(f"/console/metrics/contracts/{contract.id}/periods/{q1.id}").get_data(
        as_text=True
    )
    open_page = admin.get(f"/console/metrics/contracts/{contract.id}/periods/{q2.id}").get_data(as_text=True)
    assert "Metric definitions v1:" in closed_page
    assert f"Metric definitions v{DEFINITIONS_VERSION}:" in open_page
    report_page = admin.get("/console/metrics/report?month=2026-02").get_data(as_text=True)
    assert f"Metric definitions v{DEFINITIONS_VERSION}:" in report_page
    assert REGISTRY["active_subscribers"].description in report_page.replace("&#39;", "'")


def test_new_definitions_are_applied_once_from_the_first_open_period(ledger: Any) -> None:  # noqa: F811
    from metrics.models import MetricDaily, MetricWatermark

    a = ledger.account()
    contracts.create_contract(
        None,
        {
            "customer": "Operator",
            "name": "Upgrade",
            "starts_on": date(2025, 10, 1),
            "ends_on": date(2026, 9, 30),
            "price_fen": 1_000_000,
            "fixed_share": "0.5",
            "formula": "linear",
        },
    )
    ledger.event(ledger.subscriber(a), "location", "2025-11-05T02:00:00")
    # A figure rolled up under version 1 (location counted as activity), before the upgrade.
    db.session.add(
        MetricDaily(account_id=a.id, metric="active_subscribers", day=date(2025, 11, 5), dim="", value=1)
    )
    db.session.execute(sa.delete(MetricWatermark).where(MetricWatermark.feed == "definitions"))
    now = datetime(2026, 3, 10, 4, tzinfo=UTC)
    other = ledger.account()
    ledger.event(ledger.subscriber(other), "message", "2025-12-01T02:00:00")
    db.session.add(
        MetricDaily(account_id=other.id, metric="messages", day=date(2025, 12, 1), dim="", value=7)
    )
    first = rollups.apply_definitions(now, accounts=1)
    assert first is not None and first["from"] == date(2025, 10, 1)  # the first open period's start
    steps = [first]
    while not steps[-1]["done"]:  # one account at a time (the job commits each step)
        steps.append(rollups.apply_definitions(now, accounts=1))
    assert len(steps) >= 2
    assert "active_subscribers" not in day_values(a.id, date(2025, 11, 5))
    assert day_values(other.id, date(2025, 12, 1))["messages"] == 1
    assert rollups.apply_definitions(now) is None  # once
