"""What the dashboard, the monthly report, the exports and the API show — assembled from the
rollups (metrics.queries) and the contracts, already scoped to what the user may see."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from accounts.access import METRICS, Access
from metrics import contracts, datacube, queries
from metrics.fees import weighted_attainment
from metrics.models import Contract, PeriodStatus
from metrics.queries import Tree
from metrics.registry import DEFINITIONS, DEFINITIONS_VERSION, REGISTRY
from metrics.rollups import today_in

TODAY_KEYS = ["follows", "unfollows", "net_follows"]
MONTH_KEYS = [
    "follows",
    "net_follows",
    "cumulative_followers",
    "active_subscribers",
    "inquiries",
    "paid_transactions",
    "gmv_fen",
    "net_revenue_fen",
    "campaign_sends",
    "campaign_deliveries",
    "campaign_clicks",
    "campaign_conversions",
    "campaign_revenue_fen",
]
REPORT_KEYS = [
    "follows",
    "unfollows",
    "net_follows",
    "new_followers",
    "re_follows",
    "qr_follows",
    "cumulative_followers",
    "active_subscribers",
    "messages",
    "menu_clicks",
    "inquiries",
    "phones_bound",
    "orders_created",
    "paid_transactions",
    "gmv_fen",
    "refunds_fen",
    "net_revenue_fen",
    "redemptions",
]


def fmt(key: str, value: Any) -> str:
    """For display: money in yuan with two decimals, everything else as is."""
    if value is None:
        return "—"
    if REGISTRY.get(key) is not None and REGISTRY[key].money:
        return f"{Decimal(int(value)) / 100:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def contract_readable(access: Access, contract: Contract, tree: Tree) -> bool:
    """Contracts are money for a whole part of the matrix: readable by whom sees all of it."""
    return queries.can_see_scope(access, tree, contract.org_unit_id)


def readable_contracts(access: Access, tree: Tree) -> list[Contract]:
    return [c for c in contracts.contracts() if contract_readable(access, c, tree)]


def open_targets(access: Access, tree: Tree, now: Any = None) -> list[dict[str, Any]]:
    """Targets of the open period under way today in every readable contract, evaluated."""
    out = []
    for contract in readable_contracts(access, tree):
        for period in contracts.periods_of(contract.id):
            today = today_in("Asia/Shanghai", now)
            if period.status is PeriodStatus.open and period.starts_on <= today <= period.ends_on:
                for target in contracts.targets_of(contract.id, period):
                    if target.starts_on <= today <= target.ends_on:
                        row = contracts.evaluate_target(target, tree, now)
                        row["contract"] = contract.name
                        out.append(row)
    return out


def overview(access: Access, now: Any = None) -> dict[str, Any]:
    """The matrix overview: every visible account and org unit — today, this month, targets."""
    tree = queries.org_tree()
    ids = queries.visible_account_ids(access)
    today = today_in("Asia/Shanghai", now)
    m0, m1 = queries.month_bounds(None, today)
    targets = open_targets(access, tree, now)
    by_account: dict[int, list[dict[str, Any]]] = {}
    by_unit: dict[int, list[dict[str, Any]]] = {}
    for t in targets:
        if t["account_id"]:
            by_account.setdefault(t["account_id"], []).append(t)
        else:
            by_unit.setdefault(t["org_unit_id"], []).append(t)
    flagged = datacube.flagged_counts(ids) if ids else {}
    rows = []
    # "Today" is each account's own day.
    days: dict[date, list[int]] = {}
    for aid in ids:
        days.setdefault(today_in(tree.accounts[aid].timezone, now), []).append(aid)
    today_values: dict[int, dict[str, Any]] = {}
    for day, members in days.items():
        today_values.update(queries.period_values(members, TODAY_KEYS, day, day))
    month = queries.period_values(ids, MONTH_KEYS, m0, m1)
    for aid in ids:
        account = tree.accounts[aid]
        rows.append(
            {
                "account_id": aid,
                "account": account.name,
                "org_unit": " / ".join(u.name for u in tree.path(account.org_unit_id)),
                "today": today_values.get(aid, {}),
                "month": month[aid],
                **_attainment(by_account.get(aid, [])),
                "datacube_flags": flagged.get(aid, 0),
            }
        )
    units = []
    visible_units = queries.visible_units(access, tree)
    unit_month = queries.unit_values(tree, visible_units, MONTH_KEYS, m0, m1) if visible_units else {}
    for uid in visible_units:
        unit = tree.units[uid]
        units.append(
            {
                "org_unit_id": uid,
                "org_unit": unit.name,
                "kind": unit.kind.value,
                "accounts": len(tree.accounts_under(uid)),
                "month": unit_month[uid],
                **_attainment(by_unit.get(uid, [])),
            }
        )
    return {
        "day": today.isoformat(),
        "month": [m0.isoformat(), m1.isoformat()],
        "accounts": rows,
        "org_units": units,
        "targets": targets,
    }


def _attainment(targets: list[dict[str, Any]]) -> dict[str, Any]:
    if not targets:
        return {"attainment": None, "pacing": None}

    att = weighted_attainment([(Decimal(t["attainment"]), Decimal(t["weight"])) for t in targets])
    paced = [(Decimal(t["pacing"]), Decimal(t["weight"])) for t in targets if t["pacing"] is not None]
    return {"attainment": str(att), "pacing": str(weighted_attainment(paced)) if paced else None}


def account_daily(account_id: int, keys: list[str], d0: date, d1: date) -> list[dict[str, Any]]:
    series = {k: dict(queries.daily_series([account_id], k, d0, d1)) for k in keys}
    return [
        {"day": (d0 + timedelta(days=i)).isoformat(), **{k: series[k][d0 + timedelta(days=i)] for k in keys}}
        for i in range(queries.days_in(d0, d1))
    ]


def month_report(access: Access, month: str | None, now: Any = None) -> dict[str, Any]:
    tree = queries.org_tree()
    today = today_in("Asia/Shanghai", now)
    m0, m1 = queries.month_bounds(month, today)
    ids = queries.visible_account_ids(access)
    per_account = queries.period_values(ids, REPORT_KEYS, m0, m1)
    units = queries.visible_units(access, tree)
    per_unit = queries.unit_values(tree, units, REPORT_KEYS, m0, m1) if units else {}
    totals = {k: sum((per_account[a][k] for a in ids), start=0) for k in REPORT_KEYS}
    notes = []
    if totals["net_revenue_fen"] < 0:
        notes.append(
            "Net revenue is negative: refunds count on the day they succeeded, and this month's "
            "refunds (of sales in earlier months too) exceed this month's payments."
        )
    return {
        "definitions": DEFINITIONS_VERSION,
        "definitions_text": DEFINITIONS[DEFINITIONS_VERSION],
        "notes": notes,
        "month": m0.strftime("%Y-%m"),
        "from": m0.isoformat(),
        "to": m1.isoformat(),
        "keys": REPORT_KEYS,
        "totals": totals,
        "accounts": [{"account_id": a, "account": tree.accounts[a].name, **per_account[a]} for a in ids],
        "org_units": [
            {
                "org_unit_id": u,
                "org_unit": tree.units[u].name,
                "kind": tree.units[u].kind.value,
                **per_unit[u],
            }
            for u in units
        ],
        "targets": [t for t in open_targets(access, tree, now)],
    }


def can_read_account(access: Access, account_id: int) -> bool:
    return access.can(METRICS, account_id)
