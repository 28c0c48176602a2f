"""/api/v1/metrics/…: every figure of the metrics console as JSON, in the OpenAPI document.
Same roles and scoping as the pages (METRICS on every account a figure covers; contracts,
targets, manual figures and closing for administrators)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema
from werkzeug.exceptions import Unauthorized

from accounts import access as acl
from accounts.front_doors.console import check_url_ids, client_ip, current_access, load_user
from accounts.schemas import StrictSchema
from metrics import contracts, datacube, queries, reports
from metrics.registry import REGISTRY, as_dicts
from metrics.rollups import today_in
from wechat_service.errors import ForbiddenError, NotFoundError
from wechat_service.extensions import ApiBlueprint as Blueprint
from wechat_service.extensions import db
from wechat_service.fields import NOT_BLANK, Day, Month, Text, decimal

blp = Blueprint(
    "metrics_api", __name__, url_prefix="/api/v1/metrics", description="Metrics, targets and fees"
)

MAX_DAYS = 731  # two years of days: a day-by-day answer stays a fraction of a second
MAX_CONTRACT_DAYS = 3660
ID = validate.Range(min=1, max=2**31 - 1)  # the id columns' range


@blp.before_request
def _authorise_first() -> None:
    if load_user() is None:
        raise Unauthorized("sign in to the console first")
    check_url_ids()
    args = request.view_args or {}
    if args.get("account_id") is not None:
        acl.account_for(current_access(), args["account_id"], acl.METRICS)
    if args.get("contract_id") is not None:
        _contract(args["contract_id"])
    if args.get("unit_id") is not None:
        tree = queries.org_tree()
        if args["unit_id"] not in tree.units or not queries.can_see_scope(
            current_access(), tree, args["unit_id"]
        ):
            raise NotFoundError("no such org unit")
    # Every write here (contracts, targets, closing, adjustments, manual figures) is for administrators.
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        _admin()


def _admin() -> None:
    if not current_access().is_admin:
        raise ForbiddenError("administrators only")


class RangeSchema(StrictSchema):
    """``from``/``to`` (default: the 30 days to today) span at most 731 days."""

    from_ = Day(data_key="from", load_default=None)
    to = Day(load_default=None)
    metric = fields.List(
        Text(validate=validate.OneOf(list(REGISTRY))), load_default=list, validate=validate.Length(max=50)
    )
    level = Text(load_default="account", validate=validate.OneOf(["account", "city", "province", "group"]))
    month = Month(load_default=None)

    @validates_schema
    def _order(self, data: dict[str, Any], **_: Any) -> None:
        # The range as _range will run it (a missing end defaults to today), bounded here.
        d0, d1 = _range(data)
        if d1 < d0:
            raise ValidationError("from must be on or before to", "from")
        if (d1 - d0).days >= MAX_DAYS:
            raise ValidationError(f"at most {MAX_DAYS} days from from to to", "from")


def _range(query: dict[str, Any], days: int = 30) -> tuple[date, date]:
    d1 = query.get("to") or today_in("Asia/Shanghai")
    return query.get("from_") or d1 - timedelta(days=days - 1), d1


class MetricSchema(Schema):
    key = fields.String()
    unit = fields.String()
    description = fields.String()
    aggregation = fields.String()
    kind = fields.String()
    ledger = fields.String()
    derived_from = fields.Dict(keys=fields.String(), values=fields.Integer())
    has_dimensions = fields.Boolean()


class FiguresSchema(Schema):
    """Figures keyed by metric (money in integer fen; ratios, averages and scores as exact decimal
    strings), assembled by metrics.reports / metrics.contracts and passed through as they are."""

    class Meta:
        unknown = INCLUDE  # documented as an open object

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        return obj


BIG = Decimal("99999999999999")  # NUMERIC(18, 4)


def _ends_after(data: dict[str, Any], *, strictly: bool, max_days: int | None = None) -> None:
    d0, d1 = data.get("starts_on"), data.get("ends_on")
    if d0 and d1 and (d1 <= d0 if strictly else d1 < d0):
        raise ValidationError(
            "must be after starts_on" if strictly else "must not be before starts_on", "ends_on"
        )
    if d0 and d1 and max_days and (d1 - d0).days > max_days:
        raise ValidationError(f"at most {max_days} days after starts_on", "ends_on")


class TierSchema(StrictSchema):
    min = decimal(0, 100, required=True)
    pay = decimal(0, 1, required=True)


class FormulaParamsSchema(StrictSchema):
    """``floor`` for the floor formula, ``tiers`` for tiered; linear takes none."""

    floor = decimal(0, 1)
    tiers = fields.List(fields.Nested(TierSchema), validate=validate.Length(min=1, max=20))


class ContractCreateSchema(StrictSchema):
    """``ends_on`` after ``starts_on`` (at most ten years); ``formula_params`` as the formula needs."""

    customer = Text(required=True, validate=[validate.Length(1, 128), NOT_BLANK])
    name = Text(required=True, validate=[validate.Length(1, 128), NOT_BLANK])
    org_unit_id = fields.Integer(load_default=None, validate=ID)
    starts_on = Day(required=True)
    ends_on = Day(required=True)
    price_fen = fields.Integer(required=True, validate=validate.Range(min=1, max=2**63 - 1))
    fixed_share = decimal(0, 1, required=True)
    formula = Text(required=True, validate=validate.OneOf(["linear", "tiered", "floor"]))
    formula_params = fields.Nested(FormulaParamsSchema, load_default=dict)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        _ends_after(data, strictly=True, max_days=MAX_CONTRACT_DAYS)
        need = {"floor": "floor", "tiered": "tiers"}.get(data.get("formula", ""))
        if need and need not in (data.get("formula_params") or {}):
            raise ValidationError(f"the {data['formula']} formula needs {need}", "formula_params")


class TargetCreateSchema(StrictSchema):
    metric = Text(required=True, validate=validate.OneOf(list(REGISTRY)))
    account_id = fields.Integer(load_default=None, validate=ID)
    org_unit_id = fields.Integer(load_default=None, validate=ID)
    starts_on = Day(required=True)
    ends_on = Day(required=True)
    target_value = decimal(0, BIG, exclusive_minimum=True, required=True)
    weight = decimal(0, 9999, exclusive_minimum=True, load_default=Decimal(1))

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        _ends_after(data, strictly=False)


MANUAL_METRICS = [k for k, m in REGISTRY.items() if m.manual]


class ManualCreateSchema(StrictSchema):
    """For one account (``account_id``) or one org unit (``org_unit_id``), not both."""

    metric = Text(required=True, validate=validate.OneOf(MANUAL_METRICS))
    account_id = fields.Integer(load_default=None, validate=ID)
    org_unit_id = fields.Integer(load_default=None, validate=ID)
    starts_on = Day(required=True)
    ends_on = Day(required=True)
    value = decimal(-BIG, BIG, required=True)
    note = Text(load_default="", validate=validate.Length(max=500), multiline=True)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        _ends_after(data, strictly=False)
        if (data.get("account_id") is None) == (data.get("org_unit_id") is None):
            raise ValidationError("an account or an org unit", "account_id")


class AdjustmentSchema(StrictSchema):
    amount_fen = fields.Integer(
        required=True, validate=[validate.Range(min=-(2**62), max=2**62), validate.NoneOf([0])]
    )
    reason = Text(required=True, validate=validate.Length(1, 500), multiline=True)


@blp.get("/registry")
@blp.response(200, MetricSchema(many=True))
def registry() -> ResponseReturnValue:
    """Every metric: key, unit, description, aggregation, source."""
    return as_dicts()


@blp.get("/overview")
@blp.response(200, FiguresSchema)
def overview() -> ResponseReturnValue:
    """The matrix overview: visible accounts and org units — today, this month, attainment, pacing."""
    acl.require(current_access(), acl.METRICS)
    return reports.overview(current_access())


@blp.get("/report")
@blp.arguments(RangeSchema, location="query")
@blp.response(200, FiguresSchema)
def month_report(query: dict[str, Any]) -> ResponseReturnValue:
    """The monthly report (``month=YYYY-MM``) over the visible accounts and org units."""
    acl.require(current_access(), acl.METRICS)
    return reports.month_report(current_access(), query.get("month"))


@blp.get("/accounts/<int:account_id>/daily")
@blp.arguments(RangeSchema, location="query")
@blp.response(200, FiguresSchema(many=True))
def account_daily(query: dict[str, Any], account_id: int) -> ResponseReturnValue:
    """Per-day figures of an account (``metric`` repeatable; default: every stored metric)."""
    d0, d1 = _range(query)
    keys = query["metric"] or [k for k, m in REGISTRY.items() if not m.manual]
    return reports.account_daily(account_id, keys, d0, d1)


@blp.get("/accounts/<int:account_id>/summary")
@blp.arguments(RangeSchema, location="query")
@blp.response(200, FiguresSchema)
def account_summary(query: dict[str, Any], account_id: int) -> ResponseReturnValue:
    """An account's figures over a period, plus follows per channel QR code."""
    d0, d1 = _range(query)
    keys = query["metric"] or list(REGISTRY)
    return {
        "account_id": account_id,
        "from": d0.isoformat(),
        "to": d1.isoformat(),
        "figures": {
            k: str(v) for k, v in queries.period_values([account_id], keys, d0, d1)[account_id].items()
        },
        "follows_by_channel": queries.dimension_totals([account_id], "follows_by_channel", d0, d1),
    }


