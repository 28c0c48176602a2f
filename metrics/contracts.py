"""Contracts, targets, manual figures, attainment, pacing, forecasts, fees and period closing.

Services take plain arguments (actor id, ip) and never read the request; each change is audited
in its own transaction (accounts.staff.audit); the caller commits. A closed period is never
recomputed: its snapshot is what was agreed, and corrections are adjustment entries.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from accounts.models import Account, OrgUnit
from accounts.staff import audit
from metrics import fees
from metrics.models import (
    Contract,
    ContractPeriod,
    FeeFormula,
    ManualValue,
    PeriodAdjustment,
    PeriodStatus,
    Target,
)
from metrics.queries import Tree, org_tree, period_values, unit_values
from metrics.registry import DEFINITIONS, DEFINITIONS_VERSION, REGISTRY, SUM
from metrics.rollups import today_in
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError
from wechat_service.extensions import db
from wechat_service.money import yuan

DEFAULT_TZ = "Asia/Shanghai"


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    return date(year, month, 1) if day.day == 1 else date(year, month, min(day.day, 28))


def schedule(starts_on: date, ends_on: date, months: int = 3) -> list[tuple[date, date]]:
    """Quarterly payment periods from the contract's start; the last one ends with the contract."""
    out, start = [], starts_on
    while start <= ends_on:
        end = min(_add_months(start, months) - timedelta(days=1), ends_on)
        out.append((start, end))
        start = end + timedelta(days=1)
    return out


def _decimal(value: Any, field: str) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidInputError(f"{field}: a number", fields={field: ["invalid"]}) from None


def create_contract(actor_id: int | None, data: dict[str, Any], ip: str | None = None) -> Contract:
    starts_on, ends_on = data["starts_on"], data["ends_on"]
    if ends_on <= starts_on:
        raise InvalidInputError("the contract must end after it starts", fields={"ends_on": ["invalid"]})
    price = int(data["price_fen"])
    if price <= 0:
        raise InvalidInputError("the price must be positive", fields={"price_fen": ["invalid"]})
    share = _decimal(data["fixed_share"], "fixed_share")
    if not Decimal(0) <= share <= Decimal(1):
        raise InvalidInputError("the fixed share is between 0 and 1", fields={"fixed_share": ["invalid"]})
    formula = FeeFormula(data["formula"])
    params = fees.validate_params(formula.value, data.get("formula_params") or {})
    org_unit_id = data.get("org_unit_id")
    if org_unit_id is not None and db.session.get(OrgUnit, org_unit_id) is None:
        raise InvalidInputError("no such org unit", fields={"org_unit_id": ["unknown"]})
    contract = Contract(
        customer=data["customer"].strip(),
        name=data["name"].strip(),
        org_unit_id=org_unit_id,
        starts_on=starts_on,
        ends_on=ends_on,
        price_fen=price,
        fixed_share=share,
        formula=formula,
        formula_params=params,
        schedule="quarterly",
        created_by=actor_id,
    )
    db.session.add(contract)
    db.session.flush()
    periods = schedule(starts_on, ends_on)
    for seq, (start, end) in enumerate(periods, start=1):
        db.session.add(
            ContractPeriod(
                contract_id=contract.id, seq=seq, label=f"P{seq} {start}…{end}", starts_on=start, ends_on=end
            )
        )
    audit(
        actor_id,
        "metrics.contract_create",
        target=f"contract:{contract.id}",
        after=describe_contract(contract),
        ip=ip,
    )
    db.session.flush()
    return contract


def describe_contract(contract: Contract) -> dict[str, Any]:
    return {
        "id": contract.id,
        "customer": contract.customer,
        "name": contract.name,
        "org_unit_id": contract.org_unit_id,
        "starts_on": contract.starts_on.isoformat(),
        "ends_on": contract.ends_on.isoformat(),
        "price_fen": contract.price_fen,
        "fixed_share": str(contract.fixed_share),
        "variable_share": str(Decimal(1) - Decimal(contract.fixed_share)),
        "formula": contract.formula.value,
        "formula_params": contract.formula_params,
        "schedule": contract.schedule,
    }


