"""Metrics console pages: the dashboard, per-account and per-unit pages, rankings, the monthly
report (prints to PDF), contracts, targets, manual figures and period closing.

Thin: parse → authorise → call metrics services → commit → render. Reading needs METRICS on every
account a figure covers; contracts, targets, manual figures and closing are for administrators.
Every table of a page downloads as CSV or XLSX with ``?export=<table>&format=csv|xlsx``.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from accounts import access as acl
from accounts.front_doors.console import client_ip, console_blueprint, current_access, login_required
from metrics import charts, contracts, datacube, exports, fees, queries, reports
from metrics.models import Contract, ContractPeriod, ManualValue, Target
from metrics.registry import REGISTRY
from metrics.rollups import today_in
from wechat_service.errors import ForbiddenError, InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db

bp = console_blueprint("metrics_console", __name__, "/console/metrics")

Table = tuple[list[str], list[list[Any]]]


@bp.context_processor
def _numbers() -> dict[str, Any]:
    return {"plain": fees.plain}  # Decimals without exponent notation (60, not 6E+1)


def _admin() -> None:
    if not current_access().is_admin:
        raise ForbiddenError("administrators only")


def _day(name: str, default: date) -> date:
    raw = request.values.get(name)
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidInputError("a date, e.g. 2026-11-21", fields={name: ["invalid"]}) from None


def _range(default_days: int = 30) -> tuple[date, date]:
    today = today_in("Asia/Shanghai")
    d1 = _day("to", today)
    d0 = _day("from", d1 - timedelta(days=default_days - 1))
    if d1 < d0 or (d1 - d0).days > 3660:
        raise InvalidInputError("from must be before to, within ten years", fields={"from": ["invalid"]})
    return d0, d1


def _metric_arg(default: str = "follows") -> str:
    key = request.args.get("metric") or default
    if key not in REGISTRY:
        raise InvalidInputError(f"no metric {key}", fields={"metric": ["unknown"]})
    return key


def _export(tables: dict[str, Table], stem: str) -> Response | None:
    name, fmt = request.args.get("export"), request.args.get("format", "csv")
    if not name:
        return None
    if name not in tables or fmt not in exports.FORMATS:
        raise NotFoundError("no such table")
    headers, rows = tables[name]
    return exports.table_response(f"{stem}-{name}", headers, rows, fmt)


def _overview_tables(data: dict[str, Any]) -> dict[str, Table]:
    keys = reports.MONTH_KEYS
    accounts = (
        [
            "account",
            "org unit",
            *[f"today {k}" for k in reports.TODAY_KEYS],
            *[f"month {k}" for k in keys],
            "attainment",
            "pacing",
            "datacube flags",
        ],
        [
            [
                r["account"],
                r["org_unit"],
                *[r["today"].get(k, 0) for k in reports.TODAY_KEYS],
                *[r["month"][k] for k in keys],
                r["attainment"],
                r["pacing"],
                r["datacube_flags"],
            ]
            for r in data["accounts"]
        ],
    )
    units = (
        ["org unit", "kind", "accounts", *[f"month {k}" for k in keys], "attainment", "pacing"],
        [
            [
                u["org_unit"],
                u["kind"],
                u["accounts"],
                *[u["month"][k] for k in keys],
                u["attainment"],
                u["pacing"],
            ]
            for u in data["org_units"]
        ],
    )
    targets = (
        ["contract", "metric", "scope", "from", "to", "target", "actual", "attainment", "pacing", "forecast"],
        [
            [
                t["contract"],
                t["metric"],
                t["scope"],
                t["starts_on"],
                t["ends_on"],
                t["target"],
                t["actual"],
                t["attainment"],
                t["pacing"],
                t["forecast"],
            ]
            for t in data["targets"]
        ],
    )
    return {"accounts": accounts, "org_units": units, "targets": targets}


@bp.get("")
@login_required
def dashboard() -> ResponseReturnValue:
    access = current_access()
    acl.require(access, acl.METRICS)
    data = reports.overview(access)
    metric = _metric_arg()
    level = request.args.get("level", "account")
    if level not in ("account", "city", "province", "group"):
        raise InvalidInputError("level: account, city, province or group", fields={"level": ["invalid"]})
    m0, m1 = (date.fromisoformat(d) for d in data["month"])
    ranking = queries.rankings(access, metric, m0, m1, level)
    tables = _overview_tables(data)
    tables["rankings"] = (["rank", level, metric], [[r["rank"], r["name"], r["value"]] for r in ranking])
    exported = _export(tables, "metrics")
    if exported is not None:
        return exported
    ids = queries.visible_account_ids(access)
    d1 = today_in("Asia/Shanghai")
    d0 = d1 - timedelta(days=29)
    trend = charts.line_chart(
        [(k, queries.daily_series(ids, k, d0, d1)) for k in ("follows", "unfollows")],
        title="Matrix: last 30 days",
    )
    gauges = [charts.gauge(t["attainment"], f"{t['metric']} · {t['scope']}") for t in data["targets"][:12]]
    return render_template(
        "metrics/dashboard.html",
        data=data,
        ranking=ranking,
        metric=metric,
        level=level,
        trend=trend,
        gauges=gauges,
        metrics=REGISTRY,
        fmt=reports.fmt,
    )


def _account_trends(daily: list[dict[str, Any]]) -> list[Markup]:
    """The account page's four line charts (follows, followers, money, activity) over ``daily``."""

    def points(key: str) -> list[tuple[str, Any]]:
        return [(r["day"], r[key]) for r in daily]

    return [
        charts.line_chart(
            [("follows", points("follows")), ("unfollows", points("unfollows"))], title="Follows"
        ),
        charts.line_chart([("followers", points("cumulative_followers"))], title="Followers (ledger)"),
        charts.line_chart(
            [("GMV (fen)", points("gmv_fen")), ("refunds (fen)", points("refunds_fen"))], title="Money"
        ),
        charts.line_chart(
            [("inquiries", points("inquiries")), ("active", points("active_subscribers"))], title="Activity"
        ),
    ]


