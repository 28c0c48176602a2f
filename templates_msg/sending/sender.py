"""The sender: claim, send, mark, flush — throttled, exactly once per delivery.

Exactly once rests on the database and on a per-delivery mark in Redis:

* A send job claims a chunk of pending rows (``status = sending``, ``claim = <redis run_id>:<uuid>``)
  in one committed UPDATE … FOR UPDATE SKIP LOCKED, so two copies of a job never hold the same row.
* Before each HTTP call it writes ``tm:dm:<id> = s`` (and refreshes its lease); after the answer,
  the outcome (``ok:<msgid>``, ``f:<errcode>``, ``k:<errcode>``, ``r`` released). Results reach the
  database once per chunk.
* A job killed mid-chunk leaves rows in ``sending`` with a dead lease. Recovery reads each row's mark:
  no mark or ``r`` → pending again (the request never left); ``s`` → unknown (it may have reached
  WeChat: never resent); an outcome → that outcome. If Redis restarted since the claim (its run_id
  changed), marks cannot be trusted and every such row becomes unknown.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis
import requests
import sqlalchemy as sa
from flask import current_app

from accounts import subscribers
from accounts.models import Account
from templates_msg import services
from templates_msg.models import (
    Campaign,
    CampaignAccount,
    CampaignState,
    Delivery,
    DeliveryStatus,
    OptOut,
    SubscribeAuthorization,
    TemplateKind,
)
from templates_msg.reports import apply_early_reports
from templates_msg.sending.budget import acquire, give_back_budget, local_day, take_budget, timezone_of
from templates_msg.tracking import token_for
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, step_boundary, upsert
from wechat_service.extensions import db, get_queue, get_redis
from wechat_service.gateway import (
    BadTemplateError,
    BusyError,
    ConfigurationError,
    GatewayClient,
    RateLimitedError,
    RecipientUnavailableError,
    TokenError,
    UnreachableError,
    WeChatAPIError,
    token_manager,
)

log = logging.getLogger(__name__)

CHUNK = 25  # rows claimed per transaction inside a send job: the most a crash leaves unresolved
LEASE_SECONDS = 15
MAX_ATTEMPTS = 3
BATCH_CLAIM = "tm:batch-claim:{}"  # the claim id a send job holds for its batch (recovery reads it)


def send_job_id(campaign_id: int, account_id: int, batch_no: int) -> str:
    """The send job of one batch (its RQ id: a batch is sent by one job at a time)."""
    return f"tm-send-{campaign_id}-{account_id}-{batch_no}"


@dataclass
class Outcome:
    status: DeliveryStatus
    msgid: int | None = None
    errcode: int | None = None
    reason: str | None = None
    action: str | None = None  # retry | pause_minute | pause_day | fail_campaign | pause_campaign


def classify(exc: WeChatAPIError) -> Outcome:
    """The error table of the issue: what happens to the recipient and to the campaign."""
    code = exc.errcode
    msg = f"{code} {exc.errmsg}".strip()[:256]
    if isinstance(exc, RecipientUnavailableError):  # 40003, 43004, 43101
        return Outcome(DeliveryStatus.skipped, errcode=code, reason=msg)
    if isinstance(exc, BusyError):  # -1 after the gateway's own backoff
        return Outcome(DeliveryStatus.pending, errcode=code, reason=msg, action="retry")
    if isinstance(exc, RateLimitedError):
        action = "pause_day" if code == 45009 else "pause_minute"
        return Outcome(DeliveryStatus.pending, errcode=code, reason=msg, action=action)
    if isinstance(exc, BadTemplateError):  # 47003, 40037
        return Outcome(DeliveryStatus.failed, errcode=code, reason=msg, action="fail_campaign")
    if isinstance(exc, (ConfigurationError, TokenError)):  # 40164 whitelist etc.: a human fixes it
        return Outcome(DeliveryStatus.pending, errcode=code, reason=msg, action="pause_campaign")
    if isinstance(exc, UnreachableError):
        if _before_sending(exc):
            return Outcome(DeliveryStatus.pending, reason=msg, action="retry")
        return Outcome(DeliveryStatus.unknown, reason=f"no answer: {msg}"[:256])
    return Outcome(DeliveryStatus.failed, errcode=code, reason=msg)


def _before_sending(exc: BaseException) -> bool:
    """Only a failed connect proves the request never left; a read timeout or a reset may come
    after WeChat accepted it. (The gateway raises ``from None``; the cause stays in __context__.)"""
    cause = exc.__context__
    if isinstance(cause, requests.ConnectTimeout):
        return True
    if isinstance(cause, requests.ConnectionError) and not isinstance(cause, requests.ReadTimeout):
        text = repr(cause)
        return "NewConnectionError" in text or "Failed to establish" in text or "ConnectTimeoutError" in text
    return False


def client(account_id: int, cache: dict[int, GatewayClient]) -> GatewayClient:
    """One keep-alive client per account per job; campaign sends may use their own timeout."""
    if account_id not in cache:
        account = db.session.get_one(Account, account_id)
        cfg = current_app.config
        cache[account_id] = GatewayClient(
            account.appid,
            account.app_secret,
            api_base=cfg["WECHAT_API_BASE"],
            tokens=token_manager(),
            timeout=float(cfg.get("CAMPAIGN_HTTP_TIMEOUT", cfg["WECHAT_HTTP_TIMEOUT"])),
            busy_retries=cfg["WECHAT_BUSY_RETRIES"],
        )
    return cache[account_id]


def send_one(api: GatewayClient, kind: TemplateKind, body: dict[str, Any]) -> Outcome:
    endpoint = "message/subscribe/send" if kind is TemplateKind.subscribe else "message/template/send"
    try:
        result = api.post(endpoint, data=body)
    except WeChatAPIError as exc:
        return classify(exc)
    return Outcome(DeliveryStatus.sent, msgid=int(result["msgid"]) if result.get("msgid") else None)


def click_url(delivery_id: int) -> str:
    return f"{current_app.config['PUBLIC_BASE_URL']}/t/{token_for(delivery_id)}"


def message_body(
    campaign: Campaign, template_id: str, row: Any, variables: dict[str, str] | None
) -> dict[str, Any]:
    data = services.render_data(campaign.data or {}, variables or {})
    if campaign.kind is TemplateKind.subscribe:
        body: dict[str, Any] = {"touser": row.openid, "template_id": template_id, "data": data}
        if campaign.mp_page:
            body["page"] = campaign.mp_page
        return body
    body = {"touser": row.openid, "template_id": template_id, "data": data, "client_msg_id": f"tm{row.id}"}
    if campaign.link_url:
        body["url"] = click_url(row.id)
    if campaign.mp_appid:
        body["miniprogram"] = {"appid": campaign.mp_appid, "pagepath": campaign.mp_page or ""}
    return body


def _variables(account_id: int, subscriber_ids: list[int]) -> dict[int, dict[str, str]]:
    """Per-recipient variables for a chunk, in three queries (only when the campaign uses them)."""
    name = db.session.scalar(sa.select(Account.name).where(Account.id == account_id)) or ""
    tz = ZoneInfo(timezone_of(account_id))
    return {
        sid: {
            "openid": p["openid"],
            "account_name": name,
            "channel": p["channel"],
            "tags": p["tags"],
            "follow_date": p["first_followed_at"].astimezone(tz).strftime("%Y-%m-%d")
            if p["first_followed_at"]
            else "",
        }
        for sid, p in subscribers.profiles(subscriber_ids).items()
    }


def redis_run_id(conn: redis.Redis) -> str:
    return str(conn.info("server").get("run_id", "?"))[:40]


@step_boundary("rows are claimed (committed) before any is sent, so no two jobs send one row")
def claim(campaign_id: int, account_id: int, batch_no: int, limit: int, claim_id: str) -> list[Any]:
    """Take up to ``limit`` pending rows of the batch for this job, committed before any send."""
    pick = (
        sa.select(Delivery.id)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.account_id == account_id,
            Delivery.batch_no == batch_no,
            Delivery.status == DeliveryStatus.pending,
        )
        .order_by(Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = db.session.execute(
        sa.update(Delivery)
        .where(Delivery.id.in_(pick.scalar_subquery()))
        .values(
            status=DeliveryStatus.sending, claim=claim_id, claimed_at=utcnow(), attempts=Delivery.attempts + 1
        )
        .returning(Delivery.id, Delivery.openid, Delivery.subscriber_id, Delivery.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    db.session.commit()
    return sorted(rows, key=lambda r: r.id)


_RESULT = (
    sa.update(Delivery.__table__)
    .where(Delivery.__table__.c.id == sa.bindparam("did"), Delivery.__table__.c.claim == sa.bindparam("cl"))
    .values(
        status=sa.bindparam("st"),
        msgid=sa.bindparam("mid"),
        errcode=sa.bindparam("ec"),
        reason=sa.bindparam("rs"),
        sent_at=sa.bindparam("at"),
        claim=None,
    )
)


def flush(account_id: int, claim_id: str | None, results: list[tuple[Any, Outcome]]) -> None:
    """Every result of a chunk in one statement, then reports that came in before it."""
    if not results:
        return
    now = utcnow()
    params = []
    for row, out in results:
        status = out.status
        if status is DeliveryStatus.pending and row.attempts >= MAX_ATTEMPTS and out.action == "retry":
            status = DeliveryStatus.failed
        params.append(
            {
                "did": row.id,
                "cl": claim_id,
                "st": status.value,
                "mid": out.msgid,
                "ec": out.errcode,
                "rs": out.reason,
                "at": now if status in (DeliveryStatus.sent, DeliveryStatus.unknown) else None,
            }
        )
    db.session.execute(_RESULT, params)
    skipped = [(row.openid, out) for row, out in results if out.status is DeliveryStatus.skipped]
    if skipped:
        upsert(
            OptOut,
            [
                {"account_id": account_id, "openid": o, "reason": f"errcode {out.errcode}", "created_at": now}
                for o, out in skipped
            ],
            conflict=["account_id", "openid"],
        )
    msgids = [out.msgid for _, out in results if out.msgid]
    if msgids:
        apply_early_reports(account_id, msgids)


def _in_quiet_hours(campaign: Campaign, account_id: int) -> datetime | None:
    """When the account's night ends, if it is night there now."""
    if campaign.quiet_start is None or campaign.quiet_end is None:
        return None
    tz = ZoneInfo(timezone_of(account_id))
    now = datetime.now(tz)
    start, end = campaign.quiet_start, campaign.quiet_end
    quiet = (start <= now.hour or now.hour < end) if start > end else (start <= now.hour < end)
    if not quiet:
        return None
    until = now.replace(hour=end, minute=0, second=0, microsecond=0)
    if until <= now:
        until += timedelta(days=1)
    return until