@blp.get("/accounts/<int:account_id>/reconciliation")
@blp.arguments(RangeSchema, location="query")
@blp.response(200, FiguresSchema(many=True))
def account_reconciliation(query: dict[str, Any], account_id: int) -> ResponseReturnValue:
    """Our follows/unfollows/followers per day against WeChat's datacube; ``flagged`` when they differ."""
    d0, d1 = _range(query)
    return [
        {
            "day": r.day.isoformat(),
            "metric": r.metric,
            "ours": r.ours,
            "wechat": r.theirs,
            "diff": r.diff,
            "flagged": r.flagged,
            "checked_at": r.checked_at.isoformat(),
        }
        for r in datacube.results(account_id, d0, d1)
    ]


@blp.get("/org-units/<int:unit_id>/summary")
@blp.arguments(RangeSchema, location="query")
@blp.response(200, FiguresSchema)
def unit_summary(query: dict[str, Any], unit_id: int) -> ResponseReturnValue:
    """An org unit's figures (the sum of its accounts) and each account's."""
    access = current_access()
    tree = queries.org_tree()
    if unit_id not in tree.units or not queries.can_see_scope(access, tree, unit_id):
        raise NotFoundError("no such org unit")
    d0, d1 = _range(query)
    keys = query["metric"] or [k for k, m in REGISTRY.items() if not m.manual]
    members = tree.accounts_under(unit_id)
    per_account = queries.period_values(members, keys, d0, d1)
    return {
        "org_unit_id": unit_id,
        "name": tree.units[unit_id].name,
        "from": d0.isoformat(),
        "to": d1.isoformat(),
        "figures": {
            k: str(v) for k, v in queries.unit_values(tree, [unit_id], keys, d0, d1)[unit_id].items()
        },
        "accounts": [{"account_id": a, **{k: str(v) for k, v in per_account[a].items()}} for a in members],
    }


