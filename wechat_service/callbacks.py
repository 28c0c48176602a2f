"""The callback gateway: verify, decrypt, dedupe, store, route, reply — in that order.

Nothing is written for a rejected request. Redis ``SET NX`` short-cuts WeChat's re-sends; the
unique (account, dedup key) on the inbox is the real guard, and a re-send gets the reply that
was stored with the original.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import ParseError

import redis
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from flask import current_app
from sqlalchemy.exc import IntegrityError

from accounts.services import callback_account, callback_account_by_id
from wechat_service import wxcrypto
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db, enqueue_after_commit, get_redis
from wechat_service.models import CallbackInbox, InboxState
from wechat_service.router import AccountInfo, CallbackContext, router

log = logging.getLogger(__name__)

SUCCESS = "success"
JOB_FINISH_EVENTS = {"templatesendjobfinish", "masssendjobfinish"}


@dataclass
class CallbackResult:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


def reject(status: int, reason: str) -> CallbackResult:
    return CallbackResult(status, reason)


class BadMessageError(ValueError):
    pass


def parse_xml(body: bytes) -> dict[str, str]:
    """A flat dict of the XML's children; DTDs and entities are refused outright."""
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ParseError, ValueError) as exc:
        raise BadMessageError(f"malformed XML: {type(exc).__name__}") from None
    if root.tag != "xml":
        raise BadMessageError("root element must be <xml>")
    out: dict[str, str] = {}
    for child in root:
        if len(child):  # nested (e.g. ScanCodeInfo, SendPicsInfo): keep the inner fields flat
            for sub in child.iter():
                if sub is not child and not len(sub):
                    out.setdefault(sub.tag, (sub.text or "").strip())
        else:
            out[child.tag] = child.text or ""
    return out


def verify_echo(appid: str, args: dict[str, str]) -> CallbackResult:
    """GET: WeChat checks the URL; echo ``echostr`` unchanged (also in safe mode)."""
    account = callback_account(appid)
    if account is None:
        return reject(404, "unknown account")
    if account.status != "active":
        return reject(403, "account disabled")
    try:
        _verify_plain(account, args)
    except wxcrypto.SignatureError as exc:
        return reject(403, str(exc))
    return CallbackResult(200, args.get("echostr", ""))


def _verify_plain(account: AccountInfo, args: dict[str, str]) -> None:
    if not account.token:
        raise wxcrypto.SignatureError("account has no callback token")
    wxcrypto.verify_signature(
        (account.token, args.get("timestamp", ""), args.get("nonce", "")), args.get("signature")
    )


def _fresh(args: dict[str, str]) -> bool:
    window = current_app.config["CALLBACK_TIMESTAMP_WINDOW"]
    try:
        return abs(time.time() - int(args.get("timestamp", ""))) <= window
    except ValueError:
        return False


def dedup_key(msg: dict[str, str]) -> str:
    msg_type = (msg.get("MsgType") or "").lower()
    if msg_type == "event":
        event = (msg.get("Event") or "").lower()
        if event in JOB_FINISH_EVENTS and msg.get("MsgID"):
            return f"job:{msg['MsgID']}"
        return (
            f"ev:{msg.get('FromUserName', '')}:{msg.get('CreateTime', '')}:{event}:{msg.get('EventKey', '')}"
        )
    if msg.get("MsgId"):
        return f"msg:{msg['MsgId']}"
    return f"msg:{msg.get('FromUserName', '')}:{msg.get('CreateTime', '')}:{msg_type}"


def handle_post(appid: str, args: dict[str, str], body: bytes) -> CallbackResult:
    account = callback_account(appid)
    if account is None:
        return reject(404, "unknown account")
    if account.status != "active":
        return reject(403, "account disabled")
    try:
        _verify_plain(account, args)
    except wxcrypto.SignatureError as exc:
        return reject(403, str(exc))
    if not _fresh(args):
        return reject(403, "timestamp outside the accepted window")
    try:
        outer = parse_xml(body)
        msg, encrypted = _open(account, args, outer)
    except wxcrypto.SignatureError as exc:
        return reject(403, str(exc))
    except (BadMessageError, wxcrypto.DecryptError) as exc:
        return reject(400, str(exc))
    if account.original_id and msg.get("ToUserName") and msg["ToUserName"] != account.original_id:
        return reject(400, "message addressed to another account")
    if not msg.get("MsgType") or not msg.get("FromUserName"):
        return reject(400, "MsgType and FromUserName are required")

    key = dedup_key(msg)
    reply_xml = _dispatch(account, msg, key)
    return _answer(account, args, reply_xml, encrypted)


