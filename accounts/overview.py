"""The matrix overview: every visible account with its health and today's movement."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from accounts.access import Access, scoped_accounts
from accounts.models import Account, EventKind, OrgUnit, Subscriber, SubscriberEvent
from accounts.services import org_path
from wechat_service.callbacks import inbox_stats
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db


def _today_start(tz: str, now: datetime) -> datetime:
    local = now.astimezone(ZoneInfo(tz))
    return datetime.combine(local.date(), time(0), ZoneInfo(tz))


def matrix_overview(access: Access, token_health: Any = None) -> list[dict[str, Any]]:
    """Rows grouped by org unit path; the counts come from a few grouped queries, not one per account."""

    accounts = list(db.session.scalars(scoped_accounts(access)))
    if not accounts:
        return []
    ids = [a.id for a in accounts]
    now = utcnow()
    followers = dict(
        db.session.execute(
            sa.select(Subscriber.account_id, sa.func.count())
            .where(Subscriber.account_id.in_(ids), Subscriber.following.is_(True))
            .group_by(Subscriber.account_id)
        ).all()
    )
    # "Today" is the account's own day; fetch from the earliest possible midnight, then split.
    earliest = min(_today_start(a.timezone, now) for a in accounts)
    moves: dict[int, dict[str, int]] = {}
    rows = db.session.execute(
        sa.select(SubscriberEvent.account_id, SubscriberEvent.kind, SubscriberEvent.occurred_at).where(
            SubscriberEvent.account_id.in_(ids),
            SubscriberEvent.occurred_at >= earliest,
            SubscriberEvent.kind.in_([EventKind.follow, EventKind.unfollow]),
        )
    ).all()
    starts = {a.id: _today_start(a.timezone, now) for a in accounts}
    for aid, kind, at in rows:
        if at >= starts[aid]:
            moves.setdefault(aid, {}).setdefault(kind.value, 0)
            moves[aid][kind.value] += 1
    callbacks = inbox_stats(ids, now - timedelta(hours=1))
    failures = inbox_stats(ids, now - timedelta(hours=24))
    units = {u.id: u for u in db.session.scalars(sa.select(OrgUnit))}
    out = []
    for a in accounts:
        health = token_health(a.appid) if token_health else None
        out.append(
            {
                "id": a.id,
                "name": a.name,
                "appid": a.appid,
                "kind": a.kind.value,
                "status": a.status.value,
                "message_mode": a.message_mode.value,
                "org_path": org_path(units.get(a.org_unit_id)) if a.org_unit_id else [],
                "followers": followers.get(a.id, 0),
                "follows_today": moves.get(a.id, {}).get("follow", 0),
                "unfollows_today": moves.get(a.id, {}).get("unfollow", 0),
                "callbacks_last_hour": callbacks.get(a.id, {}).get("callbacks", 0),
                "errors_24h": failures.get(a.id, {}).get("failed", 0),
                "token": health,
            }
        )
    out.sort(key=lambda r: ("/".join(r["org_path"]) or "~", r["name"]))
    return out


def account_names(ids: list[int]) -> dict[int, str]:
    return dict(db.session.execute(sa.select(Account.id, Account.name).where(Account.id.in_(ids))).all())
