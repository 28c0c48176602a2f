"""Subscribers, persons and the append-only subscriber ledger."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from accounts.models import ChannelQRCode, EventKind, Person, Subscriber, SubscriberEvent
from wechat_service.dbutil import upsert
from wechat_service.extensions import db

# A chat burst should not rewrite the subscriber row per message: interaction time is kept
# to the minute.
INTERACTION_RESOLUTION = timedelta(seconds=60)


def get_or_create_subscriber(account_id: int, openid: str) -> Subscriber:
    sub = db.session.scalar(
        sa.select(Subscriber).where(Subscriber.account_id == account_id, Subscriber.openid == openid)
    )
    if sub is not None:
        return sub
    # Two callbacks of a new subscriber may race: let the unique key decide, then read.
    upsert(
        Subscriber,
        [{"account_id": account_id, "openid": openid, "following": False}],
        conflict=["account_id", "openid"],
    )
    return db.session.scalars(
        sa.select(Subscriber).where(Subscriber.account_id == account_id, Subscriber.openid == openid)
    ).one()


def subscriber_by_id(account_id: int, subscriber_id: int) -> Subscriber:
    from accounts.services import get_scoped

    return get_scoped(Subscriber, account_id, subscriber_id)


def person_id_for(unionid: str) -> int:
    upsert(Person, [{"unionid": unionid}], conflict=["unionid"])
    return db.session.scalar(sa.select(Person.id).where(Person.unionid == unionid))


def link_unionid(sub: Subscriber, unionid: str | None) -> None:
    if unionid and sub.unionid != unionid:
        sub.unionid = unionid
        sub.person_id = person_id_for(unionid)


def channel_for_scene(account_id: int, scene: str | None) -> int | None:
    if not scene:
        return None
    return db.session.scalar(
        sa.select(ChannelQRCode.id).where(
            ChannelQRCode.account_id == account_id, ChannelQRCode.scene == scene
        )
    )


def record_event(
    sub: Subscriber,
    kind: EventKind,
    at: datetime,
    *,
    inbox: Any = None,
    channel_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> SubscriberEvent:
    event = SubscriberEvent(
        account_id=sub.account_id,
        subscriber_id=sub.id,
        kind=kind,
        occurred_at=at,
        channel_id=channel_id,
        detail=detail or {},
    )
    if inbox is not None:
        event.inbox = inbox
    db.session.add(event)
    if sub.last_interaction_at is None or at - sub.last_interaction_at >= INTERACTION_RESOLUTION:
        sub.last_interaction_at = at
    return event


def follow(
    sub: Subscriber,
    at: datetime,
    *,
    scene: str | None,
    channel_id: int | None,
    inbox: Any = None,
    ticket: str | None = None,
) -> SubscriberEvent:
    refollow = sub.first_followed_at is not None
    # Late or reordered events must not undo a newer state change.
    if sub.last_unfollowed_at is None or at >= sub.last_unfollowed_at:
        sub.following = True
    if sub.first_followed_at is None or at < sub.first_followed_at:
        sub.first_followed_at = at
    if sub.last_followed_at is None or at > sub.last_followed_at:
        sub.last_followed_at = at
        sub.subscribe_scene = "ADD_SCENE_QR_CODE" if scene else "ADD_SCENE_OTHERS"
        sub.qr_scene = scene
        sub.channel_id = channel_id
    detail: dict[str, Any] = {"refollow": refollow}
    if scene:
        detail["scene"] = scene
    if ticket:
        detail["ticket"] = ticket
    return record_event(sub, EventKind.follow, at, inbox=inbox, channel_id=channel_id, detail=detail)


def unfollow(sub: Subscriber, at: datetime, *, inbox: Any = None) -> SubscriberEvent:
    if sub.last_followed_at is None or at >= sub.last_followed_at:
        sub.following = False
    if sub.last_unfollowed_at is None or at > sub.last_unfollowed_at:
        sub.last_unfollowed_at = at
    return record_event(sub, EventKind.unfollow, at, inbox=inbox)


def subscriber_history(account_id: int, openid: str, limit: int = 100) -> list[SubscriberEvent]:
    sub_id = db.session.scalar(
        sa.select(Subscriber.id).where(Subscriber.account_id == account_id, Subscriber.openid == openid)
    )
    if sub_id is None:
        return []
    return list(
        db.session.scalars(
            sa.select(SubscriberEvent)
            .where(SubscriberEvent.account_id == account_id, SubscriberEvent.subscriber_id == sub_id)
            .order_by(SubscriberEvent.occurred_at, SubscriberEvent.id)
            .limit(limit)
        )
    )


def event_counts(account_id: int) -> dict[str, int]:
    rows = db.session.execute(
        sa.select(SubscriberEvent.kind, sa.func.count())
        .where(SubscriberEvent.account_id == account_id)
        .group_by(SubscriberEvent.kind)
    ).all()
    return {kind.value: n for kind, n in rows}


def follower_count(account_id: int) -> int:
    return (
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(Subscriber)
            .where(Subscriber.account_id == account_id, Subscriber.following.is_(True))
        )
        or 0
    )
