"""The callback gateway: verify, decrypt, dedupe, store, route, reply — in that order.

Nothing is written for a rejected request. Redis ``SET NX`` short-cuts WeChat's re-sends; the
unique (account, dedup key) on the inbox is the real guard, and a re-send gets the reply that
was stored with the original.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast
from xml.etree.ElementTree import ParseError

import redis
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from flask import current_app
from sqlalchemy import Engine, Row, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from wechat_service import wxcrypto
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary
from wechat_service.extensions import db, enqueue_after_commit, get_redis
from wechat_service.models import CallbackInbox, InboxState
from wechat_service.router import AccountInfo, CallbackContext, directory, router

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
            # Repeated groups (a subscribe popup's several <List>s): every one, as JSON, since the
            # flat fields above keep only the first.
            items = [{g.tag: (g.text or "").strip() for g in item} for item in child if len(item)]
            if items:
                out[f"{child.tag}:items"] = json.dumps(items, ensure_ascii=False)
        else:
            out[child.tag] = child.text or ""
    return out


def verify_echo(appid: str, args: dict[str, str]) -> CallbackResult:
    """GET: WeChat checks the URL; echo ``echostr`` unchanged (also in safe mode)."""
    account = directory.by_appid(appid)
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
    key = _raw_dedup_key(msg)
    # Long VIEW URLs: the same bounded key in Redis and in the database.
    return key if len(key) <= 200 else "h:" + hashlib.sha256(key.encode()).hexdigest()


def _raw_dedup_key(msg: dict[str, str]) -> str:
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


# WeChat's field sizes, with room to spare: anything longer is not WeChat's.
FIELD_LIMITS = {"FromUserName": 64, "ToUserName": 64, "MsgType": 32, "Event": 64, "MsgId": 32, "MsgID": 32}
PENDING = b"\x00"  # the dedup key's value while the first copy is being handled


class CallbackBusyError(RuntimeError):
    """The callback could not get its rows within the budget (a lock held elsewhere)."""


def handle_post(appid: str, args: dict[str, str], body: bytes) -> CallbackResult:
    deadline = time.monotonic() + current_app.config["CALLBACK_BUDGET"]
    account = directory.by_appid(appid)
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
        msg, reply_key = _open(account, args, outer)
        _check_fields(msg)
    except wxcrypto.SignatureError as exc:
        return reject(403, str(exc))
    except (BadMessageError, wxcrypto.DecryptError) as exc:
        return reject(400, str(exc))
    if account.original_id and msg.get("ToUserName") and msg["ToUserName"] != account.original_id:
        return reject(400, "message addressed to another account")
    try:
        reply_xml = _dispatch(account, msg, dedup_key(msg), deadline)
    except CallbackBusyError:
        # Nothing was stored and the dedup key is dropped: WeChat's re-send is handled afresh.
        # An error status (not `success`, which would end WeChat's retries) in time, rather
        # than silence past WeChat's 5 s.
        return reject(503, "busy: try again")
    return _answer(account, args, reply_xml, reply_key)


def _check_fields(msg: dict[str, str]) -> None:
    if not msg.get("MsgType") or not msg.get("FromUserName"):
        raise BadMessageError("MsgType and FromUserName are required")
    for field, limit in FIELD_LIMITS.items():
        if len(msg.get(field) or "") > limit:
            raise BadMessageError(f"{field} longer than {limit}")
    created = msg.get("CreateTime")
    if created is not None and not (created.isdigit() and len(created) <= 11):
        raise BadMessageError("CreateTime must be Unix seconds")


def _open(
    account: AccountInfo, args: dict[str, str], outer: dict[str, str]
) -> tuple[dict[str, str], str | None]:
    """The plaintext message and, when it came encrypted, the key to encrypt the reply with.

    Safe mode requires <Encrypt>. In compatible mode the plaintext fields are there too, so an
    account not (yet) configured with the key, or a packet that opens under neither of our keys,
    is read from them — the request's signature was checked either way. A ciphertext that opens
    but names another appid is refused in every mode: that packet is not this account's.
    """
    enc = outer.get("Encrypt") or None
    if enc is None or args.get("encrypt_type", "aes") != "aes":
        if account.message_mode == "safe":
            raise BadMessageError("this account is in safe mode: the message must be encrypted")
        return outer, None
    wxcrypto.verify_signature(
        (account.token or "", args.get("timestamp", ""), args.get("nonce", ""), enc),
        args.get("msg_signature"),
    )
    plaintext_too = account.message_mode != "safe" and bool(outer.get("MsgType"))
    if not account.aes_keys:
        if plaintext_too:
            return outer, None
        raise BadMessageError("encrypted message for an account without an EncodingAESKey")
    try:
        xml, key = wxcrypto.decrypt_with_key(enc, list(account.aes_keys), account.appid)
    except wxcrypto.WrongAppidError:
        raise
    except wxcrypto.DecryptError:
        if plaintext_too:
            log.warning(
                "compatible-mode packet for %s not decryptable: read from its plaintext", account.appid
            )
            return outer, None
        raise
    return parse_xml(xml.encode()), key


def _seen_key(account: AccountInfo, key: str) -> str:
    return f"cb:{account.id}:{key}"


def _dispatch(account: AccountInfo, msg: dict[str, str], key: str, deadline: float) -> str:
    """Route a new callback and store it, or give a re-send the reply its original got.

    The copy that wins ``SET NX`` (value: pending) runs the handlers — which may call the BOSS or
    send an SMS, so a re-send must never run them again — then stores the reply under the same
    key. A copy that loses waits for that reply, and takes over if the original gave up. The
    unique (account, dedup key) of the inbox row stays the real guard when Redis forgot; if
    storing fails the key is dropped so WeChat's re-send is handled afresh.
    """
    conn: redis.Redis | None  # None once Redis failed in this request
    conn = get_redis()
    seen = _seen_key(account, key)
    ttl = current_app.config["CALLBACK_DEDUP_TTL"]
    try:
        first = conn.set(seen, PENDING, nx=True, ex=ttl)
    except redis.RedisError:
        log.warning("redis unavailable for callback dedup; the database decides")
        conn, first = None, True
    if not first:
        reply = _reply_of_original(account, key, deadline)
        if reply is not None:
            return reply
        # The original gave up (a lock timeout) and stored nothing: this copy handles it.
        try:
            first = conn is not None and conn.set(seen, PENDING, nx=True, ex=ttl)
        except redis.RedisError:
            first = False
        if not first:
            return _reply_of_original(account, key, deadline) or ""
    try:
        _bound_transaction(deadline)
        routed = _route(account, msg)
        _store(account, msg, key, routed)
    except IntegrityError:
        db.session.rollback()
        if _stored_reply(account, key) is None:  # not our unique key: a real error
            _forget(conn, seen)
            raise
        return _reply_of_original(account, key, deadline) or ""
    except OperationalError as exc:
        db.session.rollback()
        _forget(conn, seen)
        if getattr(exc.orig, "sqlstate", None) in _TIMED_OUT:
            log.warning("callback for %s gave up on a database lock within its budget", account.appid)
            raise CallbackBusyError from None
        raise
    except Exception:
        db.session.rollback()
        _forget(conn, seen)
        raise
    if conn is not None:
        try:
            conn.set(seen, routed.reply_xml.encode(), ex=ttl)
        except redis.RedisError:
            log.warning("redis unavailable: a re-send will read its reply from the database")
    return routed.reply_xml


_TIMED_OUT = {"55P03", "57014"}  # PostgreSQL: lock_not_available, query_canceled
_BOUND = text("SELECT set_config('lock_timeout', :ms, true), set_config('statement_timeout', :ms, true)")


def _bound_transaction(deadline: float) -> None:
    """On PostgreSQL, no lock wait or statement of the callback's transaction outlives the budget:
    a row held by another transaction (a console edit, a long job) turns into a quick error
    instead of a request WeChat drops after 5 s. Only a transaction the callback owns: settings
    made with SET LOCAL would outlast a savepoint inside a caller's transaction."""
    bind = db.session.get_bind()
    if bind.dialect.name != "postgresql" or not isinstance(bind, Engine):
        return
    ms = max(100, int((deadline - time.monotonic()) * 1000))
    db.session.execute(_BOUND, {"ms": f"{ms}ms"})


