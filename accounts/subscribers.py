"""Subscribers, persons and the append-only subscriber ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from accounts.models import ChannelQRCode, EventKind, Person, Subscriber, SubscriberEvent, SubscriberTag, Tag
from accounts.services import get_scoped
from wechat_service.dbtypes import UTCDateTime, utcnow
from wechat_service.dbutil import upsert
from wechat_service.extensions import db


@dataclass
class SubscriberRef:
    """What the callback path knows of a subscriber after its one upsert (no ORM object)."""

    id: int
    account_id: int
    openid: str
    following: bool
    first_followed_at: datetime | None
    last_followed_at: datetime | None
    last_unfollowed_at: datetime | None


_subs = Subscriber.__table__
_events = SubscriberEvent.__table__
_TOUCH: dict[str, Any] = {}
_EVENT_INSERT = _events.insert()


def _touch_statement(dialect: str) -> Any:
    """Built once per dialect with bind parameters: building it per call costs more than running it."""
    stmt = _TOUCH.get(dialect)
    if stmt is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        ins = insert(_subs).values(
            account_id=sa.bindparam("account_id"),
            openid=sa.bindparam("openid"),
            following=False,
            last_interaction_at=sa.bindparam("at", type_=UTCDateTime),
            created_at=sa.bindparam("now", type_=UTCDateTime),
        )
        current = _subs.c.last_interaction_at
        newer = sa.case(
            (
                sa.or_(current.is_(None), current < ins.excluded.last_interaction_at),
                ins.excluded.last_interaction_at,
            ),
            else_=current,
        )
        stmt = _TOUCH[dialect] = ins.on_conflict_do_update(
            index_elements=["account_id", "openid"], set_={"last_interaction_at": newer}
        ).returning(
            _subs.c.id,
            _subs.c.account_id,
            _subs.c.openid,
            _subs.c.following,
            _subs.c.first_followed_at,
            _subs.c.last_followed_at,
            _subs.c.last_unfollowed_at,
        )
    return stmt


def touch(account_id: int, openid: str, at: datetime | None) -> SubscriberRef:
    """The subscriber, created if new, its last interaction moved forward to ``at``: one statement.

    Concurrent callbacks of a new subscriber meet on the unique key instead of racing.
    """
    conn = db.session.connection()
    row = conn.execute(
        _touch_statement(conn.dialect.name),
        {"account_id": account_id, "openid": openid, "at": at, "now": utcnow()},
    ).one()
    return SubscriberRef(*row)


def for_callback(ctx: Any) -> SubscriberRef:
    """The callback's subscriber, touched once however many handlers ask for it."""
    sub = ctx.notes.get("subscriber")
    if sub is None:
        sub = ctx.notes["subscriber"] = touch(ctx.account.id, ctx.openid, ctx.occurred_at)
    return sub


def get_or_create_subscriber(account_id: int, openid: str) -> Subscriber:
    """The ORM object, for code that edits the subscriber (mini-program login, console)."""
    ref = touch(account_id, openid, None)
    return db.session.get_one(Subscriber, ref.id, populate_existing=True)


def subscriber_by_id(account_id: int, subscriber_id: int) -> Subscriber:
    return get_scoped(Subscriber, account_id, subscriber_id)