def contracts() -> list[Contract]:
    return list(db.session.scalars(sa.select(Contract).order_by(Contract.starts_on.desc(), Contract.id)))


def contract_for(contract_id: int) -> Contract:
    contract = db.session.get(Contract, contract_id)
    if contract is None:
        raise NotFoundError("no such contract")
    return contract


def periods_of(contract_id: int) -> list[ContractPeriod]:
    return list(
        db.session.scalars(
            sa.select(ContractPeriod)
            .where(ContractPeriod.contract_id == contract_id)
            .order_by(ContractPeriod.seq)
        )
    )


def period_for(contract_id: int, period_id: int) -> ContractPeriod:
    period = db.session.get(ContractPeriod, period_id)
    if period is None or period.contract_id != contract_id:
        raise NotFoundError("no such period")
    return period


def targets_of(contract_id: int, period: ContractPeriod | None = None) -> list[Target]:
    query = sa.select(Target).where(Target.contract_id == contract_id)
    if period is not None:
        query = query.where(Target.starts_on >= period.starts_on, Target.ends_on <= period.ends_on)
    return list(db.session.scalars(query.order_by(Target.starts_on, Target.id)))


def _period_containing(contract_id: int, d0: date, d1: date) -> ContractPeriod | None:
    return db.session.scalar(
        sa.select(ContractPeriod).where(
            ContractPeriod.contract_id == contract_id,
            ContractPeriod.starts_on <= d0,
            ContractPeriod.ends_on >= d1,
        )
    )


def add_target(
    actor_id: int | None, contract: Contract, data: dict[str, Any], ip: str | None = None
) -> Target:
    """A target inside one open payment period of the contract (a month or the quarter itself)."""
    metric = data["metric"]
    if metric not in REGISTRY:
        raise InvalidInputError(f"no metric {metric}", fields={"metric": ["unknown"]})
    account_id, org_unit_id = data.get("account_id"), data.get("org_unit_id")
    if (account_id is None) == (org_unit_id is None):
        raise InvalidInputError("an account or an org unit", fields={"account_id": ["one of the two"]})
    if account_id is not None and db.session.get(Account, account_id) is None:
        raise InvalidInputError("no such account", fields={"account_id": ["unknown"]})
    if org_unit_id is not None and db.session.get(OrgUnit, org_unit_id) is None:
        raise InvalidInputError("no such org unit", fields={"org_unit_id": ["unknown"]})
    d0, d1 = data["starts_on"], data["ends_on"]
    if d1 < d0:
        raise InvalidInputError("the target period ends before it starts", fields={"ends_on": ["invalid"]})
    period = _period_containing(contract.id, d0, d1)
    if period is None:
        raise InvalidInputError(
            "a target lies inside one payment period of the contract", fields={"starts_on": ["outside"]}
        )
    if period.status is PeriodStatus.closed:
        raise ConflictError("that period is closed: its targets cannot change")
    value, weight = _decimal(data["target_value"], "target_value"), _decimal(data.get("weight", 1), "weight")
    if value <= 0 or weight <= 0:
        raise InvalidInputError("target and weight must be positive", fields={"target_value": ["invalid"]})
    target = Target(
        contract_id=contract.id,
        metric=metric,
        account_id=account_id,
        org_unit_id=org_unit_id,
        starts_on=d0,
        ends_on=d1,
        target_value=value,
        weight=weight,
        created_by=actor_id,
    )
    db.session.add(target)
    db.session.flush()
    audit(
        actor_id,
        "metrics.target_add",
        account_id=account_id,
        target=f"contract:{contract.id}/target:{target.id}",
        after={
            "metric": metric,
            "account_id": account_id,
            "org_unit_id": org_unit_id,
            "starts_on": d0.isoformat(),
            "ends_on": d1.isoformat(),
            "target_value": str(value),
            "weight": str(weight),
        },
        ip=ip,
    )
    return target