def _forget(conn: redis.Redis | None, seen: str) -> None:
    if conn is not None:
        with contextlib.suppress(redis.RedisError):
            conn.delete(seen)


def _stored_reply(account: AccountInfo, key: str) -> str | None:
    db.session.rollback()  # see rows committed since this transaction began
    row = db.session.query(CallbackInbox.reply).filter_by(account_id=account.id, dedup_key=key).first()
    return None if row is None else row.reply or ""


def _reply_of_original(account: AccountInfo, key: str, deadline: float) -> str | None:
    """A re-send: the original's reply from Redis, else (Redis forgot) from its inbox row,
    waiting within the budget for an original that has not finished yet. None when the original
    gave up (its key is gone and nothing was stored): the caller may handle the message itself.
    Past the budget, an empty reply (WeChat's `success`) rather than no answer."""
    conn: redis.Redis | None = get_redis()
    while True:
        cached, vanished = None, False
        if conn is not None:
            try:
                cached = conn.get(_seen_key(account, key))
                vanished = cached is None
            except redis.RedisError:
                conn = None  # do not wait on it again within this request
        if cached is not None and cached != PENDING:
            return cast(bytes, cached).decode()  # no decode_responses: Redis answers bytes
        stored = _stored_reply(account, key)
        if stored is not None:
            return stored
        if vanished:
            return None
        if time.monotonic() >= deadline:
            return ""
        time.sleep(0.05)


@dataclass
class _Routed:
    ctx: CallbackContext
    reply_xml: str
    state: InboxState
    deferred: bool


