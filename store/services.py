"""Store services: store settings, phone binding by SMS code, inquiries, and the selectables the
domains above read (phone_bound, inquiries_of).

Inquiries answer inside WeChat's 5 s: the BOSS gets a short timeout; if it is slower, the
callback answers `success` and a job sends the answer as a customer-service message. Answers are
cached per subscriber for a minute, and every inquiry lands in the inquiry ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import current_app

from accounts.services import api_client, bump_config
from accounts.subscribers import subscriber_by_id
from store.boss import BossError, BossUnavailableError, boss, normalise_phone
from store.errors import StoreErrorCode
from store.models import (
    DEFAULT_INQUIRY_KEYWORDS,
    Inquiry,
    InquiryKind,
    InquiryOutcome,
    PhoneBinding,
    StoreSettings,
)
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ErrorCode, InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db, get_redis
from wechat_service.gateway import (
    BusyError,
    InvalidCodeError,
    RateLimitedError,
    UnreachableError,
    WeChatAPIError,
)
from wechat_service.money import yuan

CACHE_TTL = 60
PENDING_TTL = 300
VERIFY_ATTEMPTS = 5
# Binding codes sent per hour, by who asks, to which number and from which account (an SMS costs
# money and can be aimed at someone else's phone). Overridable: WECHAT_SERVICE_SMS_BIND_PER_…_HOUR.
SMS_LIMITS = {"SUBSCRIBER": 5, "PHONE": 5, "ACCOUNT": 2000}
# Every window is checked before any is counted, in one step: a refused send counts nowhere, and
# parallel sends cannot both pass a limit with one left. The window starts with the first send.
_SEND_QUOTA = """
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[i]) then return i end
end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, 3600) end
end
return 0
"""


class ThrottledError(ServiceError):
    code = ErrorCode.too_many_attempts
    status = 429


# -- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatConfig:
    enabled: bool
    keywords: dict[str, str]  # text -> inquiry kind
    bind_keyword: str


_settings_cache: dict[int, tuple[int, ChatConfig | None]] = {}
_settings_lock = threading.Lock()


def chat_config(account_id: int, config_version: int) -> ChatConfig | None:
    """The account's store chat settings, cached per process by the account's config_version."""
    hit = _settings_cache.get(account_id)
    if hit and hit[0] == config_version:
        return hit[1]
    row = db.session.scalar(sa.select(StoreSettings).where(StoreSettings.account_id == account_id))
    config = None
    if row is not None and row.enabled:
        keywords = {
            w.strip().casefold(): kind
            for kind, words in (row.inquiry_keywords or {}).items()
            for w in words
            if w.strip() and kind in InquiryKind.__members__
        }
        config = ChatConfig(True, keywords, row.bind_keyword or "绑定")
    with _settings_lock:
        _settings_cache[account_id] = (config_version, config)
    return config


def enable_store(
    account_id: int, inquiry_keywords: dict[str, list[str]] | None = None, bind_keyword: str = "绑定"
) -> StoreSettings:
    keywords = inquiry_keywords or DEFAULT_INQUIRY_KEYWORDS
    unknown = set(keywords) - set(InquiryKind.__members__)
    if unknown:
        raise InvalidInputError(
            f"unknown inquiry kinds {sorted(unknown)}", fields={"inquiry_keywords": ["invalid"]}
        )
    row = db.session.scalar(sa.select(StoreSettings).where(StoreSettings.account_id == account_id))
    if row is None:
        row = StoreSettings(account_id=account_id)
        db.session.add(row)
    row.enabled, row.inquiry_keywords, row.bind_keyword = True, dict(keywords), bind_keyword
    bump_config(account_id)
    db.session.flush()
    return row


# -- phone binding -------------------------------------------------------------------------------


def phone_hash(phone: str) -> str:
    """A keyed hash for look-ups; the key derives from the master key, never stored beside it."""
    key = hashlib.sha256(
        ("phone-hash:" + str(current_app.config["MASTER_KEY"]).split(",")[0]).encode()
    ).digest()
    return hmac.new(key, phone.encode(), hashlib.sha256).hexdigest()


def mask_phone(phone: str | None) -> str | None:
    return phone[:3] + "****" + phone[-4:] if phone and len(phone) == 11 else phone


def binding_of(account_id: int, subscriber_id: int) -> PhoneBinding | None:
    return db.session.scalar(
        sa.select(PhoneBinding).where(
            PhoneBinding.account_id == account_id, PhoneBinding.subscriber_id == subscriber_id
        )
    )


def _pending_key(account_id: int, subscriber_id: int) -> str:
    return f"bind:{account_id}:{subscriber_id}"


def start_binding(account_id: int, subscriber_id: int, phone: str) -> dict[str, Any]:
    """Ask the BOSS to text a code to ``phone``; the subscriber answers with it within 5 minutes."""
    try:
        phone = normalise_phone(phone)
    except ValueError:
        raise InvalidInputError("请输入 11 位手机号", fields={"phone": ["invalid"]}) from None
    conn = get_redis()
    _take_sms_quota(conn, account_id, subscriber_id, phone)
    try:
        result = boss().send_sms(phone, "bind")
    except BossError as exc:
        raise _boss_problem(exc) from None
    key = _pending_key(account_id, subscriber_id)
    with conn.pipeline() as pipe:  # a new code: a new count of attempts
        pipe.set(key, json.dumps({"phone": phone}), ex=PENDING_TTL)
        pipe.set(f"{key}:attempts", 0, ex=PENDING_TTL)
        pipe.execute()
    return {"phone": mask_phone(phone), "expires_in": int(result.get("expires_in", PENDING_TTL))}


def _take_sms_quota(conn: Any, account_id: int, subscriber_id: int, phone: str) -> None:
    """Count one binding SMS against the subscriber's, the number's and the account's hourly
    limits, or refuse it (ThrottledError) with the limit it hit — counting nothing then."""
    limits = {
        name: int(current_app.config.get(f"SMS_BIND_PER_{name}_HOUR", default))
        for name, default in SMS_LIMITS.items()
    }
    keys = [
        f"bind:sends:{account_id}:{subscriber_id}",
        f"bind:sends:phone:{phone_hash(phone)}",  # every account: the number's owner is one person
        f"bind:sends:account:{account_id}",
    ]
    hit = conn.register_script(_SEND_QUOTA)(keys=keys, args=list(limits.values()))  # EVALSHA
    if hit == 1:
        raise ThrottledError("验证码发送太频繁，请一小时后再试")
    if hit == 2:
        raise ThrottledError(
            "该手机号接收验证码太频繁，请一小时后再试", code=StoreErrorCode.phone_sms_limited
        )
    if hit == 3:
        raise ThrottledError("验证码发送繁忙，请稍后再试", code=StoreErrorCode.account_sms_limited)


def has_pending_binding(account_id: int, subscriber_id: int) -> bool:
    return bool(get_redis().exists(_pending_key(account_id, subscriber_id)))


def confirm_binding(account_id: int, subscriber_id: int, code: str) -> PhoneBinding:
    conn = get_redis()
    key = _pending_key(account_id, subscriber_id)
    raw = conn.get(key)
    if raw is None:
        raise InvalidInputError(
            "没有待验证的手机号，请先发送「绑定 手机号」", fields={"code": ["no pending"]}
        )
    pending = json.loads(raw)
    # INCR, not read-modify-write: parallel guesses each take their own attempt.
    attempts = conn.incr(f"{key}:attempts")
    if attempts == 1:
        conn.expire(f"{key}:attempts", PENDING_TTL)
    if attempts > VERIFY_ATTEMPTS:
        conn.delete(key)  # the counter stays (until its TTL): deleting it would restart the count
        raise ThrottledError("验证码错误次数过多，请重新获取")
    try:
        boss().verify_sms(pending["phone"], code.strip())
    except BossError as exc:
        raise _boss_problem(exc) from None
    conn.delete(key)
    return bind_phone(account_id, subscriber_id, pending["phone"], method="sms")


def bind_phone(account_id: int, subscriber_id: int, phone: str, method: str) -> PhoneBinding:
    binding = binding_of(account_id, subscriber_id)
    if binding is None:
        binding = PhoneBinding(account_id=account_id, subscriber_id=subscriber_id)
        db.session.add(binding)
    binding.phone, binding.phone_hash, binding.method, binding.bound_at = (
        phone,
        phone_hash(phone),
        method,
        utcnow(),
    )
    db.session.flush()
    for kind in InquiryKind:
        get_redis().delete(_cache_key(account_id, subscriber_id, kind))
    return binding


def bind_phone_from_wechat(account_id: int, subscriber_id: int, code: str) -> PhoneBinding:
    """A mini-program's getPhoneNumber ``code`` → WeChat's verified number → the binding.

    WeChat has already verified the number by SMS, so the BOSS is not asked for a code. The answer
    must carry this mini-program's appid in its watermark: a number issued to another app (a
    replayed or swapped answer) is never bound. Nothing is written unless every check passes.
    """

    client = api_client(account_id)
    try:
        info = client.get_user_phone_number(code).get("phone_info") or {}
    except InvalidCodeError:
        raise ServiceError(
            "invalid or used phone code; tap the button again", code=ErrorCode.invalid_code, status=400
        ) from None
    except (BusyError, UnreachableError, RateLimitedError):
        raise ServiceError(
            "WeChat is busy, try again", code=ErrorCode.upstream_unavailable, status=503
        ) from None
    except WeChatAPIError as exc:
        raise ServiceError(
            f"WeChat refused the phone code ({exc.errcode})", code=ErrorCode.upstream_error, status=502
        ) from None
    if (info.get("watermark") or {}).get("appid") != client.appid:
        raise ServiceError(
            "the phone number was issued to another app", code=StoreErrorCode.appid_mismatch, status=400
        )
    if str(info.get("countryCode") or "86") != "86":
        raise InvalidInputError("请使用中国大陆手机号", fields={"code": ["not a mainland number"]})
    try:
        phone = normalise_phone(str(info.get("purePhoneNumber") or ""))
    except ValueError:
        raise InvalidInputError("请使用中国大陆手机号", fields={"code": ["not a mainland number"]}) from None
    # WeChat vouches that the number is the user's, not that it is this operator's: ask the BOSS
    # (a read), as the SMS path does, so no one binds a line we cannot serve.
    try:
        boss().balance(phone, timeout=current_app.config.get("INQUIRY_TIMEOUT", 1.5))
    except BossError as exc:
        raise _boss_problem(exc) from None
    return bind_phone(account_id, subscriber_id, phone, method="mp")


def rehash_phones() -> int:
    """After a master-key rotation: recompute every look-up hash under the new first key."""
    n = 0
    for binding in db.session.scalars(sa.select(PhoneBinding)):
        binding.phone_hash = phone_hash(binding.phone)
        n += 1
    return n


# The BOSS's refusals a subscriber can act on: each its own code. Any other BOSS failure (busy,
# unreachable, a malformed or unsigned answer, a code we do not know) is boss_unavailable.
BOSS_PROBLEMS = {
    "UNKNOWN_NUMBER": (StoreErrorCode.boss_unknown_number, "该号码不是本网用户", 400),
    "INVALID_CODE": (StoreErrorCode.boss_invalid_code, "验证码错误", 400),
    "CODE_EXPIRED": (StoreErrorCode.boss_code_expired, "验证码已过期，请重新获取", 400),
    "TOO_MANY_ATTEMPTS": (StoreErrorCode.boss_too_many_attempts, "尝试次数过多，请稍后再试", 429),
    "RATE_LIMITED": (StoreErrorCode.boss_rate_limited, "操作太频繁，请稍后再试", 429),
}


def _boss_problem(exc: BossError) -> ServiceError:
    code, message, status = BOSS_PROBLEMS.get(
        exc.code, (StoreErrorCode.boss_unavailable, "业务系统暂时不可用，请稍后再试", 503)
    )
    return ServiceError(message, code=code, status=status)


# -- inquiries -----------------------------------------------------------------------------------


@dataclass
class InquiryResult:
    outcome: InquiryOutcome
    text: str
    data: dict[str, Any] | None = None


def _cache_key(account_id: int, subscriber_id: int, kind: InquiryKind) -> str:
    return f"inq:{account_id}:{subscriber_id}:{kind.value}"


def format_answer(kind: InquiryKind, data: dict[str, Any], phone: str) -> str:
    who = mask_phone(phone)
    if kind is InquiryKind.balance:
        return f"{who} 当前话费余额 {yuan(int(data['balance_fen']))} 元。"
    if kind is InquiryKind.data:
        return (
            f"{who} 套餐「{data.get('package', '')}」剩余流量 {int(data['remaining_mb']) / 1024:.2f} GB"
            f"（已用 {int(data['used_mb']) / 1024:.2f} GB / 共 {int(data['total_mb']) / 1024:.2f} GB）。"
        )
    if kind is InquiryKind.bill:
        return f"{who} {data['month']} 月账单 {yuan(int(data['amount_fen']))} 元。"
    return f"{who} 当前积分 {int(data['points'])} 分。"


def fetch(kind: InquiryKind, phone: str, timeout: float | None) -> dict[str, Any]:
    client = boss()
    if kind is InquiryKind.balance:
        return client.balance(phone, timeout=timeout)
    if kind is InquiryKind.data:
        return client.data_usage(phone, timeout=timeout)
    if kind is InquiryKind.bill:
        return client.bill(phone, timeout=timeout)
    return client.points(phone, timeout=timeout)


def inquire(
    account_id: int,
    subscriber_id: int,
    kind: InquiryKind,
    source: str,
    timeout: float | None = None,
    on_slow: Any = None,
) -> InquiryResult:
    """Answer an inquiry, and count it. ``on_slow()`` is called when the BOSS is slower than
    ``timeout`` (the callback path passes a function that queues the customer-service answer)."""
    started = time.monotonic()
    binding = binding_of(account_id, subscriber_id)
    result: InquiryResult
    if binding is None:
        result = InquiryResult(
            InquiryOutcome.unbound, "查询前请先绑定手机号：回复「绑定 手机号」，例如「绑定 13800138000」。"
        )
    else:
        conn = get_redis()
        cached = conn.get(_cache_key(account_id, subscriber_id, kind))
        if cached is not None:
            data = json.loads(cached)
            result = InquiryResult(InquiryOutcome.cached, format_answer(kind, data, binding.phone), data)
        else:
            try:
                data = fetch(kind, binding.phone, timeout)
            except BossUnavailableError:
                if on_slow is not None:
                    on_slow()
                    result = InquiryResult(InquiryOutcome.deferred, "")
                else:
                    result = InquiryResult(InquiryOutcome.failed, "查询暂时不可用，请稍后再试。")
            except BossError as exc:
                result = InquiryResult(InquiryOutcome.failed, _boss_problem(exc).message)
            else:
                conn.set(_cache_key(account_id, subscriber_id, kind), json.dumps(data), ex=CACHE_TTL)
                result = InquiryResult(
                    InquiryOutcome.answered, format_answer(kind, data, binding.phone), data
                )
    db.session.add(
        Inquiry(
            account_id=account_id,
            subscriber_id=subscriber_id,
            kind=kind,
            source=source,
            outcome=result.outcome,
            latency_ms=int((time.monotonic() - started) * 1000),
            at=utcnow(),
        )
    )
    return result


def answer_later(account_id: int, subscriber_id: int, kind: InquiryKind) -> str:
    """The slow path: ask the BOSS without the callback's short timeout and send the answer as a
    customer-service message (allowed within 48 h of the subscriber's message)."""

    binding = binding_of(account_id, subscriber_id)
    if binding is None:
        raise NotFoundError("no phone bound")
    try:
        data = fetch(kind, binding.phone, None)
    except BossError:
        text = "抱歉，查询暂时不可用，请稍后再试。"
    else:
        get_redis().set(_cache_key(account_id, subscriber_id, kind), json.dumps(data), ex=CACHE_TTL)
        text = format_answer(kind, data, binding.phone)
    openid = subscriber_by_id(account_id, subscriber_id).openid
    api_client(account_id).message.send_text(openid, text)
    return text


def phone_bound(subscriber_id: Any) -> sa.Exists:
    """EXISTS: the subscriber (a column or a value) has a bound phone — a selectable for segments."""
    return sa.exists().where(PhoneBinding.subscriber_id == subscriber_id)


def inquiries_of(account_id: int, subscriber_id: int, limit: int) -> list[Inquiry]:
    """The subscriber's newest inquiries (the append-only ledger)."""
    return list(
        db.session.scalars(
            sa.select(Inquiry)
            .where(Inquiry.account_id == account_id, Inquiry.subscriber_id == subscriber_id)
            .order_by(Inquiry.at.desc(), Inquiry.id.desc())
            .limit(limit)
        )
    )