def _closed_overlapping(d0: date, d1: date) -> bool:
    return (
        db.session.scalar(
            sa.select(sa.func.count()).where(
                ContractPeriod.status == PeriodStatus.closed,
                ContractPeriod.starts_on <= d1,
                ContractPeriod.ends_on >= d0,
            )
        )
        or 0
    ) > 0


def enter_manual(actor_id: int | None, data: dict[str, Any], ip: str | None = None) -> ManualValue:
    """A manual figure (a new row every time: the history is the audit trail)."""
    metric = data["metric"]
    if metric not in REGISTRY or not REGISTRY[metric].manual:
        raise InvalidInputError(f"{metric} is not a manual metric", fields={"metric": ["not manual"]})
    account_id, org_unit_id = data.get("account_id"), data.get("org_unit_id")
    if (account_id is None) == (org_unit_id is None):
        raise InvalidInputError("an account or an org unit", fields={"account_id": ["one of the two"]})
    d0, d1 = data["starts_on"], data["ends_on"]
    if d1 < d0:
        raise InvalidInputError("the period ends before it starts", fields={"ends_on": ["invalid"]})
    if _closed_overlapping(d0, d1):
        raise ConflictError("a closed period covers these dates: record an adjustment instead")
    value = _decimal(data["value"], "value")
    previous = db.session.scalar(
        sa.select(ManualValue.value)
        .where(ManualValue.metric == metric, ManualValue.starts_on == d0, ManualValue.ends_on == d1)
        .where(ManualValue.account_id == account_id if account_id else ManualValue.org_unit_id == org_unit_id)
        .order_by(ManualValue.entered_at.desc(), ManualValue.id.desc())
        .limit(1)
    )
    entry = ManualValue(
        metric=metric,
        account_id=account_id,
        org_unit_id=org_unit_id,
        starts_on=d0,
        ends_on=d1,
        value=value,
        note=(data.get("note") or "")[:500],
        entered_by=actor_id,
        entered_at=utcnow(),
    )
    db.session.add(entry)
    db.session.flush()
    audit(
        actor_id,
        "metrics.manual_value",
        account_id=account_id,
        target=f"{metric}:{'account' if account_id else 'unit'}:{account_id or org_unit_id}:{d0}…{d1}",
        before=None if previous is None else {"value": str(previous)},
        after={"value": str(value), "note": entry.note},
        ip=ip,
    )
    return entry


def manual_history(limit: int = 200) -> list[ManualValue]:
    return list(
        db.session.scalars(
            sa.select(ManualValue).order_by(ManualValue.entered_at.desc(), ManualValue.id.desc()).limit(limit)
        )
    )


# -- evaluation -----------------------------------------------------------------------------------


def _scope_tz(target: Target, tree: Tree) -> str:
    if target.account_id is not None and target.account_id in tree.accounts:
        return tree.accounts[target.account_id].timezone or DEFAULT_TZ
    return DEFAULT_TZ


def _actual(target: Target, tree: Tree, d0: date, d1: date) -> Decimal:
    if target.account_id is not None:
        return Decimal(
            period_values([target.account_id], [target.metric], d0, d1)[target.account_id][target.metric]
        )
    assert target.org_unit_id is not None
    return Decimal(
        unit_values(tree, [target.org_unit_id], [target.metric], d0, d1)[target.org_unit_id][target.metric]
    )


def scope_name(target: Target | ManualValue, tree: Tree) -> str:
    if target.account_id is not None:
        account = tree.accounts.get(target.account_id)
        return account.name if account else f"account {target.account_id}"
    unit = tree.units.get(target.org_unit_id or 0)
    return f"{unit.name} ({unit.kind.value})" if unit else f"unit {target.org_unit_id}"


def shown(metric: str, value: Any) -> str:
    """A figure for the fee derivation: money metrics (kept in fen) in 元, the rest as plain
    numbers — never exponent notation, never fen next to 元."""
    number = Decimal(str(value))
    if metric in REGISTRY and REGISTRY[metric].money:
        if number == number.to_integral_value():
            return f"{yuan(int(number))} 元"
        return f"{fees.plain(number / 100)} 元"
    return fees.plain(number)


