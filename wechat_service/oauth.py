"""Web pages inside WeChat's browser: OAuth2 (``snsapi_base``, to learn the subscriber's openid)
and the JS-SDK config signature (``jsapi_ticket``, cached per account in Redis).

wechatpy's ``WeChatOAuth`` keeps its two base URLs as class attributes, so an instance can point
them at ``WECHAT_API_BASE`` / ``WECHAT_OPEN_BASE``; but its HTTP call has no timeout and lets
transport errors escape as raw ``requests`` exceptions, so ``_OAuth`` adds both. The ticket is
fetched through the gateway client (base URL, shared access token, one retry on token errors) and
cached here rather than with wechatpy's ``get_jsapi_ticket``, whose per-client memory cache is not
shared between processes and refreshes only once the ticket has already expired.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, cast

import redis
import requests
from flask import current_app
from wechatpy.exceptions import WeChatOAuthException
from wechatpy.oauth import WeChatOAuth

from wechat_service.errors import ErrorCode, ServiceError
from wechat_service.extensions import get_redis
from wechat_service.gateway import UnreachableError, WeChatAPIError, client_for, describe_failure

log = logging.getLogger(__name__)

TICKET_EARLY_REFRESH = 300  # seconds before expiry a cached ticket is replaced
JS_API_LIST = ["chooseWXPay", "closeWindow", "hideMenuItems"]


class OAuthCodeError(ServiceError):
    """40029 invalid or expired code, 40163 code already used: the page must start over."""

    code = ErrorCode.invalid_code
    status = 400


class _OAuth(WeChatOAuth):
    def __init__(self, appid: str, secret: str, redirect_uri: str = "", state: str = "") -> None:
        super().__init__(appid, secret, redirect_uri, scope="snsapi_base", state=state)
        cfg = current_app.config
        # Instance attributes shadow wechatpy's class-level bases.
        self.API_BASE_URL = f"{cfg['WECHAT_API_BASE']}/"
        self.OAUTH_BASE_URL = f"{cfg['WECHAT_OPEN_BASE']}/connect/"
        self.timeout = cfg["WECHAT_HTTP_TIMEOUT"]

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        return super()._request(method, url_or_endpoint, **kwargs)


def authorize_url(appid: str, redirect_uri: str, state: str) -> str:
    """Where to send the browser: WeChat asks nobody anything for snsapi_base and comes back to
    ``redirect_uri`` with ``code`` and ``state``."""
    return _OAuth(appid, "", redirect_uri, state).authorize_url


def openid_for_code(appid: str, secret: str, code: str) -> str:
    """Exchange a single-use OAuth code (sns/oauth2/access_token) for the subscriber's openid."""
    if not code or len(code) > 128:
        raise OAuthCodeError("授权码缺失，请重新进入页面")
    try:
        result = _OAuth(appid, secret).fetch_access_token(code)
    except WeChatOAuthException as exc:
        if exc.errcode in (40029, 40163):
            message = (
                "授权码已使用，请重新进入页面"
                if exc.errcode == 40163
                else "授权码无效或已过期，请重新进入页面"
            )
            raise OAuthCodeError(
                message, code=ErrorCode.code_used if exc.errcode == 40163 else ErrorCode.invalid_code
            ) from None
        if exc.errcode is None:  # an HTTP error status
            raise ServiceError(
                "微信暂时无法访问，请稍后再试", code=ErrorCode.upstream_unavailable, status=503
            ) from None
        log.warning("oauth code exchange for %s refused: %s", appid, exc.errcode)
        raise ServiceError(
            f"微信拒绝了授权（{exc.errcode}）", code=ErrorCode.upstream_error, status=502
        ) from None
    except (requests.RequestException, ValueError) as exc:
        log.warning("oauth code exchange for %s failed: %s", appid, describe_failure(exc))
        raise ServiceError(
            "微信暂时无法访问，请稍后再试", code=ErrorCode.upstream_unavailable, status=503
        ) from None
    openid = result.get("openid")
    if not isinstance(openid, str) or not openid:
        raise ServiceError("微信没有返回用户标识", code=ErrorCode.upstream_error, status=502)
    return openid


# -- JS-SDK --------------------------------------------------------------------------------------


def _ticket_key(appid: str) -> str:
    return f"wx:jsapi-ticket:{appid}"


def _cached_ticket(conn: redis.Redis, appid: str) -> str | None:
    ticket, expires_at = conn.hmget(_ticket_key(appid), "ticket", "expires_at")
    if ticket and float(expires_at or 0) - time.time() > TICKET_EARLY_REFRESH:
        return cast(bytes, ticket).decode()  # no decode_responses: Redis answers bytes
    return None


def jsapi_ticket(appid: str, secret: str) -> str:
    """The account's jsapi_ticket, shared by every process; refreshed by one of them at a time."""
    conn = get_redis()
    ticket = _cached_ticket(conn, appid)
    if ticket:
        return ticket
    lock = conn.lock(f"wx:jsapi-ticket-lock:{appid}", timeout=30, blocking_timeout=10)
    if not lock.acquire():
        raise UnreachableError(None, "timed out waiting for the jsapi_ticket lock", appid=appid)
    try:
        ticket = _cached_ticket(conn, appid)
        if ticket:
            return ticket
        result = client_for(appid, secret).jsapi.get_ticket("jsapi")
        ticket = str(result["ticket"])
        expires_at = int(time.time()) + int(result.get("expires_in", 7200))
        pipe = conn.pipeline()
        pipe.hset(_ticket_key(appid), mapping={"ticket": ticket, "expires_at": expires_at})
        pipe.expireat(_ticket_key(appid), expires_at)
        pipe.execute()
        return ticket
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("jsapi_ticket lock for %s expired before release", appid)


def jssdk_config(appid: str, secret: str, url: str, js_api_list: list[str] | None = None) -> dict[str, Any]:
    """The argument of ``wx.config`` for the page at ``url`` (the exact URL, without #fragment)."""
    client = client_for(appid, secret)
    ticket = jsapi_ticket(appid, secret)
    nonce, timestamp = secrets.token_hex(8), int(time.time())
    return {
        "debug": False,
        "appId": appid,
        "timestamp": timestamp,
        "nonceStr": nonce,
        "signature": client.jsapi.get_jsapi_signature(nonce, ticket, timestamp, url.split("#", 1)[0]),
        "jsApiList": list(js_api_list or JS_API_LIST),
    }


def jssdk_config_or_none(appid: str, secret: str, url: str) -> dict[str, Any] | None:
    """For rendering: a page still works (without JS-SDK) when WeChat cannot be reached."""
    try:
        return jssdk_config(appid, secret, url)
    except (WeChatAPIError, redis.RedisError) as exc:
        log.warning("no JS-SDK config for %s: %s", appid, type(exc).__name__)
        return None
