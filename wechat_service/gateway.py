"""The one way out to WeChat: per-account wechatpy clients, shared access tokens, typed errors.

wechatpy 1.8.18 hard-codes its token URL, has no ``stable_token``, and retries token errors
recursively without limit. ``GatewayClient`` rewrites every api.weixin.qq.com URL to
``WECHAT_API_BASE``, takes its token from ``TokenManager`` (one token per account in Redis,
refreshed single-flight under a lock) and turns errcodes into the typed errors below.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import requests
from flask import current_app
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException

from wechat_service.errors import register_upstream_error
from wechat_service.extensions import get_redis

log = logging.getLogger(__name__)

WECHAT_PUBLIC_BASE = "https://api.weixin.qq.com"
TOKEN_ERRORS = {40001, 40014, 42001}


class WeChatAPIError(WeChatClientException):
    """WeChat answered with a non-zero errcode (or could not be reached: errcode None).

    A subclass of wechatpy's own exception, so wechatpy's API helpers that catch a specific
    errcode (menu.get → None on 46003) keep working through the gateway.
    """

    def __init__(self, errcode: int | None, errmsg: str = "", *, appid: str = "") -> None:
        super().__init__(errcode, errmsg)
        self.appid = appid


class BusyError(WeChatAPIError):
    """-1: WeChat is busy; retried with backoff before this is raised."""


class UnreachableError(WeChatAPIError):
    """Connection failed or timed out; the request may or may not have reached WeChat."""


class TokenError(WeChatAPIError):
    """The access token stayed invalid after one refresh."""


class RateLimitedError(WeChatAPIError):
    """45009 daily quota, 45011 minute quota, 45047 customer-service limit, 45015 outside 48 h."""


class RecipientUnavailableError(WeChatAPIError):
    """40003 bad openid, 43004 not following, 43101 refused: skip the recipient, never retry."""


class BadTemplateError(WeChatAPIError):
    """47003 bad template data, 40037 bad template id."""


class ConfigurationError(WeChatAPIError):
    """40164 IP not whitelisted, 40013 bad appid, 40125/40001 at token time: fix the account."""


class InvalidCodeError(WeChatAPIError):
    """40029 invalid js_code, 40163 code already used."""


# A failure of WeChat (or of the network to any outside system) is a 502/503 in the error shape.
register_upstream_error(requests.RequestException, "an outside system")
register_upstream_error(
    WeChatClientException,
    "WeChat",
    lambda exc: isinstance(exc, (UnreachableError, BusyError, RateLimitedError, TokenError)),
)

ERROR_CLASSES: dict[int, type[WeChatAPIError]] = {
    -1: BusyError,
    45009: RateLimitedError,
    45011: RateLimitedError,
    45047: RateLimitedError,
    45015: RateLimitedError,
    40003: RecipientUnavailableError,
    43004: RecipientUnavailableError,
    43101: RecipientUnavailableError,
    47003: BadTemplateError,
    40037: BadTemplateError,
    40164: ConfigurationError,
    40013: ConfigurationError,
    40125: ConfigurationError,
    41002: ConfigurationError,
    41004: ConfigurationError,
    40029: InvalidCodeError,
    40163: InvalidCodeError,
}
for _code in TOKEN_ERRORS:
    ERROR_CLASSES[_code] = TokenError


def describe_failure(exc: Exception) -> str:
    """A transport failure, described without its URL: the query string carries the access token
    (or, for jscode2session, the app secret)."""
    request = getattr(exc, "request", None)
    host = urlsplit(request.url).hostname if request is not None and request.url else None
    return f"{type(exc).__name__}" + (f" talking to {host}" if host else "")


def error_for(errcode: int | None, errmsg: str, appid: str) -> WeChatAPIError:
    return ERROR_CLASSES.get(errcode or 0, WeChatAPIError)(errcode, errmsg, appid=appid)


class TokenManager:
    """One access token per account in Redis, shared by every process."""

    # Delete the cached token only if it is still the one that failed.
    _INVALIDATE = """
    if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def __init__(self, conn: redis.Redis, api_base: str, early_refresh: int, timeout: float) -> None:
        self.redis = conn
        self.api_base = api_base
        self.early_refresh = early_refresh
        self.timeout = timeout
        self._invalidate = conn.register_script(self._INVALIDATE)

    @staticmethod
    def key(appid: str) -> str:
        return f"wx:token:{appid}"

    def cached(self, appid: str) -> str | None:
        token, expires_at = self.redis.hmget(self.key(appid), "token", "expires_at")
        if token and float(expires_at or 0) - time.time() > self.early_refresh:
            return cast(bytes, token).decode()  # no decode_responses: Redis answers bytes
        return None

    def get(self, appid: str, secret: str) -> str:
        return self.cached(appid) or self.refresh(appid, secret)

    def refresh(self, appid: str, secret: str) -> str:
        """Single-flight: one process asks WeChat, the others wait and re-read."""
        lock = self.redis.lock(f"wx:token-lock:{appid}", timeout=30, blocking_timeout=30)
        if not lock.acquire():
            raise TokenError(None, "timed out waiting for the token refresh lock", appid=appid)
        try:
            token = self.cached(appid)
            if token:
                return token
            return self._fetch(appid, secret)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("token lock for %s expired before release", appid)

    def _fetch(self, appid: str, secret: str) -> str:
        health = f"wx:token-health:{appid}"
        try:
            resp = requests.post(
                f"{self.api_base}/cgi-bin/stable_token",
                json={
                    "grant_type": "client_credential",
                    "appid": appid,
                    "secret": secret,
                    "force_refresh": False,
                },
                timeout=self.timeout,
            )
            result = resp.json()
        except (requests.RequestException, ValueError) as exc:
            self.redis.hset(
                health,
                mapping={"last_error": f"unreachable: {type(exc).__name__}", "last_error_at": time.time()},
            )
            self.redis.hincrby(health, "failures", 1)
            raise UnreachableError(None, describe_failure(exc), appid=appid) from None
        if result.get("errcode"):
            self.redis.hset(
                health,
                mapping={
                    "last_error": f"{result['errcode']} {result.get('errmsg', '')}",
                    "last_error_at": time.time(),
                },
            )
            self.redis.hincrby(health, "failures", 1)
            err = error_for(int(result["errcode"]), result.get("errmsg", ""), appid)
            if isinstance(err, TokenError):  # 40001/40125 at token time means a wrong secret
                err = ConfigurationError(err.errcode, err.errmsg, appid=appid)
            raise err
        token = result["access_token"]
        expires_at = time.time() + int(result.get("expires_in", 7200))
        pipe = self.redis.pipeline()
        pipe.hset(self.key(appid), mapping={"token": token, "expires_at": expires_at})
        pipe.expireat(self.key(appid), int(expires_at))
        pipe.hset(health, mapping={"last_refresh_at": time.time(), "expires_at": expires_at})
        pipe.hincrby(health, "refreshes", 1)
        pipe.execute()
        return token

    def invalidate(self, appid: str, token: str) -> bool:
        return bool(self._invalidate(keys=[self.key(appid)], args=[token]))

    def health(self, appid: str) -> dict[str, Any]:
        health = cast("dict[bytes, bytes]", self.redis.hgetall(f"wx:token-health:{appid}"))  # bytes, as above
        raw = {k.decode(): v.decode() for k, v in health.items()}
        out: dict[str, Any] = {
            "refreshes": int(raw.get("refreshes", 0)),
            "failures": int(raw.get("failures", 0)),
            "last_refresh_at": float(raw["last_refresh_at"]) if "last_refresh_at" in raw else None,
            "expires_at": float(raw["expires_at"]) if "expires_at" in raw else None,
            "last_error": raw.get("last_error"),
            "last_error_at": float(raw["last_error_at"]) if "last_error_at" in raw else None,
        }
        out["healthy"] = bool(
            out["expires_at"]
            and out["expires_at"] > time.time()
            and (not out["last_error_at"] or out["last_error_at"] < (out["last_refresh_at"] or 0))
        )
        return out


