"""The campaign engine's metric sources over its own deliveries (composed by ``metrics.registry``).

A delivery row changes as it goes (sent, reported, clicked): each metric buckets by the time of
its own step, and the refresh re-reads deliveries by their change sequence."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from store import orders
from templates_msg.models import Campaign, Delivery, ReportStatus
from templates_msg.reports import attributed, plus_days
from wechat_service.extensions import db
from wechat_service.facts import COUNT, Bucket, Feed

M = Delivery
_CAMPAIGN = sa.and_(M.kind == "campaign", M.control.is_(False))


def campaign_sends(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.sent_at, COUNT, _CAMPAIGN, M.sent_at.is_not(None))


def campaign_deliveries(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.reported_at, COUNT, _CAMPAIGN, M.report == ReportStatus.delivered)


def campaign_clicks(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.first_clicked_at, COUNT, _CAMPAIGN, M.first_clicked_at.is_not(None))


def transactional(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.sent_at, COUNT, M.kind != "campaign", M.sent_at.is_not(None))


# -- conversions: store's paid orders attributed to campaigns (the campaign page's own predicate) --


def campaign_conversions(b: Bucket) -> sa.Select[Any]:
    o = orders.paid_orders().c
    return b.grouped(o.account_id, o.created_at, COUNT, attributed(o, b.dialect))


def campaign_revenue(b: Bucket) -> sa.Select[Any]:
    o = orders.paid_orders().c
    return b.grouped(o.account_id, o.created_at, sa.func.sum(o.amount_fen), attributed(o, b.dialect))


def _attributable_orders(new: Any) -> sa.Select[Any]:
    """Orders of the recipients of changed deliveries placed from the earlier of send and click to
    the end of the window after the later: attributed before or after the change."""
    dialect = db.session.get_bind().dialect.name
    paid = orders.paid_orders()
    o = paid.c
    first = sa.case((M.first_clicked_at < M.sent_at, M.first_clicked_at), else_=M.sent_at)
    last = sa.case((M.first_clicked_at > M.sent_at, M.first_clicked_at), else_=M.sent_at)
    return (
        sa.select(o.account_id, sa.func.min(o.created_at), sa.func.max(o.created_at))
        .select_from(M)
        .join(Campaign, Campaign.id == M.campaign_id)
        .join(paid, sa.and_(o.subscriber_id == M.subscriber_id, o.account_id == M.account_id))
        .where(
            new,
            M.sent_at.is_not(None),
            o.created_at >= first,
            o.created_at < plus_days(last, Campaign.attribution_days, dialect),
        )
        .group_by(o.account_id)
    )


# A changed delivery (sent, reported, clicked) reaches the recipient's orders within the window.
FEEDS: tuple[Feed, ...] = (
    Feed(
        "deliveries",
        M.change_seq,
        M.changed_at,
        (M.sent_at, M.reported_at, M.first_clicked_at),
        M.account_id,
        reaches=(_attributable_orders,),
    ),
)