def evaluate_target(target: Target, tree: Tree, now: Any = None) -> dict[str, Any]:
    """Attainment over the whole period, pacing (where the figure should be today for the target
    vs where it is) and a straight-line end-of-period forecast."""
    metric = REGISTRY[target.metric]
    today = today_in(_scope_tz(target, tree), now)
    d0, d1 = target.starts_on, target.ends_on
    total_days = (d1 - d0).days + 1
    elapsed = min(max((today - d0).days + 1, 0), total_days)  # today counts as under way
    fraction = Decimal(elapsed) / Decimal(total_days)
    goal = Decimal(target.target_value)
    actual = _actual(target, tree, d0, d1)
    so_far = actual if today >= d1 else _actual(target, tree, d0, today) if today >= d0 else Decimal(0)
    additive = metric.agg == SUM and not metric.manual
    expected = goal * fraction if additive else goal
    forecast = (so_far / fraction if fraction > 0 else Decimal(0)) if additive else so_far
    return {
        "target_id": target.id,
        "metric": target.metric,
        "unit": metric.unit,
        "scope": scope_name(target, tree),
        "account_id": target.account_id,
        "org_unit_id": target.org_unit_id,
        "starts_on": d0.isoformat(),
        "ends_on": d1.isoformat(),
        "target": fees.plain(goal),
        "weight": fees.plain(target.weight),
        "actual": str(actual),
        "attainment": str(fees.ratio(actual / goal)),
        "elapsed": str(fees.ratio(fraction)),
        "actual_to_date": str(so_far),
        "expected_to_date": str(fees.ratio(expected)),
        "pacing": str(fees.ratio(so_far / expected)) if expected > 0 else None,
        "forecast": str(fees.ratio(forecast)),
        "forecast_attainment": str(fees.ratio(forecast / goal)),
    }


def evaluate_period(contract: Contract, period: ContractPeriod, now: Any = None) -> dict[str, Any]:
    """The period's targets, attainment and fee (to date, and as forecast), from the rollups."""
    tree = org_tree()
    targets = [evaluate_target(t, tree, now) for t in targets_of(contract.id, period)]
    periods = len(periods_of(contract.id))
    weighted = fees.weighted_attainment([(Decimal(t["attainment"]), Decimal(t["weight"])) for t in targets])
    forecast = fees.weighted_attainment(
        [(Decimal(t["forecast_attainment"]), Decimal(t["weight"])) for t in targets]
    )
    common: dict[str, Any] = {
        "price_fen": contract.price_fen,
        "fixed_share": Decimal(contract.fixed_share),
        "periods": periods,
        "seq": period.seq,
        "formula": contract.formula.value,
        "params": contract.formula_params,
    }
    fee = fees.period_fee(attainment=weighted, **common)
    attainment_lines = [
        {
            "item": f"{t['metric']} · {t['scope']} · {t['starts_on']}…{t['ends_on']}",
            "formula": f"{shown(t['metric'], t['actual'])} / {shown(t['metric'], t['target'])} "
            f"(weight {t['weight']})",
            "ratio": t["attainment"],
        }
        for t in targets
    ]
    fee["lines"] = fee["lines"][:5] + attainment_lines + fee["lines"][5:]
    return {
        "contract": describe_contract(contract),
        "period": {
            "id": period.id,
            "seq": period.seq,
            "label": period.label,
            "starts_on": period.starts_on.isoformat(),
            "ends_on": period.ends_on.isoformat(),
            "status": period.status.value,
        },
        "targets": targets,
        "weighted_attainment": str(weighted),
        "fee": fee,
        "forecast_weighted_attainment": str(forecast),
        "forecast_fee_fen": fees.period_fee(attainment=forecast, **common)["fee_fen"],
        "definitions": DEFINITIONS_VERSION,
        "computed_at": utcnow().isoformat(),
    }