def _open(account: AccountInfo, args: dict[str, str], outer: dict[str, str]) -> tuple[dict[str, str], bool]:
    """The plaintext message, decrypted when it carries <Encrypt> (required in safe mode)."""
    enc = outer.get("Encrypt")
    if enc is None or args.get("encrypt_type", "aes") != "aes":
        if account.message_mode == "safe":
            raise BadMessageError("this account is in safe mode: the message must be encrypted")
        return outer, False
    if not account.aes_keys:
        raise BadMessageError("encrypted message for an account without an EncodingAESKey")
    wxcrypto.verify_signature(
        (account.token or "", args.get("timestamp", ""), args.get("nonce", ""), enc),
        args.get("msg_signature"),
    )
    inner = parse_xml(wxcrypto.decrypt(enc, list(account.aes_keys), account.appid).encode())
    return inner, True


def _seen_key(account: AccountInfo, key: str) -> str:
    return f"cb:{account.id}:{key}"


def _dispatch(account: AccountInfo, msg: dict[str, str], key: str) -> str:
    """Route a new callback and store it, or give a re-send the reply its original got.

    The inline handlers run first (reads, and the subscriber upsert), so the dedup key can be
    set together with the reply in one Redis call: ``SET NX key reply``. The copy that loses
    rolls back and answers with the winner's reply, even before the winner has committed. The
    unique (account, dedup key) of the inbox row stays the real guard when Redis forgot.
    """
    conn = get_redis()
    seen = _seen_key(account, key)
    routed = _route(account, msg)
    try:
        first = conn.set(
            seen, routed.reply_xml.encode(), nx=True, ex=current_app.config["CALLBACK_DEDUP_TTL"]
        )
    except redis.RedisError:
        log.warning("redis unavailable for callback dedup; the database decides")
        first = True
    if not first:
        db.session.rollback()
        return _reply_of_original(account, key)
    try:
        _store(account, msg, key, routed)
    except IntegrityError:
        db.session.rollback()
        return _reply_of_original(account, key)
    except Exception:
        # Not stored: let WeChat's re-send try again rather than be answered from the cache.
        db.session.rollback()
        with contextlib.suppress(redis.RedisError):
            conn.delete(seen)
        raise
    return routed.reply_xml


def _reply_of_original(account: AccountInfo, key: str) -> str:
    """A re-send: the original's reply from Redis, else (Redis forgot) from its inbox row,
    waiting within the budget for an original that has not committed yet."""
    conn = get_redis()
    deadline = time.monotonic() + current_app.config["CALLBACK_BUDGET"]
    while True:
        try:
            cached = conn.get(_seen_key(account, key))
        except redis.RedisError:
            cached = None
        if cached is not None:
            return cached.decode()
        db.session.rollback()  # see rows committed since this transaction began
        row = db.session.query(CallbackInbox.reply).filter_by(account_id=account.id, dedup_key=key).first()
        if row is not None:
            return row.reply or ""
        if time.monotonic() >= deadline:
            return ""
        time.sleep(0.05)


@dataclass
class _Routed:
    ctx: CallbackContext
    reply_xml: str
    state: InboxState
    deferred: bool