@bp.get("/accounts/<int:account_id>")
@login_required
def account_page(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.METRICS)
    d0, d1 = _range()
    keys = [
        "follows",
        "unfollows",
        "net_follows",
        "cumulative_followers",
        "active_subscribers",
        "inquiries",
        "orders_created",
        "paid_transactions",
        "gmv_fen",
        "refunds_fen",
        "net_revenue_fen",
        "redemptions",
    ]
    daily = reports.account_daily(account.id, keys, d0, d1)
    summary = queries.period_values(
        [account.id], list(k for k in REGISTRY if not REGISTRY[k].manual), d0, d1
    )[account.id]
    channels = queries.dimension_totals([account.id], "follows_by_channel", d0, d1)
    recon = datacube.results(account.id, d0, d1)
    tree = queries.org_tree()
    targets = [t for t in reports.open_targets(access, tree) if t["account_id"] == account.id]
    tables: dict[str, Table] = {
        "daily": (["day", *keys], [[r["day"], *[r[k] for k in keys]] for r in daily]),
        "summary": (["metric", "unit", "value"], [[k, REGISTRY[k].unit, v] for k, v in summary.items()]),
        "channels": (["channel id", "follows"], [[k, v] for k, v in channels.items()]),
        "reconciliation": (
            ["day", "metric", "ours", "wechat", "difference", "flagged"],
            [[r.day.isoformat(), r.metric, r.ours, r.theirs, r.diff, r.flagged] for r in recon],
        ),
    }
    exported = _export(tables, f"metrics-{account.appid}")
    if exported is not None:
        return exported
    trends = _account_trends(daily)
    gauges = [charts.gauge(t["attainment"], t["metric"]) for t in targets]
    return render_template(
        "metrics/account.html",
        account=account,
        d0=d0,
        d1=d1,
        tables=tables,
        trends=trends,
        gauges=gauges,
        targets=targets,
        summary=summary,
        metrics=REGISTRY,
        fmt=reports.fmt,
    )