def person_id_for(unionid: str) -> int:
    upsert(Person, [{"unionid": unionid}], conflict=["unionid"])
    return db.session.scalars(sa.select(Person.id).where(Person.unionid == unionid)).one()


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
    sub: SubscriberRef,
    kind: EventKind,
    at: datetime,
    *,
    ctx: Any = None,
    channel_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append to the ledger. Inside a callback the row waits for the inbox row it belongs to
    (one ledger entry per accepted callback, guarded by the unique inbox_id)."""
    row = {
        "account_id": sub.account_id,
        "subscriber_id": sub.id,
        "kind": kind,
        "occurred_at": at,
        "recorded_at": utcnow(),
        "channel_id": channel_id,
        "detail": detail or {},
    }
    if ctx is None:
        db.session.connection().execute(_EVENT_INSERT, [{**row, "inbox_id": None}])
    else:
        ctx.on_stored(
            lambda inbox_id: db.session.connection().execute(_EVENT_INSERT, [{**row, "inbox_id": inbox_id}])
        )


def follow(
    sub: SubscriberRef,
    at: datetime,
    *,
    scene: str | None,
    channel_id: int | None,
    ctx: Any = None,
    ticket: str | None = None,
) -> None:
    refollow = sub.first_followed_at is not None
    values: dict[str, Any] = {}
    # Late or reordered events must not undo a newer state change.
    if sub.last_unfollowed_at is None or at >= sub.last_unfollowed_at:
        values["following"] = True
    if sub.first_followed_at is None or at < sub.first_followed_at:
        values["first_followed_at"] = at
    if sub.last_followed_at is None or at > sub.last_followed_at:
        values.update(
            last_followed_at=at,
            subscribe_scene="ADD_SCENE_QR_CODE" if scene else "ADD_SCENE_OTHERS",
            qr_scene=scene,
            channel_id=channel_id,
        )
    if values:
        db.session.connection().execute(_subs.update().where(_subs.c.id == sub.id).values(**values))
    detail: dict[str, Any] = {"refollow": refollow}
    if scene:
        detail["scene"] = scene
    if ticket:
        detail["ticket"] = ticket
    record_event(sub, EventKind.follow, at, ctx=ctx, channel_id=channel_id, detail=detail)


def unfollow(sub: SubscriberRef, at: datetime, *, ctx: Any = None) -> None:
    values: dict[str, Any] = {}
    if sub.last_followed_at is None or at >= sub.last_followed_at:
        values["following"] = False
    if sub.last_unfollowed_at is None or at > sub.last_unfollowed_at:
        values["last_unfollowed_at"] = at
    if values:
        db.session.connection().execute(_subs.update().where(_subs.c.id == sub.id).values(**values))
    record_event(sub, EventKind.unfollow, at, ctx=ctx)


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


def follower_count(account_id: int) -> int:
    return (
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(Subscriber)
            .where(Subscriber.account_id == account_id, Subscriber.following.is_(True))
        )
        or 0
    )


def search_subscribers(
    account_id: int,
    *,
    q: str | None = None,
    tag: str | None = None,
    channel_id: int | None = None,
    following: bool | None = None,
    exact: bool = False,
) -> sa.Select[Any]:
    """Subscribers of one account by openid or unionid (prefix; ``exact`` for roles that only see
    masked ids, so ids cannot be recovered a character at a time), tag name, channel QR code."""

    query = sa.select(Subscriber).where(Subscriber.account_id == account_id)
    if q and exact:
        query = query.where(sa.or_(Subscriber.openid == q.strip(), Subscriber.unionid == q.strip()))
    elif q:
        query = query.where(
            sa.or_(
                Subscriber.openid.startswith(q.strip(), autoescape=True),
                Subscriber.unionid.startswith(q.strip(), autoescape=True),
            )
        )
    if tag:
        query = query.where(
            Subscriber.id.in_(
                sa.select(SubscriberTag.subscriber_id)
                .join(Tag, Tag.id == SubscriberTag.tag_id)
                .where(Tag.account_id == account_id, Tag.name == tag)
            )
        )
    if channel_id:
        query = query.where(Subscriber.channel_id == channel_id)
    if following is not None:
        query = query.where(Subscriber.following.is_(following))
    return query.order_by(Subscriber.last_interaction_at.desc().nulls_last(), Subscriber.id.desc())


def events_of(account_id: int, subscriber_id: int) -> sa.Select[Any]:
    return (
        sa.select(SubscriberEvent)
        .where(SubscriberEvent.account_id == account_id, SubscriberEvent.subscriber_id == subscriber_id)
        .order_by(SubscriberEvent.occurred_at.desc(), SubscriberEvent.id.desc())
    )


def tags_of(subscriber_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    rows = db.session.execute(
        sa.select(SubscriberTag.subscriber_id, Tag.name)
        .join(Tag, Tag.id == SubscriberTag.tag_id)
        .where(SubscriberTag.subscriber_id.in_(subscriber_ids))
    ).all()
    for sid, name in rows:
        out.setdefault(sid, []).append(name)
    return out


def lock_subscriber(subscriber_id: int) -> None:
    """Serialise one subscriber's purchases until the transaction ends: a no-op UPDATE takes the
    row lock on PostgreSQL (and the write lock on SQLite), so check-then-insert limits hold."""
    db.session.execute(
        sa.update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(id=Subscriber.id)
        .execution_options(synchronize_session=False)
    )


# -- selectables and look-ups for the domains above ------------------------------------------------


def tagged(subscriber_id: Any, tag_ids: list[int]) -> sa.Exists:
    """EXISTS: the subscriber (a column or a value) carries one of the tags."""
    return sa.exists().where(SubscriberTag.subscriber_id == subscriber_id, SubscriberTag.tag_id.in_(tag_ids))


def profiles(subscriber_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per subscriber: openid, first follow, the channel QR code they came through, their tag
    names (comma-separated) — in two queries, for template-message variables."""
    out: dict[int, dict[str, Any]] = {
        sid: {"openid": openid, "first_followed_at": followed, "channel": channel or "", "tags": ""}
        for sid, openid, followed, channel in db.session.execute(
            sa.select(Subscriber.id, Subscriber.openid, Subscriber.first_followed_at, ChannelQRCode.name)
            .outerjoin(ChannelQRCode, ChannelQRCode.id == Subscriber.channel_id)
            .where(Subscriber.id.in_(subscriber_ids))
        )
    }
    for sid, tag in db.session.execute(
        sa.select(SubscriberTag.subscriber_id, Tag.name)
        .join(Tag, Tag.id == SubscriberTag.tag_id)
        .where(SubscriberTag.subscriber_id.in_(subscriber_ids))
    ):
        if sid in out:
            out[sid]["tags"] = ",".join(filter(None, [out[sid]["tags"], tag]))
    return out