def _route(account: AccountInfo, msg: dict[str, str], dry_run: bool = False) -> _Routed:
    msg_type = msg["MsgType"].lower()
    event = (msg.get("Event") or "").lower() or None if msg_type == "event" else None
    handlers = router.handlers(msg_type, event)
    inline = [h for h in handlers if h.inline]
    deferred = any(not h.inline for h in handlers)
    ctx = CallbackContext(account=account, message=msg, msg_type=msg_type, event=event, dry_run=dry_run)
    for handler in inline:
        answer = handler.fn(ctx)
        if ctx.reply is None and answer is not None:
            ctx.reply, ctx.replied_by = answer, _name(handler.fn)
    if dry_run:
        ctx.actions += [f"queue {_name(h.fn)}" for h in handlers if not h.inline]
    state = InboxState.queued if deferred else InboxState.processed if inline else InboxState.stored
    return _Routed(ctx, ctx.reply.render(account, ctx.openid) if ctx.reply else "", state, deferred)


def _name(fn: Any) -> str:
    return f"{fn.__module__}.{fn.__name__}"


def dry_run(account: AccountInfo, msg: dict[str, str]) -> CallbackContext:
    """What a callback carrying ``msg`` would answer, by the same router and handlers, without its
    effects: handlers see ``ctx.dry_run`` and describe what they would do instead; no dedup key,
    inbox row or job; and a savepoint rolled back afterwards undoes any row a handler wrote anyway.
    ``ctx.reply`` / ``ctx.replied_by`` say who answers and with what; ``ctx.actions`` the rest."""
    jobs = list(db.session.info.get("pending_jobs") or ())
    savepoint = db.session.begin_nested()
    try:
        return _route(account, msg, dry_run=True).ctx
    finally:
        savepoint.rollback()
        db.session.info["pending_jobs"] = jobs


_INBOX_INSERT = CallbackInbox.__table__.insert().returning(CallbackInbox.__table__.c.id)


@step_boundary("the inbox row is durable before WeChat gets its answer")
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
        enqueue_after_commit("high", "wechat_service.jobs.process_inbox", inbox_id)
    db.session.commit()


def _answer(
    account: AccountInfo, args: dict[str, str], reply_xml: str, reply_key: str | None
) -> CallbackResult:
    if not reply_xml:
        return CallbackResult(200, SUCCESS)
    if reply_key:
        nonce = args.get("nonce") or secrets.token_hex(8)
        body = wxcrypto.encrypted_reply(reply_xml, account.token or "", reply_key, account.appid, nonce)
        return CallbackResult(200, body, "application/xml; charset=utf-8")
    return CallbackResult(200, reply_xml, "application/xml; charset=utf-8")


@step_boundary("the claim (attempt counted) commits before the handlers run")
def run_deferred(inbox_id: int) -> None:
    """Run the deferred handlers of an inbox row (from an RQ job); safe to run twice.

    The row is claimed with a conditional UPDATE (attempts counted in its own commit), so two
    workers never both run it, and a handler that keeps failing ends as ``failed`` instead of
    being re-queued forever.
    """
    claimed = _claim(inbox_id)
    db.session.commit()
    if claimed is None:
        return
    account = directory.by_id(claimed.account_id)
    if account is None:
        return  # the account was deleted since the claim, and its inbox rows with it
    ctx = CallbackContext(
        account=account,
        message=dict(claimed.payload),
        msg_type=claimed.msg_type,
        event=claimed.event,
        inbox_id=inbox_id,
    )
    try:
        for handler in router.handlers(claimed.msg_type, claimed.event):
            if not handler.inline:
                handler.fn(ctx)
    except Exception as exc:
        db.session.rollback()
        final = claimed.attempts >= MAX_ATTEMPTS
        db.session.execute(
            update(CallbackInbox)
            .where(CallbackInbox.id == inbox_id)
            .values(
                state=InboxState.failed if final else InboxState.queued,
                error=f"{type(exc).__name__}: {exc}"[:2000],
            )
        )
        db.session.commit()
        raise
    db.session.execute(
        update(CallbackInbox)
        .where(CallbackInbox.id == inbox_id)
        .values(state=InboxState.processed, processed_at=utcnow(), error=None)
    )
    db.session.commit()


def _claim(inbox_id: int) -> Row[int, dict[str, Any], str, str | None, int] | None:
    """The conditional UPDATE that takes a queued row with attempts left (counting this one) for
    this worker: its account, payload, type, event and attempts; None when it is not to be run."""
    return db.session.execute(
        update(CallbackInbox)
        .where(
            CallbackInbox.id == inbox_id,
            CallbackInbox.state == InboxState.queued,
            CallbackInbox.attempts < MAX_ATTEMPTS,
        )
        .values(attempts=CallbackInbox.attempts + 1, state=InboxState.processing, claimed_at=utcnow())
        .returning(
            CallbackInbox.account_id,
            CallbackInbox.payload,
            CallbackInbox.msg_type,
            CallbackInbox.event,
            CallbackInbox.attempts,
        )
    ).first()


MAX_ATTEMPTS = 5


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
