"""Sending budgets in Redis: the per-campaign token bucket (messages per second) and the
account's daily quota (with a reserve kept for transactional messages)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import current_app

from accounts.models import Account
from templates_msg.models import (
    Delivery,
    DeliveryStatus,
)
from wechat_service.extensions import db, get_redis

log = logging.getLogger(__name__)

DEFAULT_DAILY_QUOTA = 100_000
TRANSACTIONAL_RESERVE = 0.05  # of the daily quota, kept for transactional messages

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


def local_day(account_id: int) -> tuple[str, datetime]:
    tz = ZoneInfo(timezone_of(account_id))
    now = datetime.now(tz)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y%m%d"), midnight


def timezone_of(account_id: int) -> str:
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
    day, midnight = local_day(account_id)
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
        day, _ = local_day(account_id)
        get_redis().decrby(f"tm:budget:{account_id}:{day}", n)
