"""Planning: a campaign's segment, account by account, into pending delivery rows — in batches
of BATCH_SIZE, each handed to one send job."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import sqlalchemy as sa
from flask import current_app

from templates_msg import services
from templates_msg.models import (
    Campaign,
    CampaignState,
    Delivery,
    DeliveryStatus,
)
from templates_msg.sending.sender import maybe_complete, send_job_id
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary, upsert
from wechat_service.extensions import db, enqueue_after_commit, get_redis

log = logging.getLogger(__name__)

BATCH_SIZE = 500  # subscribers planned per batch; one send job per batch (≥100, see DESIGN)


@dataclass(frozen=True)
class _Draw:
    """How a campaign picks its recipients: the sample and control cuts of the hash bucket, and
    whether one person (unionid) gets one message across the matrix."""

    campaign_id: int
    sample_cut: int
    control_cut: int
    dedup: bool


@step_boundary("planning in batches: each batch's rows are durable before the next is planned")
def plan(campaign_id: int) -> int:
    """Materialise recipients into delivery rows, one batch per committed step (keyset on subscriber
    id, resumable from ``plan_cursor``); each batch's send job is queued as soon as it commits."""
    campaign = services.campaign_by_id(campaign_id)
    if campaign.state is not CampaignState.sending or campaign.planned:
        return 0
    segment, cid = dict(campaign.segment or {}), campaign.id
    sample_cut = campaign.sample_pct * 100
    draw = _Draw(cid, sample_cut, sample_cut * campaign.control_pct // 100, campaign.dedup_unionid)
    batch_size = int(current_app.config.get("CAMPAIGN_BATCH_SIZE", BATCH_SIZE))
    made = 0
    for ca in services.campaign_accounts(cid):
        while not ca.planned:
            base = services.segment_query(ca.account_id, segment, exclude_campaign=cid)
            rows = db.session.execute(
                base.where(sa.literal_column("subscribers.id") > ca.plan_cursor)
                .order_by(sa.literal_column("subscribers.id"))
                .limit(batch_size)
            ).all()
            if not rows:
                ca.planned = True
                db.session.commit()
                break
            made += _plan_batch(draw, ca, rows)
            db.session.commit()
            if _halted(cid):
                return made
    db.session.execute(
        sa.update(Campaign)
        .where(Campaign.id == cid)
        .values(planned=True)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    maybe_complete(cid)
    return made


def _plan_batch(draw: _Draw, ca: Any, rows: Sequence[Any]) -> int:
    """One batch of the account's recipients into delivery rows (flushed; the caller commits), its
    send job queued for after the commit. How many rows it wrote."""
    batch = ca.next_batch
    values = [_delivery(draw, ca.account_id, batch, r) for r in _drawn(draw, rows)]
    upsert(Delivery, values, conflict=["campaign_id", "account_id", "openid"])
    ca.plan_cursor = rows[-1].id
    ca.next_batch = batch + 1
    if any(not v["control"] for v in values):
        enqueue_after_commit(
            "default",
            "templates_msg.jobs.send_batch",
            draw.campaign_id,
            ca.account_id,
            batch,
            job_id=send_job_id(draw.campaign_id, ca.account_id, batch),
        )
    return len(values)


def _drawn(draw: _Draw, rows: Sequence[Any]) -> list[tuple[Any, bool]]:
    """The rows in the sample, each with whether it is in the control group; with ``dedup``, a
    person already planned (in this campaign, or earlier in these rows) is left out."""
    seen: set[int] = set()
    persons = [r.person_id for r in rows if r.person_id]
    if draw.dedup and persons:
        seen = set(
            db.session.scalars(
                sa.select(Delivery.person_id).where(
                    Delivery.campaign_id == draw.campaign_id, Delivery.person_id.in_(persons)
                )
            )
        )
    out = []
    for r in rows:
        b = services.bucket(draw.campaign_id, r.openid)
        if b >= draw.sample_cut:
            continue
        if draw.dedup and r.person_id:
            if r.person_id in seen:
                continue
            seen.add(r.person_id)
        out.append((r, b < draw.control_cut))
    return out


def _delivery(draw: _Draw, account_id: int, batch: int, drawn: tuple[Any, bool]) -> dict[str, Any]:
    r, control = drawn
    return {
        "campaign_id": draw.campaign_id,
        "account_id": account_id,
        "subscriber_id": r.id,
        "person_id": r.person_id,
        "openid": r.openid,
        "batch_no": batch,
        "control": control,
        "status": DeliveryStatus.skipped if control else DeliveryStatus.pending,
        "reason": "control_group" if control else None,
        "attempts": 0,
        "clicks": 0,
        "kind": "campaign",
        "created_at": utcnow(),
    }


def _halted(campaign_id: int) -> bool:
    try:
        return get_redis().exists(services.HALT.format(campaign_id)) == 1
    except redis.RedisError:
        return False