@step_boundary("the pause is durable before the job stops")
def pause_account(campaign_id: int, account_id: int, until: datetime, reason: str) -> None:
    """This account of the campaign waits until ``until``; RQ's scheduler resumes it then (the
    cron tick is the safety net)."""

    db.session.execute(
        sa.update(CampaignAccount)
        .where(CampaignAccount.campaign_id == campaign_id, CampaignAccount.account_id == account_id)
        .values(paused_until=until, pause_reason=reason)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    get_queue("default").enqueue_at(until, "templates_msg.jobs.kick_campaign", campaign_id)


@step_boundary("claim, send, mark: each chunk's marks are durable before the next chunk")
def send_batch(campaign_id: int, account_id: int, batch_no: int) -> dict[str, int]:
    """Send a batch's pending rows, chunk by chunk; safe to run twice or concurrently."""
    conn = get_redis()
    run_id = redis_run_id(conn)
    apis: dict[int, GatewayClient] = {}
    counts = {"sent": 0, "failed": 0, "skipped": 0, "unknown": 0, "released": 0}
    while True:
        campaign = db.session.get(Campaign, campaign_id, populate_existing=True)
        ca = db.session.scalar(
            sa.select(CampaignAccount).where(
                CampaignAccount.campaign_id == campaign_id, CampaignAccount.account_id == account_id
            )
        )
        db.session.commit()  # end the read transaction: the next chunk sees fresh state
        if campaign is None or ca is None or campaign.state is not CampaignState.sending:
            break
        if ca.paused_until and ca.paused_until > utcnow():
            break
        night_ends = _in_quiet_hours(campaign, account_id)
        if night_ends is not None:
            pause_account(campaign_id, account_id, night_ends, "quiet hours")
            break
        budget = take_budget(account_id, CHUNK)
        if budget == 0:
            _, midnight = local_day(account_id)
            pause_account(campaign_id, account_id, midnight, "daily budget used")
            break
        claim_id = f"{run_id}:{uuid.uuid4().hex}"
        conn.set(f"tm:lease:{claim_id}", 1, ex=LEASE_SECONDS)
        # Which claim this batch's job holds: kick() tells a dead job from a running one by it.
        conn.set(BATCH_CLAIM.format(send_job_id(campaign_id, account_id, batch_no)), claim_id, ex=86400)
        rows = claim(campaign_id, account_id, batch_no, budget, claim_id)
        if not rows:
            give_back_budget(account_id, budget)
            break
        variables = (
            _variables(account_id, [r.subscriber_id for r in rows])
            if services.uses_variables(campaign.data or {})
            else {}
        )
        action = _send_chunk(
            conn, campaign, ca.template_id, account_id, claim_id, rows, variables, apis, counts
        )
        give_back_budget(account_id, budget - counts.pop("_used", 0))
        db.session.commit()
        if action:
            _act(campaign_id, account_id, batch_no, action, rows)
            break
        if _error_rate_exceeded(conn, campaign):
            services.transition(
                campaign_id, CampaignState.sending, CampaignState.paused, None, "error rate above threshold"
            )
            db.session.commit()
            break
    maybe_complete(campaign_id)
    return counts


def _send_chunk(
    conn: redis.Redis,
    campaign: Campaign,
    template_id: str,
    account_id: int,
    claim_id: str,
    rows: list[Any],
    variables: dict[int, dict[str, str]],
    apis: dict[int, GatewayClient],
    counts: dict[str, int],
) -> str | None:
    api = client(account_id, apis)
    results: list[tuple[Any, Outcome]] = []
    action = None
    halt_key = services.HALT.format(campaign.id)
    lease = f"tm:lease:{claim_id}"
    used = 0
    for i, row in enumerate(rows):
        pipe = conn.pipeline(transaction=False)
        pipe.exists(halt_key)
        pipe.set(f"tm:dm:{row.id}", "s", ex=86400)
        pipe.expire(lease, LEASE_SECONDS)
        halted = pipe.execute()[0]
        if halted or action:
            # Paused, cancelled or stopped by an error within this chunk: the rest go back untouched.
            conn.mset({f"tm:dm:{r.id}": "r" for r in rows[i:]})
            results.extend((r, Outcome(DeliveryStatus.pending, reason="released")) for r in rows[i:])
            counts["released"] += len(rows) - i
            break
        if campaign.kind is TemplateKind.subscribe and not _take_authorisation(
            account_id, row.openid, template_id
        ):
            conn.set(f"tm:dm:{row.id}", "r", ex=86400)
            results.append((row, Outcome(DeliveryStatus.skipped, reason="no subscribe authorisation")))
            counts["skipped"] += 1
            continue
        acquire(campaign.id, account_id, campaign.rate)
        out = send_one(
            api, campaign.kind, message_body(campaign, template_id, row, variables.get(row.subscriber_id))
        )
        conn.set(f"tm:dm:{row.id}", mark_of(out), ex=86400)
        results.append((row, out))
        if out.status in (DeliveryStatus.sent, DeliveryStatus.unknown):
            used += 1
        if out.status is not DeliveryStatus.pending:
            counts[out.status.value] = counts.get(out.status.value, 0) + 1
        if out.action:
            action = out.action  # the rest of the chunk is released on the next pass
    flush(account_id, claim_id, results)
    _count_errors(conn, campaign.id, results)
    counts["_used"] = used
    return action


def mark_of(out: Outcome) -> str:
    if out.status is DeliveryStatus.sent:
        return f"ok:{out.msgid or 0}"
    if out.status is DeliveryStatus.unknown:
        return "s"
    if out.status is DeliveryStatus.pending:
        return "r"
    return f"{'k' if out.status is DeliveryStatus.skipped else 'f'}:{out.errcode or 0}"


@step_boundary("the approval is claimed before sending starts")
def _take_authorisation(account_id: int, openid: str, template_id: str) -> bool:
    """Spend one of the user's one-time authorisations for this template (conditional UPDATE)."""
    taken = execute_dml(
        sa.update(SubscribeAuthorization)
        .where(
            SubscribeAuthorization.account_id == account_id,
            SubscribeAuthorization.openid == openid,
            SubscribeAuthorization.template_id == template_id,
            SubscribeAuthorization.remaining > 0,
        )
        .values(remaining=SubscribeAuthorization.remaining - 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return taken == 1


def _count_errors(conn: redis.Redis, campaign_id: int, results: list[tuple[Any, Outcome]]) -> None:
    tried = [o for _, o in results if o.reason != "released" and o.status is not DeliveryStatus.skipped]
    bad = [o for o in tried if o.status in (DeliveryStatus.failed, DeliveryStatus.unknown)]
    if tried:
        pipe = conn.pipeline(transaction=False)
        pipe.hincrby(f"tm:err:{campaign_id}", "n", len(tried))
        pipe.hincrby(f"tm:err:{campaign_id}", "bad", len(bad))
        pipe.expire(f"tm:err:{campaign_id}", 7 * 86400)
        pipe.execute()


def _error_rate_exceeded(conn: redis.Redis, campaign: Campaign) -> bool:
    raw = conn.hgetall(f"tm:err:{campaign.id}")
    n, bad = int(raw.get(b"n", 0)), int(raw.get(b"bad", 0))
    minimum = int(current_app.config.get("CAMPAIGN_ERROR_MIN_SAMPLE", 50))
    return n >= minimum and bad / n > campaign.error_threshold


@step_boundary("a send's outcome (sent, failed, paused) is durable before the next row")
def _act(campaign_id: int, account_id: int, batch_no: int, action: str, rows: list[Any]) -> None:
    now = utcnow()
    if action == "pause_day":
        _, midnight = local_day(account_id)
        pause_account(campaign_id, account_id, midnight, "45009: daily quota reached")
    elif action == "pause_minute":
        pause_account(campaign_id, account_id, now + timedelta(seconds=60), "45011: minute quota reached")
    elif action == "retry":
        attempts = max((r.attempts for r in rows), default=1)
        delay = min(60, 2**attempts)
        get_queue("default").enqueue_in(
            timedelta(seconds=delay), "templates_msg.jobs.send_batch", campaign_id, account_id, batch_no
        )
    elif action == "fail_campaign":
        reason = db.session.scalar(
            sa.select(Delivery.reason)
            .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.failed)
            .order_by(Delivery.id.desc())
            .limit(1)
        )
        services.transition(
            campaign_id,
            CampaignState.sending,
            CampaignState.failed,
            None,
            f"WeChat refused the template: {reason}",
            finished_at=now,
        )
        db.session.commit()
    elif action == "pause_campaign":
        services.transition(
            campaign_id,
            CampaignState.sending,
            CampaignState.paused,
            None,
            "account configuration error (token, IP whitelist): fix it, then resume",
        )
        db.session.commit()


@step_boundary("the campaign's completion is one conditional commit")
def maybe_complete(campaign_id: int) -> bool:
    """Completed once everything is planned and no row is pending or in flight."""
    campaign = db.session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None or campaign.state is not CampaignState.sending or not campaign.planned:
        db.session.commit()
        return False
    open_rows = db.session.scalar(
        sa.select(
            sa.exists().where(
                Delivery.campaign_id == campaign_id,
                Delivery.status.in_([DeliveryStatus.pending, DeliveryStatus.sending]),
            )
        )
    )
    done = False
    if not open_rows:
        done = services.transition(
            campaign_id, CampaignState.sending, CampaignState.completed, None, None, finished_at=utcnow()
        )
    db.session.commit()
    return done
