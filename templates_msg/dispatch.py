"""Dispatch: planning into delivery rows, throttled sending, recovery after a crash.

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
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
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
    EarlyReport,
    OptOut,
    SubscribeAuthorization,
    TemplateKind,
)
from templates_msg.reports import apply_early_reports, sweep_early_reports
from templates_msg.tracking import token_for
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, step_boundary, upsert
from wechat_service.extensions import db, enqueue_after_commit, get_queue, get_redis
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

BATCH_SIZE = 500  # subscribers planned per batch; one send job per batch (≥100, see DESIGN)
CHUNK = 25  # rows claimed per transaction inside a send job: the most a crash leaves unresolved
LEASE_SECONDS = 15
MAX_ATTEMPTS = 3
DEFAULT_DAILY_QUOTA = 100_000
TRANSACTIONAL_RESERVE = 0.05  # of the daily quota, kept for transactional messages

# -- Redis: token bucket and daily budget ----------------------------------------------------------

# One bucket per (campaign, account), shared by every worker. Redis' own clock (TIME) so that
# workers on different machines agree; a full bucket holds one second's worth of tokens.
BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst = math.max(1, rate)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 120)
local wait = 0
if granted < want then wait = math.ceil((1 - tokens) / rate * 1000) end
return {granted, wait}
"""

# Take n from today's budget if it fits under the limit; -1 when the counter is not seeded yet.
BUDGET_LUA = """
local used = redis.call('GET', KEYS[1])
if not used then return -1 end
used = tonumber(used)
local limit, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local granted = math.max(0, math.min(n, limit - used))
if granted > 0 then redis.call('INCRBY', KEYS[1], granted) end
return granted
"""


def _script(name: str, source: str) -> Any:
    conn = get_redis()
    cache = current_app.extensions.setdefault("templates_msg_scripts", {})
    if name not in cache:
        cache[name] = conn.register_script(source)
    return cache[name]


def take_tokens(campaign_id: int | str, account_id: int, rate: float, want: int = 1) -> tuple[int, float]:
    """(granted, seconds to wait before asking again)."""
    granted, wait_ms = _script("bucket", BUCKET_LUA)(
        keys=[f"tm:tb:{campaign_id}:{account_id}"], args=[rate, want]
    )
    return int(granted), int(wait_ms) / 1000


def acquire(campaign_id: int | str, account_id: int, rate: float) -> None:
    """Block until one token is ours (rate 0: unthrottled)."""
    if rate <= 0:
        return
    while True:
        granted, wait = take_tokens(campaign_id, account_id, rate)
        if granted:
            return
        time.sleep(min(max(wait, 0.001), 1.0))


def _local_day(account_id: int) -> tuple[str, datetime]:
    tz = ZoneInfo(_timezone(account_id))
    now = datetime.now(tz)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y%m%d"), midnight


def _timezone(account_id: int) -> str:
    cache = current_app.extensions.setdefault("templates_msg_tz", {})
    if account_id not in cache:
        cache[account_id] = (
            db.session.scalar(sa.select(Account.timezone).where(Account.id == account_id)) or "Asia/Shanghai"
        )
    return cache[account_id]


def daily_quota() -> int:
    return int(current_app.config.get("CAMPAIGN_DAILY_QUOTA", DEFAULT_DAILY_QUOTA))


def take_budget(account_id: int, n: int, transactional: bool = False) -> int:
    """Up to ``n`` sends from the account's daily budget. Campaigns stop short of the quota by a
    reserve that transactional messages may use. Seeded from the database's count of today's
    sends when Redis has no counter (a restart), so the budget survives a Redis restart."""
    day, midnight = _local_day(account_id)
    key = f"tm:budget:{account_id}:{day}"
    limit = daily_quota() if transactional else int(daily_quota() * (1 - TRANSACTIONAL_RESERVE))
    take = _script("budget", BUDGET_LUA)
    granted = int(take(keys=[key], args=[limit, n]))
    if granted < 0:
        start = midnight - timedelta(days=1)
        used = db.session.scalar(
            sa.select(sa.func.count()).where(
                Delivery.account_id == account_id,
                Delivery.sent_at >= start,
                Delivery.status.in_([DeliveryStatus.sent, DeliveryStatus.unknown]),
            )
        )
        get_redis().set(key, int(used or 0), nx=True, ex=2 * 86400)
        granted = int(take(keys=[key], args=[limit, n]))
    return max(granted, 0)


