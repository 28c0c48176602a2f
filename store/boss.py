"""The gateway to the operator's BOSS (docs/boss-api.md): one interface, our HTTP adapter.

Every request is HMAC-SHA256 signed; every write carries an idempotency key; a write whose answer
never arrived raises ``BossUnknownOutcomeError`` so the caller asks ``query_request`` instead of
sending it again blindly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from flask import current_app

from wechat_service.errors import register_upstream_error

PHONE_RE = re.compile(r"^1[3-9]\d{9}$")


class BossError(Exception):
    """The BOSS refused (``code`` from the contract) or could not be reached."""

    def __init__(
        self, code: str, message: str = "", *, retryable: bool = False, status: int | None = None
    ) -> None:
        super().__init__(f"BOSS {code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status


class BossUnavailableError(BossError):
    """Timed out, connection failed, or BUSY/INTERNAL: for reads, try later."""


class BossUnknownOutcomeError(BossUnavailableError):
    """A write may or may not have happened: query it by its idempotency key."""


# Not caught by a caller: a 503 (unavailable) or 502 (refused) in the one error shape.
register_upstream_error(BossError, "The BOSS", lambda exc: isinstance(exc, BossUnavailableError))


def normalise_phone(value: str) -> str:
    phone = re.sub(r"[\s-]", "", value or "")
    if phone.startswith("+86"):
        phone = phone[3:]
    elif phone.startswith("0086"):
        phone = phone[4:]
    if not PHONE_RE.match(phone):
        raise ValueError("not a mainland mobile number")
    return phone


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = "\n".join([method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


class Boss(Protocol):
    """What the store needs of a BOSS; ``HttpBoss`` speaks our contract, adapters speak others."""

    def send_sms(self, phone: str, purpose: str = "bind") -> dict[str, Any]: ...
    def verify_sms(self, phone: str, code: str) -> dict[str, Any]: ...
    def balance(self, phone: str, *, timeout: float | None = None) -> dict[str, Any]: ...
    def data_usage(self, phone: str, *, timeout: float | None = None) -> dict[str, Any]: ...
    def bill(
        self, phone: str, month: str | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]: ...
    def points(self, phone: str, *, timeout: float | None = None) -> dict[str, Any]: ...
    def topup(self, phone: str, amount_fen: int, idempotency_key: str) -> dict[str, Any]: ...
    def data_package(self, phone: str, package_code: str, idempotency_key: str) -> dict[str, Any]: ...
    def plan_change(self, phone: str, plan_code: str, idempotency_key: str) -> dict[str, Any]: ...
    def points_debit(self, phone: str, points: int, reason: str, idempotency_key: str) -> dict[str, Any]: ...
    def points_credit(self, phone: str, points: int, reason: str, idempotency_key: str) -> dict[str, Any]: ...
    def query_request(self, idempotency_key: str) -> dict[str, Any]: ...


class HttpBoss:
    def __init__(
        self, base: str, app_id: str, secret: str, *, read_timeout: float = 3.0, write_timeout: float = 10.0
    ) -> None:
        if not base:
            raise BossUnavailableError("NOT_CONFIGURED", "WECHAT_SERVICE_BOSS_API_BASE is not set")
        self.base = base.rstrip("/")
        self.app_id = app_id
        self.secret = secret
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.http = requests.Session()

    def _call(
        self,
        operation: str,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        url = f"{self.base}/v1/{operation}"
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp, nonce = str(int(time.time())), secrets.token_hex(12)
        # The signed path is the URL's path as sent, including any prefix of the base URL.
        signature = sign(self.secret, "POST", urlsplit(url).path, timestamp, nonce, raw)
        headers = {
            "Content-Type": "application/json",
            "X-Boss-App": self.app_id,
            "X-Boss-Timestamp": timestamp,
            "X-Boss-Nonce": nonce,
            "X-Boss-Signature": signature,
        }
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        write = idempotency_key is not None
        unknown = BossUnknownOutcomeError if write else BossUnavailableError
        try:
            resp = self.http.post(
                url,
                data=raw,
                headers=headers,
                timeout=timeout or (self.write_timeout if write else self.read_timeout),
            )
        except requests.ConnectTimeout as exc:
            # Never connected: the request cannot have been carried out.
            raise BossUnavailableError("UNREACHABLE", type(exc).__name__, retryable=True) from None
        except requests.RequestException as exc:
            raise unknown("TIMEOUT", f"{type(exc).__name__}", retryable=True) from None
        self._verify_response(resp)
        try:
            payload = resp.json()
        except ValueError:
            raise unknown("BAD_RESPONSE", f"HTTP {resp.status_code}, not JSON", retryable=True) from None
        if resp.status_code == 200 and payload.get("ok"):
            return payload.get("data") or {}
        error = payload.get("error") or {}
        code = str(error.get("code") or f"HTTP_{resp.status_code}")
        if resp.status_code >= 500 or code in ("BUSY", "INTERNAL"):
            raise unknown(code, str(error.get("message", "")), retryable=True, status=resp.status_code)
        if resp.status_code == 429 or error.get("retryable"):
            # Refused for now (rate limits): nothing was done, try again later.
            raise BossUnavailableError(
                code, str(error.get("message", "")), retryable=True, status=resp.status_code
            )
        raise BossError(
            code,
            str(error.get("message", "")),
            retryable=bool(error.get("retryable")),
            status=resp.status_code,
        )

    def _verify_response(self, resp: requests.Response) -> None:
        """Answers are signed too: anything unsigned did not come from the BOSS."""
        given = resp.headers.get("X-Boss-Signature", "")
        expected = sign(
            self.secret,
            "RESPONSE",
            resp.request.path_url if resp.request else "",
            resp.headers.get("X-Boss-Timestamp", ""),
            resp.headers.get("X-Boss-Nonce", ""),
            resp.content,
        )
        if not hmac.compare_digest(given, expected):
            raise BossUnavailableError(
                "BAD_SIGNATURE", "the BOSS answer is not signed with our secret", retryable=True
            )

    def send_sms(self, phone: str, purpose: str = "bind") -> dict[str, Any]:
        return self._call("sms/send", {"phone": phone, "purpose": purpose})

    def verify_sms(self, phone: str, code: str) -> dict[str, Any]:
        return self._call("sms/verify", {"phone": phone, "code": code})

    def balance(self, phone: str, *, timeout: float | None = None) -> dict[str, Any]:
        return self._call("balance", {"phone": phone}, timeout=timeout)

    def data_usage(self, phone: str, *, timeout: float | None = None) -> dict[str, Any]:
        return self._call("data-usage", {"phone": phone}, timeout=timeout)

    def bill(self, phone: str, month: str | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        return self._call("bill", {"phone": phone, **({"month": month} if month else {})}, timeout=timeout)

    def points(self, phone: str, *, timeout: float | None = None) -> dict[str, Any]:
        return self._call("points", {"phone": phone}, timeout=timeout)

    def topup(self, phone: str, amount_fen: int, idempotency_key: str) -> dict[str, Any]:
        return self._call(
            "topup", {"phone": phone, "amount_fen": amount_fen}, idempotency_key=idempotency_key
        )

    def data_package(self, phone: str, package_code: str, idempotency_key: str) -> dict[str, Any]:
        return self._call(
            "data-package", {"phone": phone, "package_code": package_code}, idempotency_key=idempotency_key
        )

    def plan_change(self, phone: str, plan_code: str, idempotency_key: str) -> dict[str, Any]:
        return self._call(
            "plan-change", {"phone": phone, "plan_code": plan_code}, idempotency_key=idempotency_key
        )

    def points_debit(self, phone: str, points: int, reason: str, idempotency_key: str) -> dict[str, Any]:
        return self._call(
            "points-debit",
            {"phone": phone, "points": points, "reason": reason},
            idempotency_key=idempotency_key,
        )

    def points_credit(self, phone: str, points: int, reason: str, idempotency_key: str) -> dict[str, Any]:
        return self._call(
            "points-credit",
            {"phone": phone, "points": points, "reason": reason},
            idempotency_key=idempotency_key,
        )

    def query_request(self, idempotency_key: str) -> dict[str, Any]:
        return self._call("requests/query", {"idempotency_key": idempotency_key})


def boss() -> Boss:
    """The configured BOSS client, one per app."""
    app = current_app
    client = app.extensions.get("boss")
    if client is None:
        cfg = app.config
        client = HttpBoss(
            cfg.get("BOSS_API_BASE", ""),
            str(cfg.get("BOSS_APP_ID", "wechat-service")),
            str(cfg.get("BOSS_SECRET", "")),
            read_timeout=float(cfg.get("BOSS_READ_TIMEOUT", 3.0)),
            write_timeout=float(cfg.get("BOSS_WRITE_TIMEOUT", 10.0)),
        )
        app.extensions["boss"] = client
    return client
