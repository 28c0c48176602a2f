"""Recovery and the periodic tick: rows of dead send jobs resolved by their marks, stalled
campaigns kicked, due campaigns started."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, cast

import redis
import sqlalchemy as sa

from templates_msg import services
from templates_msg.models import (
    Campaign,
    CampaignState,
    Delivery,
    DeliveryStatus,
    EarlyReport,
)
from templates_msg.reports import sweep_early_reports
from templates_msg.sending.sender import (
    BATCH_CLAIM,
    LEASE_SECONDS,
    Outcome,
    flush,
    maybe_complete,
    redis_run_id,
    send_job_id,
)
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary
from wechat_service.extensions import db, get_queue, get_redis

log = logging.getLogger(__name__)


@step_boundary("recovered rows are released before new jobs pick them")
def recover(older_than: float = LEASE_SECONDS) -> dict[str, int]:
    """Rows left ``sending`` by a job that died: resolved from their Redis marks (see the module)."""
    conn = get_redis()
    run_id = redis_run_id(conn)
    cutoff = utcnow() - timedelta(seconds=older_than)
    counts: dict[str, int] = {}
    claims = db.session.scalars(
        sa.select(Delivery.claim)
        .where(Delivery.status == DeliveryStatus.sending, Delivery.claimed_at < cutoff)
        .distinct()
        .limit(500)
    ).all()
    for claim_id in claims:
        if claim_id and conn.exists(f"tm:lease:{claim_id}"):
            continue  # its job is alive
        rows = db.session.execute(
            sa.select(Delivery.id, Delivery.account_id, Delivery.openid, Delivery.attempts).where(
                Delivery.claim == claim_id, Delivery.status == DeliveryStatus.sending
            )
        ).all()
        trusted = bool(claim_id and claim_id.split(":", 1)[0] == run_id)
        marks = conn.mget([f"tm:dm:{r.id}" for r in rows]) if trusted and rows else [None] * len(rows)
        results = []
        for row, mark in zip(rows, marks, strict=True):
            out = _from_mark(cast(bytes, mark).decode() if mark else None, trusted)  # Redis answers bytes
            results.append((row, out))
            counts[out.status.value] = counts.get(out.status.value, 0) + 1
        by_account: dict[int, list[tuple[Any, Outcome]]] = {}
        for row, out in results:
            by_account.setdefault(row.account_id, []).append((row, out))
        for account_id, items in by_account.items():
            flush(account_id, claim_id, items)
        db.session.commit()
    return counts


def _from_mark(mark: str | None, trusted: bool) -> Outcome:
    if not trusted:
        return Outcome(DeliveryStatus.unknown, reason="send job lost with Redis: may have been sent")
    if mark is None or mark == "r":
        return Outcome(DeliveryStatus.pending, reason=None)
    if mark == "s":
        return Outcome(DeliveryStatus.unknown, reason="send job died mid-request: may have been sent")
    kind, _, value = mark.partition(":")
    if kind == "ok":
        return Outcome(DeliveryStatus.sent, msgid=int(value) or None)
    code = int(value) if value.lstrip("-").isdigit() else None
    return Outcome(
        DeliveryStatus.skipped if kind == "k" else DeliveryStatus.failed,
        errcode=code,
        reason=f"errcode {code}",
    )


def _died_mid_batch(conn: redis.Redis, job_id: str) -> bool:
    """A send job RQ still lists as started, whose last claim's lease has run out: its worker was
    killed (RQ notices only when the job's heartbeat expires, minutes later)."""
    claim_id = conn.get(BATCH_CLAIM.format(job_id))
    return claim_id is not None and not conn.exists(f"tm:lease:{cast(bytes, claim_id).decode()}")


@step_boundary("the campaign's move is durable before its jobs are enqueued")
def kick(campaign_id: int) -> int:
    """Queue what a sending campaign needs: its planning, and a send job for every batch with
    pending rows on an account that is not paused — unless such a job is queued or running."""
    from rq.job import Job, JobStatus

    campaign = db.session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None or campaign.state is not CampaignState.sending:
        db.session.commit()
        return 0
    queue = get_queue("default")
    queued = 0

    def live(job_id: str) -> bool:
        try:
            status = Job.fetch(job_id, connection=queue.connection).get_status()
        except Exception:  # noqa: BLE001 - no such job (expired, or Redis lost it)
            return False
        if status == JobStatus.STARTED and _died_mid_batch(queue.connection, job_id):
            return False  # RQ still calls it started (for minutes): its rows need a new job
        return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)

    if not campaign.planned and not live(f"tm-plan-{campaign_id}"):
        queue.enqueue(
            "templates_msg.jobs.plan_campaign", campaign_id, job_id=f"tm-plan-{campaign_id}", job_timeout=3600
        )
        queued += 1
    now = utcnow()
    for ca in services.campaign_accounts(campaign_id):
        if ca.paused_until and ca.paused_until > now:
            continue
        if ca.paused_until:
            ca.paused_until, ca.pause_reason = None, None
        batches = db.session.scalars(
            sa.select(Delivery.batch_no)
            .where(
                Delivery.campaign_id == campaign_id,
                Delivery.account_id == ca.account_id,
                Delivery.status == DeliveryStatus.pending,
            )
            .distinct()
        ).all()
        for batch in batches:
            job_id = send_job_id(campaign_id, ca.account_id, batch)
            if not live(job_id):
                queue.enqueue(
                    "templates_msg.jobs.send_batch",
                    campaign_id,
                    ca.account_id,
                    batch,
                    job_id=job_id,
                    job_timeout=3600,
                )
                queued += 1
    db.session.commit()
    maybe_complete(campaign_id)
    return queued


@step_boundary("the campaign is running (committed) before its planning job starts")
def start(campaign_id: int) -> bool:
    """scheduled → sending when due, then plan."""
    campaign = db.session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None or campaign.state is not CampaignState.scheduled:
        return False
    if campaign.scheduled_at and campaign.scheduled_at > utcnow():
        return False
    if not services.transition(
        campaign_id, CampaignState.scheduled, CampaignState.sending, None, None, started_at=utcnow()
    ):
        return False
    db.session.commit()
    kick(campaign_id)
    return True


@step_boundary("each due campaign moves in its own commit")
def tick() -> dict[str, int]:
    """Cron: start due campaigns, recover dead jobs' rows, resume paused accounts, re-queue lost jobs,
    apply reports that arrived before their send result."""

    out = {"started": 0, "kicked": 0}
    due = db.session.scalars(
        sa.select(Campaign.id).where(
            Campaign.state == CampaignState.scheduled,
            sa.or_(Campaign.scheduled_at.is_(None), Campaign.scheduled_at <= utcnow()),
        )
    ).all()
    db.session.commit()
    for cid in due:
        out["started"] += int(start(cid))
    out.update(recover())
    for cid in db.session.scalars(
        sa.select(Campaign.id).where(Campaign.state == CampaignState.sending)
    ).all():
        out["kicked"] += kick(cid)
    out["early_reports"] = sweep_early_reports()
    db.session.commit()
    return out


def early_report_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(EarlyReport)) or 0