class GatewayClient(WeChatClient):
    """wechatpy's client, pointed at ``WECHAT_API_BASE`` and made safe to share a token."""

    def __init__(
        self,
        appid: str,
        secret: str,
        *,
        api_base: str,
        tokens: TokenManager,
        timeout: float,
        busy_retries: int,
    ) -> None:
        super().__init__(appid, secret, timeout=timeout, auto_retry=False)
        self.api_base = api_base
        self.tokens = tokens
        self.busy_retries = busy_retries
        self.API_BASE_URL = f"{api_base}/cgi-bin/"
        self._current_token: str | None = None

    @property
    def access_token(self) -> str:
        self._current_token = self.tokens.get(self.appid, self.secret)
        return self._current_token

    def fetch_access_token(self) -> dict[str, Any]:
        return {"access_token": self.tokens.refresh(self.appid, self.secret)}

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        base = kwargs.pop("api_base_url", None)
        if base:
            kwargs["api_base_url"] = base.replace(WECHAT_PUBLIC_BASE, self.api_base)
        if url_or_endpoint.startswith(WECHAT_PUBLIC_BASE):
            url_or_endpoint = self.api_base + url_or_endpoint[len(WECHAT_PUBLIC_BASE) :]
        token_retried = False
        attempt = 0
        while True:
            # wechatpy writes the token into params: give each attempt its own copy.
            call_kwargs = {**kwargs, "params": dict(kwargs.get("params") or {})}
            try:
                return super()._request(method, url_or_endpoint, **call_kwargs)
            except requests.RequestException as exc:
                raise UnreachableError(None, describe_failure(exc), appid=self.appid) from None
            except WeChatAPIError:
                raise
            except WeChatClientException as exc:
                err = error_for(exc.errcode, str(exc.errmsg or ""), self.appid)
                if exc.errcode is None:
                    raise UnreachableError(None, "HTTP error from WeChat", appid=self.appid) from exc
            if isinstance(err, TokenError) and not token_retried and self._current_token:
                token_retried = True
                self.tokens.invalidate(self.appid, self._current_token)
                continue
            if isinstance(err, BusyError) and attempt < self.busy_retries:
                attempt += 1
                time.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
                continue
            raise err

    def _handle_result(
        self, res: Any, method: Any = None, url: Any = None, result_processor: Any = None, **kwargs: Any
    ) -> Any:
        result = self._decode_result(res) if not isinstance(res, dict) else res
        if isinstance(result, dict) and int(result.get("errcode", 0) or 0) != 0:
            raise WeChatClientException(int(result["errcode"]), result.get("errmsg", ""), client=self)
        return result if not result_processor else result_processor(result)

    # Endpoints wechatpy 1.8.18 lacks or gets wrong.
    def jscode2session(self, js_code: str) -> dict[str, Any]:
        """sns/jscode2session takes the app secret, not an access token."""
        try:
            resp = self._http.get(
                f"{self.api_base}/sns/jscode2session",
                params={
                    "appid": self.appid,
                    "secret": self.secret,
                    "js_code": js_code,
                    "grant_type": "authorization_code",
                },
                timeout=self.timeout,
            )
            result = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise UnreachableError(None, describe_failure(exc), appid=self.appid) from None
        if int(result.get("errcode", 0) or 0):
            raise error_for(int(result["errcode"]), result.get("errmsg", ""), self.appid)
        return result

    def get_user_phone_number(self, code: str) -> dict[str, Any]:
        """wxa/business/getuserphonenumber (mini-programs; wechatpy 1.8.18 lacks it): the phone
        number behind a getPhoneNumber button's ``code`` → ``phone_info``. Token errors and -1
        busy are retried by ``_request`` like every call; 40029 (invalid code) is InvalidCodeError."""
        return self.post(f"{WECHAT_PUBLIC_BASE}/wxa/business/getuserphonenumber", data={"code": code})


def token_manager() -> TokenManager:
    app = current_app
    tm = app.extensions.get("wechat_tokens")
    if tm is None:
        tm = TokenManager(
            get_redis(),
            app.config["WECHAT_API_BASE"],
            app.config["TOKEN_EARLY_REFRESH"],
            app.config["WECHAT_HTTP_TIMEOUT"],
        )
        app.extensions["wechat_tokens"] = tm
    return tm


def token_health(appid: str) -> dict[str, Any] | None:
    """For display: None when Redis cannot be asked (the page or CLI still shows the account)."""
    try:
        return token_manager().health(appid)
    except Exception:  # noqa: BLE001 - display only
        return None


def client_for(appid: str, secret: str) -> GatewayClient:
    cfg = current_app.config
    return GatewayClient(
        appid,
        secret,
        api_base=cfg["WECHAT_API_BASE"],
        tokens=token_manager(),
        timeout=cfg["WECHAT_HTTP_TIMEOUT"],
        busy_retries=cfg["WECHAT_BUSY_RETRIES"],
    )
