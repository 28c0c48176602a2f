"""Mini-program sessions: a wx.login code → jscode2session → our own signed, expiring token.

The WeChat session key stays on the server, encrypted; the mini-program only ever holds our
token, which names a session row (so it can be revoked) and is signed with the secret key.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from accounts import subscribers
from accounts.errors import AccountErrorCode
from accounts.services import account_by_appid
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ErrorCode, ForbiddenError, InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db
from wechat_service.gateway import InvalidCodeError, UnreachableError, WeChatAPIError, client_for
from wechat_service.models import MpSession

__all__ = ["MpSession", "login", "profile", "session_from_token"]


class SessionError(ServiceError):
    code = AccountErrorCode.invalid_session
    status = 401


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="mp-session")


def login(appid: str, code: str) -> dict[str, Any]:
    if not code or len(code) > 128:
        raise InvalidInputError("code is required", fields={"code": ["required"]})
    account = account_by_appid(appid)
    if account.kind.value != "mini_program":
        raise NotFoundError(f"{appid} is not a mini-program")
    if account.status.value != "active":
        raise ForbiddenError("account disabled")
    try:
        result = client_for(account.appid, account.app_secret).jscode2session(code)
    except InvalidCodeError as exc:
        if exc.errcode == 40163:
            raise ServiceError(
                "this login code was already used; call wx.login again", code=ErrorCode.code_used, status=409
            ) from None
        raise ServiceError(
            "invalid login code; call wx.login again", code=ErrorCode.invalid_code, status=400
        ) from None
    except UnreachableError:
        raise ServiceError(
            "WeChat is unreachable, try again", code=ErrorCode.upstream_unavailable, status=503
        ) from None
    except WeChatAPIError as exc:
        raise ServiceError(
            f"WeChat refused the login ({exc.errcode})", code=ErrorCode.upstream_error, status=502
        ) from None
    sub = subscribers.get_or_create_subscriber(account.id, result["openid"])
    subscribers.link_unionid(sub, result.get("unionid"))
    sub.last_interaction_at = utcnow()
    ttl = current_app.config["MP_SESSION_TTL"]
    session = MpSession(
        account_id=account.id,
        subscriber_id=sub.id,
        session_key=result["session_key"],
        expires_at=utcnow() + timedelta(seconds=ttl),
    )
    db.session.add(session)
    db.session.flush()
    token = _serializer().dumps({"sid": session.id, "aid": account.id})
    return {
        "token": token,
        "expires_in": ttl,
        "openid": sub.openid,
        "unionid": sub.unionid,
        "person_id": sub.person_id,
    }


def session_from_token(appid: str, token: str) -> MpSession:
    try:
        data = _serializer().loads(token, max_age=current_app.config["MP_SESSION_TTL"])
    except SignatureExpired:
        raise SessionError("session expired, log in again") from None
    except BadSignature:
        raise SessionError("invalid session token") from None
    session = db.session.get(MpSession, data.get("sid"))
    account = account_by_appid(appid)
    if (
        session is None
        or session.revoked
        or session.account_id != account.id
        or session.expires_at < utcnow()
    ):
        raise SessionError("session expired or revoked, log in again")
    return session


def profile(session: MpSession) -> dict[str, Any]:
    sub = subscribers.subscriber_by_id(session.account_id, session.subscriber_id)
    return {"openid": sub.openid, "unionid": sub.unionid, "person_id": sub.person_id}