def adjustments_of(period_id: int) -> list[PeriodAdjustment]:
    return list(
        db.session.scalars(
            sa.select(PeriodAdjustment)
            .where(PeriodAdjustment.period_id == period_id)
            .order_by(PeriodAdjustment.id)
        )
    )


def period_report(contract: Contract, period: ContractPeriod, now: Any = None) -> dict[str, Any]:
    """A closed period: its frozen snapshot plus adjustments (never recomputed); an open one: live."""
    report = (
        dict(period.snapshot)
        if period.status is PeriodStatus.closed and period.snapshot
        else evaluate_period(contract, period, now)
    )
    adjustments = adjustments_of(period.id)
    report["period"] = {**report["period"], "status": period.status.value}
    report["frozen"] = period.status is PeriodStatus.closed
    report["closed_at"] = period.closed_at.isoformat() if period.closed_at else None
    report["adjustments"] = [
        {
            "id": a.id,
            "amount_fen": a.amount_fen,
            "reason": a.reason,
            "created_by": a.created_by,
            "created_at": a.created_at.isoformat(),
        }
        for a in adjustments
    ]
    report["total_due_fen"] = report["fee"]["fee_fen"] + sum(a.amount_fen for a in adjustments)
    # Which metric definitions the figures used: frozen with a closed period (periods closed before
    # definitions were versioned are version 1), the current ones for an open period.
    version = (period.definitions or 1) if report["frozen"] else DEFINITIONS_VERSION
    report["definitions"] = version
    report["definitions_text"] = DEFINITIONS.get(version, "")
    return report


def close_period(
    actor_id: int | None, contract: Contract, period: ContractPeriod, ip: str | None = None, now: Any = None
) -> ContractPeriod:
    """Freeze the period's figures and fee. Only after the period has ended (in Beijing time)."""
    if period.status is PeriodStatus.closed:
        raise ConflictError("this period is already closed")
    if today_in(DEFAULT_TZ, now) <= period.ends_on:
        raise ConflictError("a period can be closed only after it has ended")
    snapshot = evaluate_period(contract, period, now)
    snapshot["period"]["status"] = PeriodStatus.closed.value
    # Conditional transition: two admins closing at once freeze one snapshot.
    done = execute_dml(
        sa.update(ContractPeriod)
        .where(ContractPeriod.id == period.id, ContractPeriod.status == PeriodStatus.open)
        .values(
            status=PeriodStatus.closed,
            snapshot=snapshot,
            fee_fen=snapshot["fee"]["fee_fen"],
            definitions=snapshot["definitions"],
            closed_at=utcnow(),
            closed_by=actor_id,
        )
    ).rowcount
    if not done:
        raise ConflictError("this period is already closed")
    audit(
        actor_id,
        "metrics.period_close",
        target=f"contract:{contract.id}/period:{period.id}",
        after={"fee_fen": snapshot["fee"]["fee_fen"], "weighted_attainment": snapshot["weighted_attainment"]},
        ip=ip,
    )
    db.session.flush()
    db.session.refresh(period)
    return period


def add_adjustment(
    actor_id: int | None,
    contract: Contract,
    period: ContractPeriod,
    amount_fen: int,
    reason: str,
    ip: str | None = None,
) -> PeriodAdjustment:
    if period.status is not PeriodStatus.closed:
        raise ConflictError(
            "an open period is corrected by fixing its figures; adjustments are for closed periods"
        )
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInputError("an adjustment needs its reason", fields={"reason": ["required"]})
    if not amount_fen:
        raise InvalidInputError("an adjustment of zero changes nothing", fields={"amount_fen": ["invalid"]})
    entry = PeriodAdjustment(
        period_id=period.id,
        amount_fen=int(amount_fen),
        reason=reason[:500],
        created_by=actor_id,
        created_at=utcnow(),
    )
    db.session.add(entry)
    db.session.flush()
    audit(
        actor_id,
        "metrics.period_adjust",
        target=f"contract:{contract.id}/period:{period.id}",
        after={"amount_fen": entry.amount_fen, "reason": entry.reason},
        ip=ip,
    )
    return entry