@blp.get("/rankings")
@blp.arguments(RangeSchema, location="query")
@blp.response(200, FiguresSchema(many=True))
def rankings(query: dict[str, Any]) -> ResponseReturnValue:
    """Accounts or org units (``level``) ranked by one ``metric`` over a period."""
    access = current_access()
    acl.require(access, acl.METRICS)
    d0, d1 = _range(query)
    key = (query["metric"] or ["follows"])[0]
    return [{**r, "value": str(r["value"])} for r in queries.rankings(access, key, d0, d1, query["level"])]


def _contract(contract_id: int) -> Any:
    contract = contracts.contract_for(contract_id)
    if not reports.contract_readable(current_access(), contract, queries.org_tree()):
        raise NotFoundError("no such contract")
    return contract


def _contract_out(contract: Any) -> dict[str, Any]:
    out = contracts.describe_contract(contract)
    out["periods"] = [
        {
            "id": p.id,
            "seq": p.seq,
            "label": p.label,
            "starts_on": p.starts_on.isoformat(),
            "ends_on": p.ends_on.isoformat(),
            "status": p.status.value,
            "fee_fen": p.fee_fen,
        }
        for p in contracts.periods_of(contract.id)
    ]
    tree = queries.org_tree()
    out["targets"] = [
        {
            "id": t.id,
            "metric": t.metric,
            "account_id": t.account_id,
            "org_unit_id": t.org_unit_id,
            "scope": contracts.scope_name(t, tree),
            "starts_on": t.starts_on.isoformat(),
            "ends_on": t.ends_on.isoformat(),
            "target_value": str(t.target_value),
            "weight": str(t.weight),
        }
        for t in contracts.targets_of(contract.id)
    ]
    return out


