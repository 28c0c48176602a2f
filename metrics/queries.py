"""The read side: figures over periods, series, the org tree, rankings — from the rollups only
(never from the ledgers), so dashboards cost the same however long the history is."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast

import sqlalchemy as sa

from accounts import access as acl
from accounts.access import Access
from accounts.models import Account, OrgUnit
from metrics.models import ManualValue, MetricActiveDay, MetricDaily
from metrics.registry import AVG, DISTINCT, LAST, REGISTRY, SUM
from wechat_service.extensions import db

Number = int | Decimal
CENT = Decimal("0.01")


def days_in(d0: date, d1: date) -> int:
    return (d1 - d0).days + 1


def _avg(total: int, days: int) -> Decimal:
    return (Decimal(total) / Decimal(days)).quantize(CENT, ROUND_HALF_UP)


def period_values(
    account_ids: Sequence[int], keys: Iterable[str], d0: date, d1: date
) -> dict[int, dict[str, Number]]:
    """{account: {metric: value over [d0, d1]}}: totals for sum metrics, the mean per day for avg
    metrics, distinct subscribers over the whole period for distinct metrics (active subscribers,
    from metric_active_days), the value at the end of the period for last metrics (carried
    forward), the latest manual entry for the exact period for manual metrics. Missing figures
    are 0."""
    ids = list(account_ids)
    keys = list(keys)
    out: dict[int, dict[str, Number]] = {a: dict.fromkeys(keys, 0) for a in ids}
    if not ids or not keys:
        return out
    D = MetricDaily
    additive = [k for k in keys if REGISTRY[k].agg in (SUM, AVG) and not REGISTRY[k].manual]
    if additive:
        rows = db.session.execute(
            sa.select(D.account_id, D.metric, sa.func.sum(D.value))
            .where(D.account_id.in_(ids), D.metric.in_(additive), D.dim == "", D.day >= d0, D.day <= d1)
            .group_by(D.account_id, D.metric)
        )
        for aid, key, total in rows:
            total = int(total or 0)
            out[aid][key] = _avg(total, days_in(d0, d1)) if REGISTRY[key].agg == AVG else total
    if any(REGISTRY[k].agg == DISTINCT for k in keys):
        A = MetricActiveDay
        counted = dict(
            db.session.execute(
                sa.select(A.account_id, sa.func.count(sa.distinct(A.subscriber_id)))
                .where(A.account_id.in_(ids), A.day >= d0, A.day <= d1)
                .group_by(A.account_id)
            ).all()
        )
        for key in (k for k in keys if REGISTRY[k].agg == DISTINCT):
            for aid in ids:
                out[aid][key] = int(counted.get(aid, 0))
    for key in (k for k in keys if REGISTRY[k].agg == LAST and not REGISTRY[k].manual):
        latest = (
            sa.select(D.account_id, sa.func.max(D.day).label("day"))
            .where(D.account_id.in_(ids), D.metric == key, D.dim == "", D.day <= d1)
            .group_by(D.account_id)
            .subquery()
        )
        for aid, value in db.session.execute(
            sa.select(D.account_id, D.value)
            .join(latest, sa.and_(D.account_id == latest.c.account_id, D.day == latest.c.day))
            .where(D.metric == key, D.dim == "")
        ):
            out[aid][key] = int(value)
    for key in (k for k in keys if REGISTRY[k].manual):
        for aid, manual in manual_values(key, d0, d1, account_ids=ids).items():
            out[aid][key] = manual
    return out


def manual_values(
    key: str, d0: date, d1: date, *, account_ids: Sequence[int] = (), org_unit_ids: Sequence[int] = ()
) -> dict[int, Decimal]:
    """The latest entry of a manual metric for exactly [d0, d1], per account (or per org unit)."""
    M = ManualValue
    col = M.account_id if account_ids else M.org_unit_id
    ids = list(account_ids or org_unit_ids)
    if not ids:
        return {}
    rows = db.session.execute(
        sa.select(col, M.value)
        .where(M.metric == key, col.in_(ids), M.starts_on == d0, M.ends_on == d1)
        .order_by(M.entered_at, M.id)
    )
    # later rows overwrite earlier ones; scope is never NULL (it is in ids)
    return {cast(int, scope): Decimal(value) for scope, value in rows}


def daily_series(account_ids: Sequence[int], key: str, d0: date, d1: date) -> list[tuple[date, Number]]:
    """Per day over [d0, d1], summed over the accounts; last metrics carry their value forward."""
    D = MetricDaily
    ids = list(account_ids)
    metric = REGISTRY[key]
    by_day: dict[date, int] = defaultdict(int)
    if metric.agg == LAST:
        # Each account's value on each day = its latest row on or before that day.
        start = period_values(ids, [key], d0 - timedelta(days=1), d0 - timedelta(days=1)) if ids else {}
        current = {a: int(v[key]) for a, v in start.items()}
        changes: dict[date, dict[int, int]] = defaultdict(dict)
        for aid, day, value in db.session.execute(
            sa.select(D.account_id, D.day, D.value).where(
                D.account_id.in_(ids), D.metric == key, D.dim == "", D.day >= d0, D.day <= d1
            )
        ):
            changes[day][aid] = int(value)
        series: list[tuple[date, Number]] = []
        for i in range(days_in(d0, d1)):
            day = d0 + timedelta(days=i)
            current.update(changes.get(day, {}))
            series.append((day, sum(current.values())))
        return series
    for day, total in db.session.execute(
        sa.select(D.day, sa.func.sum(D.value))
        .where(D.account_id.in_(ids), D.metric == key, D.dim == "", D.day >= d0, D.day <= d1)
        .group_by(D.day)
    ):
        by_day[day] = int(total)
    return [(d0 + timedelta(days=i), by_day.get(d0 + timedelta(days=i), 0)) for i in range(days_in(d0, d1))]


def dimension_totals(account_ids: Sequence[int], key: str, d0: date, d1: date) -> dict[str, int]:
    D = MetricDaily
    rows = db.session.execute(
        sa.select(D.dim, sa.func.sum(D.value))
        .where(D.account_id.in_(list(account_ids)), D.metric == key, D.dim != "", D.day >= d0, D.day <= d1)
        .group_by(D.dim)
        .order_by(sa.func.sum(D.value).desc())
    )
    return {dim: int(total) for dim, total in rows}


# -- the org tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountInfo:
    """What the tree needs of an account (loading Account rows would decrypt every secret)."""

    id: int
    name: str
    appid: str
    timezone: str
    org_unit_id: int | None


@dataclass
class Tree:
    units: dict[int, OrgUnit]
    children: dict[int | None, list[int]]
    accounts: dict[int, AccountInfo]
    direct: dict[int | None, list[int]] = field(default_factory=dict)  # unit -> its own accounts

    def accounts_under(self, unit_id: int | None) -> list[int]:
        """Every account of the unit and of the units below it (None: the whole matrix)."""
        if unit_id is None:
            return sorted(self.accounts)
        out, stack = [], [unit_id]
        while stack:
            uid = stack.pop()
            out.extend(self.direct.get(uid, []))
            stack.extend(self.children.get(uid, []))
        return sorted(out)

    def path(self, unit_id: int | None) -> list[OrgUnit]:
        out = []
        while unit_id is not None and unit_id in self.units:
            out.append(self.units[unit_id])
            unit_id = self.units[unit_id].parent_id
        return list(reversed(out))


def org_tree() -> Tree:
    units = {u.id: u for u in db.session.scalars(sa.select(OrgUnit).order_by(OrgUnit.id))}
    children: dict[int | None, list[int]] = defaultdict(list)
    for unit in units.values():
        children[unit.parent_id].append(unit.id)
    accounts = {
        row.id: AccountInfo(row.id, row.name, row.appid, row.timezone or "Asia/Shanghai", row.org_unit_id)
        for row in db.session.execute(
            sa.select(
                Account.id, Account.name, Account.appid, Account.timezone, Account.org_unit_id
            ).order_by(Account.id)
        )
    }
    direct: dict[int | None, list[int]] = defaultdict(list)
    for account in accounts.values():
        direct[account.org_unit_id].append(account.id)
    return Tree(units, children, accounts, direct)


def unit_values(
    tree: Tree, unit_ids: Iterable[int], keys: Sequence[str], d0: date, d1: date
) -> dict[int, dict[str, Number]]:
    """Each org unit's figures = the sum of its accounts' figures (manual metrics: the unit's own entry)."""
    unit_ids = list(unit_ids)
    needed = sorted({a for u in unit_ids for a in tree.accounts_under(u)})
    stored = [k for k in keys if not REGISTRY[k].manual]
    per_account = period_values(needed, stored, d0, d1)
    out: dict[int, dict[str, Number]] = {}
    for uid in unit_ids:
        under = tree.accounts_under(uid)
        out[uid] = {k: sum((per_account[a][k] for a in under), start=0) for k in stored}
    for key in (k for k in keys if REGISTRY[k].manual):
        found = manual_values(key, d0, d1, org_unit_ids=unit_ids)
        for uid in unit_ids:
            out[uid][key] = found.get(uid, 0)
    return out


# -- who may see which aggregate ------------------------------------------------------------------


def visible_account_ids(access: Access) -> list[int]:
    ids = access.account_ids(acl.METRICS)
    if ids is None:
        return [a for (a,) in db.session.execute(sa.select(Account.id).order_by(Account.id))]
    return ids


def can_see_scope(access: Access, tree: Tree, unit_id: int | None) -> bool:
    """An aggregate over accounts is shown only to whom may see every account in it."""
    if access.is_admin:
        return True
    under = tree.accounts_under(unit_id)
    return bool(under) and all(access.can(acl.METRICS, a) for a in under)


def visible_units(access: Access, tree: Tree) -> list[int]:
    return [u for u in tree.units if can_see_scope(access, tree, u)]


def rankings(
    access: Access, key: str, d0: date, d1: date, level: str = "account", tree: Tree | None = None
) -> list[dict[str, Any]]:
    """Accounts (or org units of one kind: city, province, group) by a metric over [d0, d1],
    best first; ties share a rank. Only what the user may see is ranked."""
    tree = tree or org_tree()
    if level == "account":
        ids = visible_account_ids(access)
        values = period_values(ids, [key], d0, d1)
        rows: list[dict[str, Any]] = [
            {"id": a, "name": tree.accounts[a].name, "value": values[a][key]}
            for a in ids
            if a in tree.accounts
        ]
    else:
        units = [u for u in visible_units(access, tree) if tree.units[u].kind.value == level]
        values = unit_values(tree, units, [key], d0, d1)
        rows = [{"id": u, "name": tree.units[u].name, "value": values[u][key]} for u in units]
    rows.sort(key=lambda r: (-r["value"], r["name"]))
    rank, previous = 0, None
    for i, row in enumerate(rows, start=1):
        if row["value"] != previous:
            rank, previous = i, row["value"]
        row["rank"] = rank
    return rows


def month_bounds(month: str | None, today: date) -> tuple[date, date]:
    """'2026-03' → (2026-03-01, 2026-03-31); None → the current month."""
    if month:
        year, mon = (int(x) for x in month.split("-", 1))
        first = date(year, mon, 1)
    else:
        first = today.replace(day=1)
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first, nxt - timedelta(days=1)