@bp.get("/org-units/<int:unit_id>")
@login_required
def unit_page(unit_id: int) -> ResponseReturnValue:
    access = current_access()
    tree = queries.org_tree()
    if unit_id not in tree.units or not queries.can_see_scope(access, tree, unit_id):
        raise NotFoundError("no such org unit")
    unit = tree.units[unit_id]
    d0, d1 = _range()
    keys = reports.MONTH_KEYS
    members = tree.accounts_under(unit_id)
    per_account = queries.period_values(members, keys, d0, d1)
    total = queries.unit_values(tree, [unit_id], keys, d0, d1)[unit_id]
    tables: dict[str, Table] = {
        "accounts": (
            ["account", *keys],
            [[tree.accounts[a].name, *[per_account[a][k] for k in keys]] for a in members],
        ),
    }
    exported = _export(tables, f"metrics-unit-{unit.code}")
    if exported is not None:
        return exported
    trend = charts.line_chart(
        [(k, queries.daily_series(members, k, d0, d1)) for k in ("follows", "unfollows")], title=unit.name
    )
    return render_template(
        "metrics/unit.html",
        unit=unit,
        d0=d0,
        d1=d1,
        tables=tables,
        total=total,
        keys=keys,
        trend=trend,
        path=tree.path(unit_id),
        fmt=reports.fmt,
    )


@bp.get("/report")
@login_required
def month_report() -> ResponseReturnValue:
    access = current_access()
    acl.require(access, acl.METRICS)
    month = request.args.get("month")
    try:
        data = reports.month_report(access, month)
    except ValueError:
        raise InvalidInputError("month: YYYY-MM", fields={"month": ["invalid"]}) from None
    keys = data["keys"]
    tables: dict[str, Table] = {
        "accounts": (["account", *keys], [[r["account"], *[r[k] for k in keys]] for r in data["accounts"]]),
        "org_units": (
            ["org unit", "kind", *keys],
            [[u["org_unit"], u["kind"], *[u[k] for k in keys]] for u in data["org_units"]],
        ),
    }
    exported = _export(tables, f"metrics-report-{data['month']}")
    if exported is not None:
        return exported
    return render_template("metrics/report.html", data=data, metrics=REGISTRY, fmt=reports.fmt)


# -- contracts, targets, manual figures, periods ------------------------------------------------


def _contract(contract_id: int) -> Any:
    contract = contracts.contract_for(contract_id)
    if not reports.contract_readable(current_access(), contract, queries.org_tree()):
        raise NotFoundError("no such contract")
    return contract


def _form_date(name: str) -> date:
    try:
        return date.fromisoformat(request.form.get(name, ""))
    except ValueError:
        raise InvalidInputError("a date, e.g. 2026-01-01", fields={name: ["invalid"]}) from None


def _form_int(name: str, optional: bool = False) -> int | None:
    raw = (request.form.get(name) or "").strip()
    if not raw and optional:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInputError(f"{name}: a whole number", fields={name: ["invalid"]}) from None


def _yuan(name: str) -> int:
    try:
        value = Decimal((request.form.get(name) or "").strip())
    except ArithmeticError:
        raise InvalidInputError("an amount in yuan", fields={name: ["invalid"]}) from None
    fen = value * 100
    if fen != fen.to_integral_value():
        raise InvalidInputError("at most two decimals", fields={name: ["invalid"]})
    return int(fen)


def _fail(exc: ServiceError) -> None:
    db.session.rollback()
    flash(exc.message, "error")


@bp.route("/contracts", methods=["GET", "POST"])
@login_required
def contract_list() -> ResponseReturnValue:
    access = current_access()
    acl.require(access, acl.METRICS)
    if request.method == "POST":
        _admin()
        try:
            contract = contracts.create_contract(
                access.user_id,
                {
                    "customer": request.form.get("customer", ""),
                    "name": request.form.get("name", ""),
                    "org_unit_id": _form_int("org_unit_id", optional=True),
                    "starts_on": _form_date("starts_on"),
                    "ends_on": _form_date("ends_on"),
                    "price_fen": _yuan("price"),
                    "fixed_share": request.form.get("fixed_share", ""),
                    "formula": request.form.get("formula", ""),
                    "formula_params": _params(),
                },
                client_ip(),
            )
            db.session.commit()
        except (ServiceError, ValueError) as exc:
            _fail(exc if isinstance(exc, ServiceError) else InvalidInputError(str(exc)))
        else:
            flash(
                f"Contract {contract.name} created with {len(contracts.periods_of(contract.id))} periods.",
                "success",
            )
            return redirect(url_for("metrics_console.contract_detail", contract_id=contract.id))
    tree = queries.org_tree()
    rows = reports.readable_contracts(access, tree)
    tables: dict[str, Table] = {
        "contracts": (
            ["customer", "name", "from", "to", "price (fen)", "fixed share", "formula"],
            [
                [
                    c.customer,
                    c.name,
                    c.starts_on.isoformat(),
                    c.ends_on.isoformat(),
                    c.price_fen,
                    str(c.fixed_share),
                    c.formula.value,
                ]
                for c in rows
            ],
        )
    }
    exported = _export(tables, "contracts")
    if exported is not None:
        return exported
    return render_template("metrics/contracts.html", contracts=rows, units=tree.units, fmt=reports.fmt)