def _route(account: AccountInfo, msg: dict[str, str]) -> _Routed:
    msg_type = msg["MsgType"].lower()
    event = (msg.get("Event") or "").lower() or None if msg_type == "event" else None
    handlers = router.handlers(msg_type, event)
    inline = [h for h in handlers if h.inline]
    deferred = any(not h.inline for h in handlers)
    ctx = CallbackContext(account=account, message=msg, msg_type=msg_type, event=event)
    for handler in inline:
        answer = handler.fn(ctx)
        if ctx.reply is None and answer is not None:
            ctx.reply, ctx.replied_by = answer, f"{handler.fn.__module__}.{handler.fn.__name__}"
    state = InboxState.queued if deferred else InboxState.processed if inline else InboxState.stored
    return _Routed(ctx, ctx.reply.render(account, ctx.openid) if ctx.reply else "", state, deferred)


_INBOX_INSERT = CallbackInbox.__table__.insert().returning(CallbackInbox.__table__.c.id)


def _store(account: AccountInfo, msg: dict[str, str], key: str, routed: _Routed) -> None:
    """The inbox row (with the reply, for re-sends) and what the handlers queued for it, in one
    transaction. Core statements built once: this is the hot path."""
    try:
        created = int(msg.get("CreateTime", ""))
    except ValueError:
        created = None
    now = utcnow()
    ctx = routed.ctx
    inbox_id = (
        db.session.connection()
        .execute(
            _INBOX_INSERT,
            {
                "account_id": account.id,
                "dedup_key": key[:256],
                "msg_type": ctx.msg_type,
                "event": ctx.event,
                "openid": msg.get("FromUserName"),
                "payload": msg,
                "created_time": created,
                "received_at": now,
                "state": routed.state,
                "reply": routed.reply_xml,
                "attempts": 0,
                "processed_at": now if routed.state is InboxState.processed else None,
                "error": None,
            },
        )
        .scalar_one()
    )
    ctx.stored(inbox_id)
    if routed.deferred:
        from wechat_service.jobs import process_inbox

        enqueue_after_commit("high", process_inbox, inbox_id)
    db.session.commit()


def _answer(account: AccountInfo, args: dict[str, str], reply_xml: str, encrypted: bool) -> CallbackResult:
    if not reply_xml:
        return CallbackResult(200, SUCCESS)
    if encrypted:
        nonce = args.get("nonce") or secrets.token_hex(8)
        body = wxcrypto.encrypted_reply(
            reply_xml, account.token or "", account.aes_keys[0], account.appid, nonce
        )
        return CallbackResult(200, body, "application/xml; charset=utf-8")
    return CallbackResult(200, reply_xml, "application/xml; charset=utf-8")


def run_deferred(inbox_id: int) -> None:
    """Run the deferred handlers of an inbox row (from an RQ job); safe to run twice."""
    inbox = db.session.get(CallbackInbox, inbox_id)
    if inbox is None or inbox.state is not InboxState.queued:
        return
    account = callback_account_by_id(inbox.account_id)
    if account is None:
        return
    ctx = CallbackContext(
        account=account,
        message=dict(inbox.payload),
        msg_type=inbox.msg_type,
        event=inbox.event,
        inbox_id=inbox.id,
    )
    inbox.attempts += 1
    for handler in router.handlers(inbox.msg_type, inbox.event):
        if not handler.inline:
            handler.fn(ctx)
    inbox.state = InboxState.processed
    inbox.processed_at = utcnow()
    db.session.commit()


def inbox_summary(account_id: int) -> dict[str, Any]:
    from sqlalchemy import func

    rows = (
        db.session.query(CallbackInbox.state, func.count())
        .filter_by(account_id=account_id)
        .group_by(CallbackInbox.state)
        .all()
    )
    return {state.value: n for state, n in rows}


def inbox_stats(account_ids: list[int] | None, since: Any) -> dict[int, dict[str, int]]:
    """Callbacks received since ``since`` and failed ones, per account (for the matrix overview)."""
    from sqlalchemy import case, func, select

    query = (
        select(
            CallbackInbox.account_id,
            func.count(),
            func.sum(case((CallbackInbox.state == InboxState.failed, 1), else_=0)),
        )
        .where(CallbackInbox.received_at >= since)
        .group_by(CallbackInbox.account_id)
    )
    if account_ids is not None:
        query = query.where(CallbackInbox.account_id.in_(account_ids))
    return {aid: {"callbacks": n, "failed": int(failed or 0)} for aid, n, failed in db.session.execute(query)}
