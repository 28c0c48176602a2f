"""The subscriber ledger's metric sources (composed by ``metrics.registry``): grouped SELECTs over
``subscriber_events``, bucketed by WeChat's CreateTime, so a late callback lands in its day."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import ColumnElement

from accounts.models import EventKind, SubscriberEvent
from wechat_service.facts import COUNT, Bucket, Feed

E = SubscriberEvent

# Things a subscriber does themselves. LOCATION is reported by the client on its own (every few
# seconds while the chat is open, if allowed) and UNFOLLOW ends the relation: neither is activity.
ACTIVE_KINDS = (EventKind.follow, EventKind.scan, EventKind.click, EventKind.view, EventKind.message)


def _events(b: Bucket, *filters: ColumnElement[bool], dim: Any = None) -> sa.Select[Any]:
    return b.grouped(E.account_id, E.occurred_at, COUNT, *filters, dim=dim)


def follows(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.follow)


def unfollows(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.unfollow)


def re_follows(b: Bucket) -> sa.Select[Any]:
    earlier = sa.orm.aliased(SubscriberEvent)
    before = (
        sa.select(earlier.id)
        .where(
            earlier.subscriber_id == E.subscriber_id,
            earlier.kind == EventKind.follow,
            sa.or_(
                earlier.occurred_at < E.occurred_at,
                sa.and_(earlier.occurred_at == E.occurred_at, earlier.id < E.id),
            ),
        )
        .exists()
    )
    return _events(b, E.kind == EventKind.follow, before)


def qr_follows(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.follow, E.channel_id.is_not(None))


def follows_by_channel(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.follow, E.channel_id.is_not(None), dim=E.channel_id)


def scans(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.scan)


def menu_clicks(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind.in_([EventKind.click, EventKind.view]))


def messages(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.message)


def active_days(b: Bucket) -> sa.Select[Any]:
    """(account_id, day, subscriber_id) once per active subscriber per local day: what
    metric_active_days keeps, so a period's distinct actives never double-count across days."""
    day = b.day_of(E.occurred_at).label("day")
    return (
        sa.select(E.account_id, day, E.subscriber_id)
        .where(
            E.account_id.in_(b.account_ids),
            E.occurred_at >= b.start,
            E.occurred_at < b.end,
            E.kind.in_(ACTIVE_KINDS),
        )
        .group_by(E.account_id, day, E.subscriber_id)
    )


def active(b: Bucket) -> sa.Select[Any]:
    return b.grouped(
        E.account_id, E.occurred_at, sa.func.count(sa.distinct(E.subscriber_id)), E.kind.in_(ACTIVE_KINDS)
    )


def _later_follows(new: Any) -> sa.Select:
    """A follow makes the subscriber's later follows re-follows: their days change too."""
    later = sa.orm.aliased(SubscriberEvent)
    return (
        sa.select(later.account_id, sa.func.min(later.occurred_at), sa.func.max(later.occurred_at))
        .select_from(E)
        .join(later, sa.and_(later.subscriber_id == E.subscriber_id, later.kind == EventKind.follow))
        .where(new, E.kind == EventKind.follow, later.occurred_at >= E.occurred_at, later.id != E.id)
        .group_by(later.account_id)
    )


FEEDS: tuple[Feed, ...] = (
    Feed("subscriber_events", E.id, E.recorded_at, (E.occurred_at,), E.account_id, reaches=(_later_follows,)),
)