def _params() -> dict[str, Any]:
    formula = request.form.get("formula", "")
    if formula == "floor":
        return {"floor": request.form.get("floor", "")}
    if formula == "tiered":
        tiers = []
        for line in (request.form.get("tiers") or "").splitlines():
            if ":" in line:
                threshold, pay = line.split(":", 1)
                tiers.append({"min": threshold.strip(), "pay": pay.strip()})
        return {"tiers": tiers}
    return {}


@bp.route("/contracts/<int:contract_id>", methods=["GET", "POST"])
@login_required
def contract_detail(contract_id: int) -> ResponseReturnValue:
    access = current_access()
    contract = _contract(contract_id)
    if request.method == "POST":
        _admin()
        return _add_target(access, contract)
    tree = queries.org_tree()
    periods = contracts.periods_of(contract.id)
    targets = contracts.targets_of(contract.id)
    tables = _contract_tables(targets, periods, tree)
    exported = _export(tables, f"contract-{contract.id}")
    if exported is not None:
        return exported
    return render_template(
        "metrics/contract.html",
        contract=contract,
        periods=periods,
        targets=targets,
        tree=tree,
        scope_name=contracts.scope_name,
        metrics=REGISTRY,
        fmt=reports.fmt,
        description=contracts.describe_contract(contract),
    )


def _add_target(access: acl.Access, contract: Contract) -> ResponseReturnValue:
    """The contract page's form: add a target for an account or an org unit, back to the page."""
    scope = request.form.get("scope", "")
    try:
        kind, _, raw = scope.partition(":")
        scope_id = int(raw) if raw.isdigit() else None
        target = contracts.add_target(
            access.user_id,
            contract,
            {
                "metric": request.form.get("metric", ""),
                "account_id": scope_id if kind == "account" else None,
                "org_unit_id": scope_id if kind == "unit" else None,
                "starts_on": _form_date("starts_on"),
                "ends_on": _form_date("ends_on"),
                "target_value": request.form.get("target_value", ""),
                "weight": request.form.get("weight") or "1",
            },
            client_ip(),
        )
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
    else:
        flash(f"Target {target.metric} added.", "success")
    return redirect(url_for("metrics_console.contract_detail", contract_id=contract.id))


def _contract_tables(
    targets: list[Target], periods: list[ContractPeriod], tree: queries.Tree
) -> dict[str, Table]:
    """The contract page's tables: its targets and its periods."""
    return {
        "targets": (
            ["metric", "scope", "from", "to", "target", "weight"],
            [
                [
                    t.metric,
                    contracts.scope_name(t, tree),
                    t.starts_on.isoformat(),
                    t.ends_on.isoformat(),
                    fees.plain(t.target_value),
                    fees.plain(t.weight),
                ]
                for t in targets
            ],
        ),
        "periods": (
            ["period", "from", "to", "status", "fee (fen)"],
            [
                [p.label, p.starts_on.isoformat(), p.ends_on.isoformat(), p.status.value, p.fee_fen]
                for p in periods
            ],
        ),
    }


@bp.route("/contracts/<int:contract_id>/periods/<int:period_id>", methods=["GET", "POST"])
@login_required
def period_detail(contract_id: int, period_id: int) -> ResponseReturnValue:
    access = current_access()
    contract = _contract(contract_id)
    period = contracts.period_for(contract.id, period_id)
    if request.method == "POST":
        _admin()
        return _close_or_adjust(access, contract, period)
    report = contracts.period_report(contract, period)
    tables = _period_tables(report)
    exported = _export(tables, f"contract-{contract.id}-period-{period.seq}")
    if exported is not None:
        return exported
    gauges = [charts.gauge(t["attainment"], f"{t['metric']} · {t['scope']}") for t in report["targets"]]
    return render_template(
        "metrics/period.html",
        contract=contract,
        period=period,
        report=report,
        gauges=gauges,
        fmt=reports.fmt,
        can_close=access.is_admin
        and period.status.value == "open"
        and period.ends_on < today_in("Asia/Shanghai"),
    )


