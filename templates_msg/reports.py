"""Delivery reports (TEMPLATESENDJOBFINISH), mini-program subscribe authorisations, and results:
stats, live progress, per-account breakdown, attribution with control-group uplift, CSV export."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from accounts.masking import mask_id
from accounts.models import Account
from store import orders
from templates_msg.models import (
    Campaign,
    Delivery,
    DeliveryStatus,
    EarlyReport,
    ReportStatus,
    SubscribeAuthorization,
)
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, upsert
from wechat_service.exports import csv_writer
from wechat_service.extensions import db
from wechat_service.router import CallbackContext, Reply, router


def classify_report(raw: str) -> ReportStatus:
    """``success``, ``failed:user block``, ``failed: system failed`` (with a space) and, in real
    traffic, other ``failed:*`` (e.g. ``failed:freq limit``): the raw status is kept as well."""
    status = (raw or "").strip().lower()
    if status == "success":
        return ReportStatus.delivered
    if status.startswith("failed"):
        detail = status[len("failed") :].lstrip(":").strip()
        if detail == "user block":
            return ReportStatus.user_block
        if detail == "system failed":
            return ReportStatus.system_failed
    return ReportStatus.other


def record_report(account_id: int, msgid: int, raw: str) -> bool:
    """One indexed UPDATE by (account, msgid); a report ahead of its send result is parked."""
    matched = execute_dml(
        sa.update(Delivery)
        .where(Delivery.account_id == account_id, Delivery.msgid == msgid)
        .values(report=classify_report(raw), report_raw=raw[:128], reported_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if not matched:
        upsert(
            EarlyReport,
            [{"account_id": account_id, "msgid": msgid, "raw": raw[:128], "at": utcnow()}],
            conflict=["account_id", "msgid"],
        )
    return bool(matched)


@router.register("event", "templatesendjobfinish", priority=50)
def on_template_report(ctx: CallbackContext) -> Reply | None:
    # Inline, in the callback's own transaction: one indexed UPDATE is cheaper than an RQ job per
    # report (~13 ms forked), which is what lets a storm of reports through without a backlog.
    try:
        msgid = int(ctx.message.get("MsgID") or "")
    except ValueError:
        return None
    record_report(ctx.account.id, msgid, ctx.message.get("Status") or "")
    return None


def _choices(ctx: CallbackContext, group: str) -> list[tuple[str, str]]:
    """(template id, status) for every template of a popup or change event (several <List>s)."""
    raw = ctx.message.get(f"{group}:items")
    items = json.loads(raw) if raw else [ctx.message]
    return [
        (str(i.get("TemplateId") or ""), str(i.get("SubscribeStatusString") or "").lower()) for i in items
    ]


@router.register("event", "subscribe_msg_popup_event", priority=50)
def on_subscribe_popup(ctx: CallbackContext) -> Reply | None:
    """The mini-program's subscribe popup: each ``accept`` is one more one-time authorisation."""
    for template_id, status in _choices(ctx, "SubscribeMsgPopupEvent"):
        if not template_id or status != "accept":
            continue
        upsert(
            SubscribeAuthorization,
            [
                {
                    "account_id": ctx.account.id,
                    "openid": ctx.openid,
                    "template_id": template_id,
                    "remaining": 1,
                    "updated_at": utcnow(),
                }
            ],
            conflict=["account_id", "openid", "template_id"],
            custom={
                "remaining": lambda cur, new: cur.remaining + 1,
                "updated_at": lambda cur, new: new.updated_at,
            },
        )
    return None


