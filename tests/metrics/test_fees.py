"""Every fee formula on worked examples (boundaries included); contracts, targets, attainment,
pacing, forecasts; closed periods immutable — later corrections only as adjustments."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from accounts.models import Account, AuditLog, Subscriber, SubscriberEvent
from metrics import contracts, fees, rollups
from metrics.models import ContractPeriod
from wechat_service.errors import ConflictError, InvalidInputError
from wechat_service.extensions import db

D = Decimal
TIERS = {"tiers": [{"min": "1.0", "pay": "1.0"}, {"min": "0.9", "pay": "0.8"}, {"min": "0.8", "pay": "0.5"}]}


@pytest.mark.parametrize(
    ("formula", "params", "attainment", "share"),
    [
        ("linear", {}, "0", "0"),
        ("linear", {}, "0.8532", "0.8532"),
        ("linear", {}, "1", "1"),
        ("linear", {}, "1.25", "1"),  # capped at 100 %
        ("tiered", TIERS, "1.0000", "1.0"),
        ("tiered", TIERS, "1.3", "1.0"),
        ("tiered", TIERS, "0.9999", "0.8"),  # just below a threshold: the lower tier
        ("tiered", TIERS, "0.9000", "0.8"),  # on the threshold: that tier
        ("tiered", TIERS, "0.8", "0.5"),
        ("tiered", TIERS, "0.7999", "0"),
        ("floor", {"floor": "0.6"}, "0.5999", "0"),
        ("floor", {"floor": "0.6"}, "0.6", "0.6"),  # on the floor: paid linearly
        ("floor", {"floor": "0.6"}, "0.95", "0.95"),
        ("floor", {"floor": "0.6"}, "1.4", "1"),
    ],
)
def test_payout_share(formula: str, params: dict[str, Any], attainment: str, share: str) -> None:
    params = fees.validate_params(formula, params)
    got, why = fees.payout(formula, params, D(attainment))
    assert got == D(share) and why


def test_worked_example_quarterly_fee_line_by_line() -> None:
    # 1,200,000.00 yuan a year, 60 % fixed: 720,000.00 fixed, 480,000.00 variable, 4 quarters.
    # Q2 weighted attainment 0.9250 under the tiered formula → 0.8 of 120,000.00 = 96,000.00.
    fee = fees.period_fee(
        price_fen=120_000_000,
        fixed_share=D("0.6"),
        periods=4,
        seq=2,
        formula="tiered",
        params=fees.validate_params("tiered", TIERS),
        attainment=D("0.9250"),
    )
    assert fee["fixed_fen"] == 18_000_000 and fee["variable_max_fen"] == 12_000_000
    assert fee["variable_fen"] == 9_600_000 and fee["fee_fen"] == 27_600_000
    assert [line["item"] for line in fee["lines"]][-1] == "fee for the period"
    assert fee["lines"][-1]["fen"] == fee["fixed_fen"] + fee["variable_fen"]


def test_instalments_add_up_to_the_contract_exactly() -> None:
    # 100,000.01 yuan, fixed 0.6 → 6,000,000.6 fen rounds half-up to 6,000,001; thirds leave a remainder.
    parts = [
        fees.period_fee(
            price_fen=10_000_001,
            fixed_share=D("0.6"),
            periods=3,
            seq=s,
            formula="linear",
            params={},
            attainment=D(1),
        )
        for s in (1, 2, 3)
    ]
    assert sum(p["fixed_fen"] for p in parts) == 6_000_001
    assert sum(p["variable_fen"] for p in parts) == 10_000_001 - 6_000_001
    assert [p["fixed_fen"] for p in parts] == [2_000_000, 2_000_000, 2_000_001]
    # Half a fen rounds up: 333 × 0.5 = 166.5 → 167.
    half = fees.period_fee(
        price_fen=1000,
        fixed_share=D("0.001"),
        periods=3,
        seq=1,
        formula="linear",
        params={},
        attainment=D("0.5"),
    )
    assert half["variable_max_fen"] == 333 and half["variable_fen"] == 167


def test_weighted_attainment() -> None:
    assert fees.weighted_attainment([(D("1.2"), D(2)), (D("0.6"), D(1))]) == D("1.0000")
    assert fees.weighted_attainment([(D("0.5"), D(1)), (D("0.75"), D(3))]) == D("0.6875")
    assert fees.weighted_attainment([]) == D(0)


def test_bad_formula_params_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        fees.validate_params("floor", {"floor": "1.5"})
    with pytest.raises(InvalidInputError):
        fees.validate_params("tiered", {"tiers": []})


@pytest.fixture
def account(app: Any) -> Account:
    account = Account(name="Fee account", kind="service", appid="wxfees0000000001", app_secret="s")
    db.session.add(account)
    db.session.flush()
    return account


def follow(account: Account, n: int, at: str) -> None:
    for _ in range(n):
        sub = Subscriber(account_id=account.id, openid=f"of{datetime.now().timestamp()}{id(object())}")
        db.session.add(sub)
        db.session.flush()
        when = datetime.fromisoformat(at).replace(tzinfo=UTC)
        db.session.add(
            SubscriberEvent(
                account_id=account.id,
                subscriber_id=sub.id,
                kind="follow",
                occurred_at=when,
                recorded_at=when,
                detail={},
            )
        )
    db.session.flush()


def make_contract(formula: str = "linear", params: dict[str, Any] | None = None) -> Any:
    return contracts.create_contract(
        None,
        {
            "customer": "Operator",
            "name": "2026 service",
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 12, 31),
            "price_fen": 120_000_000,
            "fixed_share": "0.6",
            "formula": formula,
            "formula_params": params or {},
        },
    )


def test_contract_schedule_targets_attainment_pacing_forecast(account: Account) -> None:
    contract = make_contract()
    periods = contracts.periods_of(contract.id)
    assert [(p.starts_on, p.ends_on) for p in periods] == [
        (date(2026, 1, 1), date(2026, 3, 31)),
        (date(2026, 4, 1), date(2026, 6, 30)),
        (date(2026, 7, 1), date(2026, 9, 30)),
        (date(2026, 10, 1), date(2026, 12, 31)),
    ]
    q1 = periods[0]
    contracts.add_target(
        None,
        contract,
        {
            "metric": "follows",
            "account_id": account.id,
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 1, 31),
            "target_value": 10,
            "weight": 1,
        },
    )
    contracts.add_target(
        None,
        contract,
        {
            "metric": "support_quality",
            "account_id": account.id,
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 3, 31),
            "target_value": 90,
            "weight": 1,
        },
    )
    follow(account, 4, "2026-01-05T02:00:00")
    follow(account, 8, "2026-01-20T02:00:00")
    contracts.enter_manual(
        None,
        {
            "metric": "support_quality",
            "account_id": account.id,
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 3, 31),
            "value": "80",
            "note": "first",
        },
    )
    contracts.enter_manual(
        None,
        {
            "metric": "support_quality",
            "account_id": account.id,
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 3, 31),
            "value": "72",
            "note": "corrected",
        },
    )
    rollups.rebuild(date(2026, 1, 1), date(2026, 3, 31))
    # On 10 January (Beijing): 4 follows so far, 10/31 of the month elapsed.
    mid = contracts.evaluate_period(contract, q1, now=datetime(2026, 1, 10, 4, tzinfo=UTC))
    by_metric = {t["metric"]: t for t in mid["targets"]}
    assert by_metric["follows"]["actual_to_date"] == "4" and by_metric["follows"]["elapsed"] == "0.3226"
    assert by_metric["follows"]["expected_to_date"] == "3.2258" and by_metric["follows"]["pacing"] == "1.2400"
    assert by_metric["follows"]["forecast"] == "12.4000"  # 4 / (10/31)
    report = contracts.evaluate_period(contract, q1, now=datetime(2026, 4, 2, tzinfo=UTC))
    by_metric = {t["metric"]: t for t in report["targets"]}
    assert by_metric["follows"]["attainment"] == "1.2000"  # 12 / 10
    assert by_metric["support_quality"]["actual"] == "72.0000"  # the latest entry counts
    assert by_metric["support_quality"]["attainment"] == "0.8000"
    assert report["weighted_attainment"] == "1.0000"  # (1.2 + 0.8) / 2, then capped by the formula
    assert report["fee"]["fee_fen"] == 18_000_000 + 12_000_000
    # Two manual entries, both audited with before/after.
    trail = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "metrics.manual_value")).all()
    assert [(t.before, t.after["value"]) for t in trail][-2:] == [(None, "80"), ({"value": "80.0000"}, "72")]


def test_closed_period_is_frozen_and_corrected_only_by_adjustments(account: Account) -> None:
    contract = make_contract("floor", {"floor": "0.6"})
    q1 = contracts.periods_of(contract.id)[0]
    contracts.add_target(
        None,
        contract,
        {
            "metric": "follows",
            "account_id": account.id,
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 3, 31),
            "target_value": 10,
        },
    )
    follow(account, 5, "2026-02-01T02:00:00")
    rollups.rebuild(date(2026, 1, 1), date(2026, 3, 31))
    with pytest.raises(ConflictError):  # not ended yet
        contracts.close_period(None, contract, q1, now=datetime(2026, 3, 31, 10, tzinfo=UTC))
    contracts.close_period(None, contract, q1, now=datetime(2026, 4, 1, 1, tzinfo=UTC))
    assert q1.fee_fen == 18_000_000  # 0.5 is under the 0.6 floor: fixed only
    frozen = contracts.period_report(contract, q1)
    # Late ledger rows and a rebuild change the rollups but not the closed period.
    follow(account, 5, "2026-03-01T02:00:00")
    rollups.rebuild(date(2026, 1, 1), date(2026, 3, 31))
    again = contracts.period_report(contract, q1)
    assert again["fee"] == frozen["fee"] and again["targets"] == frozen["targets"] and again["frozen"]
    assert contracts.evaluate_period(contract, q1)["weighted_attainment"] == "1.0000"  # live figures moved
    with pytest.raises(ConflictError):
        contracts.close_period(None, contract, q1, now=datetime(2026, 4, 2, tzinfo=UTC))
    with pytest.raises(ConflictError):
        contracts.add_target(
            None,
            contract,
            {
                "metric": "follows",
                "account_id": account.id,
                "starts_on": date(2026, 2, 1),
                "ends_on": date(2026, 2, 28),
                "target_value": 1,
            },
        )
    with pytest.raises(ConflictError):
        contracts.enter_manual(
            None,
            {
                "metric": "support_quality",
                "account_id": account.id,
                "starts_on": date(2026, 1, 1),
                "ends_on": date(2026, 3, 31),
                "value": 1,
            },
        )
    with pytest.raises(InvalidInputError):
        contracts.add_adjustment(None, contract, q1, 1_000, "  ")
    contracts.add_adjustment(None, contract, q1, 12_000_000, "late follows recognised by both parties")
    final = contracts.period_report(contract, q1)
    assert final["fee"]["fee_fen"] == 18_000_000 and final["total_due_fen"] == 30_000_000
    # The database refuses to forget the snapshot too: status and fee stay as closed.
    db.session.expire_all()
    stored = db.session.get(ContractPeriod, q1.id)
    assert stored.status.value == "closed" and stored.fee_fen == 18_000_000