@blp.get("/contracts")
@blp.response(200, FiguresSchema(many=True))
def contract_list() -> ResponseReturnValue:
    """Contracts the user may read (whom sees every account the contract covers)."""
    access = current_access()
    acl.require(access, acl.METRICS)
    return [contracts.describe_contract(c) for c in reports.readable_contracts(access, queries.org_tree())]


@blp.post("/contracts")
@blp.arguments(ContractCreateSchema)
@blp.response(201, FiguresSchema)
def contract_create(data: dict[str, Any]) -> ResponseReturnValue:
    """A contract with its quarterly payment schedule (administrators)."""
    _admin()
    contract = contracts.create_contract(current_access().user_id, data, client_ip())
    db.session.commit()
    return _contract_out(contract)


@blp.get("/contracts/<int:contract_id>")
@blp.response(200, FiguresSchema)
def contract_get(contract_id: int) -> ResponseReturnValue:
    return _contract_out(_contract(contract_id))


@blp.post("/contracts/<int:contract_id>/targets")
@blp.arguments(TargetCreateSchema)
@blp.response(201, FiguresSchema)
def target_create(data: dict[str, Any], contract_id: int) -> ResponseReturnValue:
    """A weighted target inside one open payment period (administrators)."""
    _admin()
    contract = _contract(contract_id)
    target = contracts.add_target(current_access().user_id, contract, data, client_ip())
    db.session.commit()
    return contracts.evaluate_target(target, queries.org_tree())


@blp.get("/contracts/<int:contract_id>/periods/<int:period_id>")
@blp.response(200, FiguresSchema)
def period_get(contract_id: int, period_id: int) -> ResponseReturnValue:
    """A payment period: targets with attainment, pacing and forecast; the fee line by line (a
    closed period's frozen snapshot) and its adjustments."""
    contract = _contract(contract_id)
    return contracts.period_report(contract, contracts.period_for(contract.id, period_id))


@blp.post("/contracts/<int:contract_id>/periods/<int:period_id>/close")
@blp.response(200, FiguresSchema)
def period_close(contract_id: int, period_id: int) -> ResponseReturnValue:
    """Freeze the period's figures and fee (administrators; only after the period ended)."""
    _admin()
    contract = _contract(contract_id)
    period = contracts.close_period(
        current_access().user_id, contract, contracts.period_for(contract.id, period_id), client_ip()
    )
    db.session.commit()
    return contracts.period_report(contract, period)


@blp.post("/contracts/<int:contract_id>/periods/<int:period_id>/adjustments")
@blp.arguments(AdjustmentSchema)
@blp.response(201, FiguresSchema)
def period_adjust(data: dict[str, Any], contract_id: int, period_id: int) -> ResponseReturnValue:
    """A signed correction to a closed period's fee, with its reason (administrators)."""
    _admin()
    contract = _contract(contract_id)
    period = contracts.period_for(contract.id, period_id)
    contracts.add_adjustment(
        current_access().user_id, contract, period, data["amount_fen"], data["reason"], client_ip()
    )
    db.session.commit()
    return contracts.period_report(contract, period)


@blp.get("/manual")
@blp.response(200, FiguresSchema(many=True))
def manual_list() -> ResponseReturnValue:
    """Manual figures (every entry; the latest per metric, scope and period counts)."""
    access = current_access()
    acl.require(access, acl.METRICS)
    tree = queries.org_tree()
    visible, units = set(queries.visible_account_ids(access)), set(queries.visible_units(access, tree))
    return [
        {
            "id": m.id,
            "metric": m.metric,
            "account_id": m.account_id,
            "org_unit_id": m.org_unit_id,
            "starts_on": m.starts_on.isoformat(),
            "ends_on": m.ends_on.isoformat(),
            "value": str(m.value),
            "note": m.note,
            "entered_by": m.entered_by,
            "entered_at": m.entered_at.isoformat(),
        }
        for m in contracts.manual_history()
        if m.account_id in visible or m.org_unit_id in units
    ]


@blp.post("/manual")
@blp.arguments(ManualCreateSchema)
@blp.response(201, FiguresSchema)
def manual_create(data: dict[str, Any]) -> ResponseReturnValue:
    """Record a manual figure (administrators; audited; refused inside a closed period)."""
    _admin()
    entry = contracts.enter_manual(current_access().user_id, data, client_ip())
    db.session.commit()
    return {"id": entry.id, "metric": entry.metric, "value": str(entry.value)}
