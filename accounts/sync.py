"""Follower backfill: user/get pages (10,000 openids) and user/info/batchget (100 per call).

Each page is upserted and committed with the cursor of the next page, so a killed job resumes
where it stopped and running it twice changes nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from accounts.models import FollowerSync, Person, Subscriber, SubscriberTag, Tag
from accounts.services import api_client
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary, upsert
from wechat_service.extensions import db

log = logging.getLogger(__name__)
BATCHGET = 100


def start_sync(account_id: int) -> FollowerSync:
    """The running sync of the account, or a new one: at most one runs per account."""
    running = db.session.scalar(
        sa.select(FollowerSync).where(FollowerSync.account_id == account_id, FollowerSync.status == "running")
    )
    if running:
        return running
    sync = FollowerSync(account_id=account_id, status="running", synced=0)
    db.session.add(sync)
    db.session.flush()
    return sync


@step_boundary("a long follower sync: each page of openids is durable before the next is fetched")
def run_sync(sync_id: int) -> FollowerSync | None:
    sync = db.session.get(FollowerSync, sync_id)
    if sync is None or sync.status != "running":
        return sync
    client = api_client(sync.account_id)
    try:
        tag_ids = sync_tags(sync.account_id, client)
        db.session.commit()
        while True:
            page = client.user.get_followers(sync.cursor) if sync.cursor else client.user.get_followers()
            openids = (page.get("data") or {}).get("openid") or []
            for i in range(0, len(openids), BATCHGET):
                infos = client.user.get_batch(openids[i : i + BATCHGET])
                _store_infos(sync.account_id, infos, tag_ids)
            sync.total = int(page.get("total") or 0)
            sync.synced += len(openids)
            next_openid = page.get("next_openid") or ""
            # The last page repeats its last openid as next_openid with count 0, or gives "".
            if not openids or not next_openid or len(openids) < 10000:
                sync.status, sync.finished_at, sync.cursor = "done", utcnow(), None
                db.session.commit()
                return sync
            sync.cursor = next_openid
            db.session.commit()
    except Exception as exc:
        db.session.rollback()
        sync = db.session.get_one(FollowerSync, sync_id)
        sync.error = f"{type(exc).__name__}: {exc}"[:2000]
        db.session.commit()
        raise


def sync_tags(account_id: int, client: Any) -> dict[int, int]:
    tags = client.tag.get()
    upsert(
        Tag,
        [{"account_id": account_id, "wechat_tag_id": int(t["id"]), "name": t["name"]} for t in tags],
        conflict=["account_id", "wechat_tag_id"],
        update=["name"],
    )
    return dict(
        db.session.execute(sa.select(Tag.wechat_tag_id, Tag.id).where(Tag.account_id == account_id)).all()
    )


def _store_infos(account_id: int, infos: list[dict[str, Any]], tag_ids: dict[int, int]) -> None:
    """Four statements per batch of 100, each by primary or unique key (no scans that grow
    with the table): persons, subscribers (RETURNING ids), and the batch's tag links."""
    unionids = sorted({i["unionid"] for i in infos if i.get("unionid")})
    persons = dict(
        upsert(
            Person,
            [{"unionid": u} for u in unionids],
            conflict=["unionid"],
            update=["unionid"],
            returning=["unionid", "id"],
        )
    )
    rows = []
    # Someone who left between user/get and batchget: their unfollow callback records it.
    infos = [i for i in infos if i.get("subscribe")]
    for info in infos:
        at = datetime.fromtimestamp(int(info["subscribe_time"]), UTC) if info.get("subscribe_time") else None
        unionid = info.get("unionid") or None
        rows.append(
            {
                "account_id": account_id,
                "openid": info["openid"],
                "unionid": unionid,
                "person_id": persons.get(unionid),
                "following": bool(info.get("subscribe")),
                "first_followed_at": at,
                "last_followed_at": at,
                "subscribe_scene": info.get("subscribe_scene") or None,
                "qr_scene": str(info.get("qr_scene_str") or info.get("qr_scene") or "") or None,
            }
        )
    # History recorded from callbacks wins: first-seen facts are only filled where missing.
    ids = dict(
        upsert(
            Subscriber,
            rows,
            conflict=["account_id", "openid"],
            keep_existing=["unionid", "person_id", "first_followed_at"],
            custom=_newer_follow_wins(),
            returning=["openid", "id"],
        )
    )
    db.session.execute(sa.delete(SubscriberTag).where(SubscriberTag.subscriber_id.in_(list(ids.values()))))
    links = [
        {"subscriber_id": ids[i["openid"]], "tag_id": tag_ids[int(t)]}
        for i in infos
        for t in (i.get("tagid_list") or [])
        if int(t) in tag_ids and i["openid"] in ids
    ]
    if links:
        db.session.execute(sa.insert(SubscriberTag), links)


def _newer_follow_wins() -> dict[str, Any]:
    """A snapshot never rewrites newer history recorded from callbacks (an unfollow after the
    snapshot's follow, a later follow with its own scene) and never writes NULL over a value."""

    def newer(cur: Any, new: Any) -> Any:
        return sa.or_(cur.last_followed_at.is_(None), new.last_followed_at > cur.last_followed_at)

    def after_unfollow(cur: Any, new: Any) -> Any:
        return sa.or_(cur.last_unfollowed_at.is_(None), new.last_followed_at >= cur.last_unfollowed_at)

    return {
        "following": lambda cur, new: sa.case((after_unfollow(cur, new), True), else_=cur.following),
        "last_followed_at": lambda cur, new: sa.case(
            (newer(cur, new), new.last_followed_at), else_=cur.last_followed_at
        ),
        "subscribe_scene": lambda cur, new: sa.case(
            (sa.and_(newer(cur, new), new.subscribe_scene.is_not(None)), new.subscribe_scene),
            else_=cur.subscribe_scene,
        ),
        "qr_scene": lambda cur, new: sa.case((newer(cur, new), new.qr_scene), else_=cur.qr_scene),
    }