def _close_or_adjust(access: acl.Access, contract: Contract, period: ContractPeriod) -> ResponseReturnValue:
    """The period page's forms: close the period, or record an adjustment; back to the page."""
    try:
        if request.form.get("action") == "close":
            contracts.close_period(access.user_id, contract, period, client_ip())
            message = "Period closed: its figures and fee are frozen."
        else:
            contracts.add_adjustment(
                access.user_id,
                contract,
                period,
                _yuan("amount"),
                request.form.get("reason", ""),
                client_ip(),
            )
            message = "Adjustment recorded."
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
    else:
        flash(message, "success")
    return redirect(url_for("metrics_console.period_detail", contract_id=contract.id, period_id=period.id))


def _period_tables(report: dict[str, Any]) -> dict[str, Table]:
    """The period page's tables: the fee's derivation, the targets' attainment, the adjustments."""
    return {
        "derivation": (
            ["item", "formula", "fen", "ratio"],
            [
                [line["item"], line.get("formula", ""), line.get("fen"), line.get("ratio")]
                for line in report["fee"]["lines"]
            ],
        ),
        "targets": (
            [
                "metric",
                "scope",
                "from",
                "to",
                "target",
                "weight",
                "actual",
                "attainment",
                "pacing",
                "forecast",
            ],
            [
                [
                    t["metric"],
                    t["scope"],
                    t["starts_on"],
                    t["ends_on"],
                    t["target"],
                    t["weight"],
                    t["actual"],
                    t["attainment"],
                    t["pacing"],
                    t["forecast"],
                ]
                for t in report["targets"]
            ],
        ),
        "adjustments": (
            ["amount (fen)", "reason", "at"],
            [[a["amount_fen"], a["reason"], a["created_at"]] for a in report["adjustments"]],
        ),
    }


@bp.route("/manual", methods=["GET", "POST"])
@login_required
def manual_values() -> ResponseReturnValue:
    access = current_access()
    acl.require(access, acl.METRICS)
    tree = queries.org_tree()
    if request.method == "POST":
        _admin()
        return _enter_manual(access)
    visible = set(queries.visible_account_ids(access))
    units = set(queries.visible_units(access, tree))
    history = [m for m in contracts.manual_history() if (m.account_id in visible) or (m.org_unit_id in units)]
    tables = _manual_tables(history, tree)
    exported = _export(tables, "manual-figures")
    if exported is not None:
        return exported
    manual_keys = [k for k, m in REGISTRY.items() if m.manual]
    return render_template(
        "metrics/manual.html",
        history=history,
        tree=tree,
        manual_keys=manual_keys,
        scope_name=contracts.scope_name,
        is_admin=access.is_admin,
    )


def _enter_manual(access: acl.Access) -> ResponseReturnValue:
    """The manual figures form: record a figure for an account or an org unit, back to the page."""
    scope = request.form.get("scope", "")
    kind, _, raw = scope.partition(":")
    scope_id = int(raw) if raw.isdigit() else None
    try:
        contracts.enter_manual(
            access.user_id,
            {
                "metric": request.form.get("metric", ""),
                "account_id": scope_id if kind == "account" else None,
                "org_unit_id": scope_id if kind == "unit" else None,
                "starts_on": _form_date("starts_on"),
                "ends_on": _form_date("ends_on"),
                "value": request.form.get("value", ""),
                "note": request.form.get("note", ""),
            },
            client_ip(),
        )
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
    else:
        flash("Figure recorded.", "success")
    return redirect(url_for("metrics_console.manual_values"))


def _manual_tables(history: list[ManualValue], tree: queries.Tree) -> dict[str, Table]:
    """The manual figures page's table: each figure with its scope and who entered it."""
    return {
        "manual": (
            ["metric", "scope", "from", "to", "value", "note", "entered by", "entered at"],
            [
                [
                    m.metric,
                    contracts.scope_name(m, tree),
                    m.starts_on.isoformat(),
                    m.ends_on.isoformat(),
                    str(m.value),
                    m.note,
                    m.entered_by,
                    m.entered_at.isoformat(),
                ]
                for m in history
            ],
        )
    }