def give_back_budget(account_id: int, n: int) -> None:
    if n > 0:
        day, _ = _local_day(account_id)
        get_redis().decrby(f"tm:budget:{account_id}:{day}", n)


# -- planning --------------------------------------------------------------------------------------


@step_boundary("planning in batches: each batch's rows are durable before the next is planned")
def plan(campaign_id: int) -> int:
    """Materialise recipients into delivery rows, one batch per committed step (keyset on subscriber
    id, resumable from ``plan_cursor``); each batch's send job is queued as soon as it commits."""

    campaign = services.campaign_by_id(campaign_id)
    if campaign.state is not CampaignState.sending or campaign.planned:
        return 0
    segment, cid = dict(campaign.segment or {}), campaign.id
    sample_cut = campaign.sample_pct * 100
    control_cut = sample_cut * campaign.control_pct // 100
    dedup = campaign.dedup_unionid
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
            seen: set[int] = set()
            if dedup:
                persons = [r.person_id for r in rows if r.person_id]
                seen = (
                    set(
                        db.session.scalars(
                            sa.select(Delivery.person_id).where(
                                Delivery.campaign_id == cid, Delivery.person_id.in_(persons)
                            )
                        )
                    )
                    if persons
                    else set()
                )
            batch, values = ca.next_batch, []
            for r in rows:
                b = services.bucket(cid, r.openid)
                if b >= sample_cut:
                    continue
                if dedup and r.person_id:
                    if r.person_id in seen:
                        continue
                    seen.add(r.person_id)
                control = b < control_cut
                values.append(
                    {
                        "campaign_id": cid,
                        "account_id": ca.account_id,
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
                )
            upsert(Delivery, values, conflict=["campaign_id", "account_id", "openid"])
            ca.plan_cursor = rows[-1].id
            ca.next_batch = batch + 1
            if any(not v["control"] for v in values):
                enqueue_after_commit(
                    "default",
                    "templates_msg.jobs.send_batch",
                    cid,
                    ca.account_id,
                    batch,
                    job_id=_job_id(cid, ca.account_id, batch),
                )
            made += len(values)
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


def _job_id(campaign_id: int, account_id: int, batch_no: int) -> str:
    return f"tm-send-{campaign_id}-{account_id}-{batch_no}"


def _halted(campaign_id: int) -> bool:
    try:
        return get_redis().exists(services.HALT.format(campaign_id)) == 1
    except redis.RedisError:
        return False


# -- sending ---------------------------------------------------------------------------------------


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
    tz = ZoneInfo(_timezone(account_id))
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


def _run_id(conn: redis.Redis) -> str:
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


def _flush(account_id: int, claim_id: str | None, results: list[tuple[Any, Outcome]]) -> None:
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
    tz = ZoneInfo(_timezone(account_id))
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
    run_id = _run_id(conn)
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
            _, midnight = _local_day(account_id)
            pause_account(campaign_id, account_id, midnight, "daily budget used")
            break
        claim_id = f"{run_id}:{uuid.uuid4().hex}"
        conn.set(f"tm:lease:{claim_id}", 1, ex=LEASE_SECONDS)
        # Which claim this batch's job holds: kick() tells a dead job from a running one by it.
        conn.set(BATCH_CLAIM.format(_job_id(campaign_id, account_id, batch_no)), claim_id, ex=86400)
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
        conn.set(f"tm:dm:{row.id}", _mark(out), ex=86400)
        results.append((row, out))
        if out.status in (DeliveryStatus.sent, DeliveryStatus.unknown):
            used += 1
        if out.status is not DeliveryStatus.pending:
            counts[out.status.value] = counts.get(out.status.value, 0) + 1
        if out.action:
            action = out.action  # the rest of the chunk is released on the next pass
    _flush(account_id, claim_id, results)
    _count_errors(conn, campaign.id, results)
    counts["_used"] = used
    return action


def _mark(out: Outcome) -> str:
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
        _, midnight = _local_day(account_id)
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


# -- recovery and the periodic tick ----------------------------------------------------------------


@step_boundary("recovered rows are released before new jobs pick them")
def recover(older_than: float = LEASE_SECONDS) -> dict[str, int]:
    """Rows left ``sending`` by a job that died: resolved from their Redis marks (see the module)."""
    conn = get_redis()
    run_id = _run_id(conn)
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
            _flush(account_id, claim_id, items)
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


BATCH_CLAIM = "tm:batch-claim:{}"


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
            job_id = _job_id(campaign_id, ca.account_id, batch)
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