@router.register("event", "subscribe_msg_change_event", priority=50)
def on_subscribe_change(ctx: CallbackContext) -> Reply | None:
    """The user turned a template off in settings: what was authorised is void."""
    for template_id, status in _choices(ctx, "SubscribeMsgChangeEvent"):
        if status != "reject":
            continue
        db.session.execute(
            sa.update(SubscribeAuthorization)
            .where(
                SubscribeAuthorization.account_id == ctx.account.id,
                SubscribeAuthorization.openid == ctx.openid,
                SubscribeAuthorization.template_id == template_id,
            )
            .values(remaining=0, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return None


def authorisations(account_id: int, openid: str) -> dict[str, int]:
    return dict(
        db.session.execute(
            sa.select(SubscribeAuthorization.template_id, SubscribeAuthorization.remaining).where(
                SubscribeAuthorization.account_id == account_id, SubscribeAuthorization.openid == openid
            )
        ).all()
    )


def apply_early_reports(account_id: int, msgids: list[int]) -> int:
    rows = db.session.execute(
        sa.select(EarlyReport.msgid, EarlyReport.raw).where(
            EarlyReport.account_id == account_id, EarlyReport.msgid.in_(msgids)
        )
    ).all()
    n = 0
    for msgid, raw in rows:
        if record_report(account_id, msgid, raw):
            n += 1
            db.session.execute(
                sa.delete(EarlyReport).where(EarlyReport.account_id == account_id, EarlyReport.msgid == msgid)
            )
    return n


def sweep_early_reports(max_age_days: int = 3) -> int:
    """Cron: parked reports whose send result has landed since; very old ones are dropped (their
    msgid is none of ours: a message sent outside this service)."""
    n = 0
    for account_id, msgid, raw in db.session.execute(
        sa.select(EarlyReport.account_id, EarlyReport.msgid, EarlyReport.raw).limit(5000)
    ).all():
        if execute_dml(
            sa.update(Delivery)
            .where(Delivery.account_id == account_id, Delivery.msgid == msgid)
            .values(report=classify_report(raw), report_raw=raw, reported_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount:
            db.session.execute(
                sa.delete(EarlyReport).where(EarlyReport.account_id == account_id, EarlyReport.msgid == msgid)
            )
            n += 1
    db.session.execute(sa.delete(EarlyReport).where(EarlyReport.at < utcnow() - timedelta(days=max_age_days)))
    return n


# -- results ---------------------------------------------------------------------------------------


def stats(campaign_id: int) -> dict[str, Any]:
    """Everything the results page shows, in a handful of aggregate queries."""
    d = Delivery
    campaign = db.session.get(Campaign, campaign_id)
    by_status = dict(
        db.session.execute(
            sa.select(d.status, sa.func.count())
            .where(d.campaign_id == campaign_id, d.control.is_(False))
            .group_by(d.status)
        ).all()
    )
    counts = {s.value: int(by_status.get(s, 0)) for s in DeliveryStatus}
    reports = dict(
        db.session.execute(
            sa.select(d.report, sa.func.count())
            .where(d.campaign_id == campaign_id, d.report.is_not(None))
            .group_by(d.report)
        ).all()
    )
    failed_by = _failed_by_reason(campaign_id)
    clicks = (
        db.session.scalar(
            sa.select(sa.func.count()).where(d.campaign_id == campaign_id, d.first_clicked_at.is_not(None))
        )
        or 0
    )
    control = (
        db.session.scalar(sa.select(sa.func.count()).where(d.campaign_id == campaign_id, d.control.is_(True)))
        or 0
    )
    audience = sum(counts.values())
    sent = counts["sent"]
    out: dict[str, Any] = {
        "campaign_id": campaign_id,
        "state": campaign.state.value if campaign else None,
        "audience": audience,
        "control": control,
        **counts,
        "delivered": int(reports.get(ReportStatus.delivered, 0)),
        "user_block": int(reports.get(ReportStatus.user_block, 0)),
        "system_failed": int(reports.get(ReportStatus.system_failed, 0)),
        "report_other": int(reports.get(ReportStatus.other, 0)),
        "failed_by_reason": failed_by,
        "clicks": int(clicks),
        "ctr": round(clicks / sent, 4) if sent else 0.0,
    }
    out.update(attribution(campaign_id))
    out.update(progress(campaign_id, counts))
    return out


def _failed_by_reason(campaign_id: int) -> list[dict[str, Any]]:
    """Failed and skipped sends by errcode and reason (the 20 commonest), then WeChat's reports
    other than delivered by their raw status."""
    d = Delivery
    failed_by = [
        {"reason": reason or f"errcode {code}", "count": n}
        for code, reason, n in db.session.execute(
            sa.select(d.errcode, d.reason, sa.func.count())
            .where(
                d.campaign_id == campaign_id,
                d.status.in_([DeliveryStatus.failed, DeliveryStatus.skipped]),
                d.control.is_(False),
            )
            .group_by(d.errcode, d.reason)
            .order_by(sa.func.count().desc())
            .limit(20)
        )
    ]
    failed_by += [
        {"reason": f"report: {raw}", "count": n}
        for raw, n in db.session.execute(
            sa.select(d.report_raw, sa.func.count())
            .where(d.campaign_id == campaign_id, d.report.is_not(None), d.report != "delivered")
            .group_by(d.report_raw)
        )
    ]
    return failed_by


def progress(campaign_id: int, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Sends per second over the last minute, and the time left at that pace."""
    d = Delivery
    recent = (
        db.session.scalar(
            sa.select(sa.func.count()).where(
                d.campaign_id == campaign_id, d.sent_at >= utcnow() - timedelta(seconds=60)
            )
        )
        or 0
    )
    if counts is None:
        counts = {
            "pending": db.session.scalar(
                sa.select(sa.func.count()).where(
                    d.campaign_id == campaign_id, d.status == DeliveryStatus.pending
                )
            )
            or 0
        }
    rate = recent / 60
    left = counts.get("pending", 0) + counts.get("sending", 0)
    return {
        "sends_per_second": round(rate, 2),
        "eta_seconds": round(left / rate) if rate else None,
        "left": left,
    }


def per_account(campaign_id: int) -> list[dict[str, Any]]:
    d = Delivery
    rows = db.session.execute(
        sa.select(d.account_id, Account.name, d.status, sa.func.count())
        .join(Account, Account.id == d.account_id)
        .where(d.campaign_id == campaign_id, d.control.is_(False))
        .group_by(d.account_id, Account.name, d.status)
        .order_by(d.account_id)
    ).all()
    out: dict[int, dict[str, Any]] = {}
    for aid, name, status, n in rows:
        entry = out.setdefault(aid, {"account_id": aid, "name": name, **{s.value: 0 for s in DeliveryStatus}})
        entry[status.value] = n
    clicks = dict(
        db.session.execute(
            sa.select(d.account_id, sa.func.count())
            .where(d.campaign_id == campaign_id, d.first_clicked_at.is_not(None))
            .group_by(d.account_id)
        ).all()
    )
    for aid, entry in out.items():
        entry["clicks"] = int(clicks.get(aid, 0))
    return list(out.values())


def plus_days(ts: Any, days: Any, dialect: str) -> Any:
    """``ts`` + ``days`` (a column or a number) as SQL, exact on both backends. SQLite keeps
    timestamps as text 'YYYY-MM-DD HH:MM:SS.ffffff': its ``datetime()`` shifts the date and time and
    the fraction is carried over, so the result compares as text with stored timestamps (adding a
    Python timedelta to a column does not work there: it silently compares garbage)."""
    if dialect == "postgresql":
        return ts + sa.func.make_interval(0, 0, 0, days)
    shifted = sa.func.datetime(ts, sa.func.printf("+%d days", days))
    return shifted.op("||")(sa.func.coalesce(sa.func.substr(ts, 20), ""))


def attributed(order: Any, dialect: str, campaign_id: int | None = None) -> Any:
    """The one definition of a campaign conversion, used by the campaign results and the metrics
    rollups alike: a paid order (``order``: the columns of store's ``paid_orders()``) placed by a
    recipient the campaign
    reached, within the campaign's attribution window after the recipient's first click (or,
    without a click, the send). With ``campaign_id``: attributed to that campaign; without: to any
    campaign (an order attributed to two campaigns is one order of the matrix)."""
    d = Delivery
    anchor = sa.func.coalesce(d.first_clicked_at, d.sent_at)
    reached = (
        sa.select(d.id)
        .join(Campaign, Campaign.id == d.campaign_id)
        .where(
            d.kind == "campaign",
            d.control.is_(False),
            d.status == DeliveryStatus.sent,
            d.subscriber_id == order.subscriber_id,
            d.account_id == order.account_id,
            order.created_at >= anchor,
            order.created_at < plus_days(anchor, Campaign.attribution_days, dialect),
        )
    )
    if campaign_id is not None:
        reached = reached.where(d.campaign_id == campaign_id)
    return reached.exists()


def attribution(campaign_id: int) -> dict[str, Any]:
    """Conversions are the paid orders :func:`attributed` to the campaign (the figure the metrics
    dashboard sums, from the same predicate) and their amount; the conversion rate is the share of
    recipients with at least one; the control group's orders within the window after the campaign
    started are the baseline for the uplift."""
    paid = orders.paid_orders()
    order = paid.c
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or campaign.started_at is None:
        return {
            "conversions": 0,
            "revenue_fen": 0,
            "converted_recipients": 0,
            "conversion_rate": 0.0,
            "control_conversion_rate": None,
            "uplift": None,
        }
    d = Delivery
    dialect = db.session.get_bind().dialect.name
    # Recipients are subscribers (one delivery each per campaign): the same predicate gives both.
    conversions, revenue, converted = db.session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(order.amount_fen), 0),
            sa.func.count(sa.distinct(order.subscriber_id)),
        ).where(attributed(order, dialect, campaign_id))
    ).one()
    window_end = campaign.started_at + timedelta(days=campaign.attribution_days)
    control_converted = _control_converted(campaign_id, paid, campaign.started_at, window_end)
    sent = (
        db.session.scalar(
            sa.select(sa.func.count()).where(
                d.campaign_id == campaign_id, d.status == DeliveryStatus.sent, d.control.is_(False)
            )
        )
        or 0
    )
    held = (
        db.session.scalar(sa.select(sa.func.count()).where(d.campaign_id == campaign_id, d.control.is_(True)))
        or 0
    )
    rate = converted / sent if sent else 0.0
    control_rate = control_converted / held if held else None
    return {
        "conversions": int(conversions),
        "revenue_fen": int(revenue),
        "converted_recipients": int(converted),
        "conversion_rate": round(rate, 4),
        "control_conversions": control_converted if held else None,
        "control_conversion_rate": round(control_rate, 4) if control_rate is not None else None,
        "uplift": round(rate - control_rate, 4) if control_rate is not None else None,
    }


def _control_converted(campaign_id: int, paid: sa.Subquery, start: datetime, end: datetime) -> int:
    """The campaign's control-group members with a paid order placed within [start, end)."""
    d = Delivery
    order = paid.c
    return (
        db.session.scalar(
            sa.select(sa.func.count(sa.distinct(d.id)))
            .join(paid, sa.and_(order.subscriber_id == d.subscriber_id, order.account_id == d.account_id))
            .where(
                d.campaign_id == campaign_id,
                d.control.is_(True),
                order.created_at >= start,
                order.created_at < end,
            )
        )
        or 0
    )


CSV_COLUMNS = (
    "delivery_id",
    "account_id",
    "openid",
    "control",
    "status",
    "msgid",
    "errcode",
    "reason",
    "report",
    "report_raw",
    "sent_at",
    "reported_at",
    "clicks",
)


def export_csv(campaign_id: int, chunk: int = 5000, openids: dict[int, str] | None = None) -> Iterator[str]:
    """Every delivery with its status, streamed in keyset pages (flat memory). ``openids`` says
    per account id how the openid column shows: ``full``, ``masked`` (the default, as the
    console masks it) or ``none`` (empty)."""

    shows = openids or {}

    def openid(account_id: int, value: str) -> str:
        how = shows.get(account_id, "masked")
        return value if how == "full" else (mask_id(value) or "") if how == "masked" else ""

    buf = io.StringIO()
    writer = csv_writer(buf)  # formula-safe: openids, reasons and WeChat's raw reports are text
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    last = 0
    while True:
        rows = _deliveries_after(campaign_id, last, chunk)
        if not rows:
            return
        buf.seek(0)
        buf.truncate()
        for r in rows:
            writer.writerow(
                [
                    r.id,
                    r.account_id,
                    openid(r.account_id, r.openid),
                    int(r.control),
                    r.status.value,
                    r.msgid or "",
                    r.errcode or "",
                    r.reason or "",
                    r.report.value if r.report else "",
                    r.report_raw or "",
                    r.sent_at.isoformat() if r.sent_at else "",
                    r.reported_at.isoformat() if r.reported_at else "",
                    r.clicks,
                ]
            )
        yield buf.getvalue()
        last = rows[-1].id


def _deliveries_after(campaign_id: int, last: int, chunk: int) -> Sequence[sa.Row[*tuple[Any, ...]]]:
    """The next keyset page of the campaign's deliveries (ids above ``last``), the CSV's columns."""
    d = Delivery
    return db.session.execute(
        sa.select(
            d.id,
            d.account_id,
            d.openid,
            d.control,
            d.status,
            d.msgid,
            d.errcode,
            d.reason,
            d.report,
            d.report_raw,
            d.sent_at,
            d.reported_at,
            d.clicks,
        )
        .where(d.campaign_id == campaign_id, d.id > last)
        .order_by(d.id)
        .limit(chunk)
    ).all()
