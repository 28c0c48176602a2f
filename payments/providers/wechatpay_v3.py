"""WeChat Pay API v3 (JSAPI) over wechatpayv3, in public-key mode.

What the SDK lacks (PROTOCOLS.md): its gateway is hard-coded (set here, in one place), it has no
replay window (we check the notification timestamp), and it requires the
``Wechatpay-Signature-Type`` header (we insist on it and on the configured ``Wechatpay-Serial``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
from wechatpayv3 import WeChatPay, WeChatPayType

from wechat_service.errors import register_upstream_error

NOTIFY_WINDOW = 300
CHINA = timezone(timedelta(hours=8))


class PaymentProviderError(Exception):
    def __init__(self, message: str, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


# Not caught by a caller: a 502 in the one error shape (unreachable: 503).
register_upstream_error(
    PaymentProviderError, "The payment provider", lambda exc: "unreachable" in str(exc).lower()
)


class NotificationError(ValueError):
    """The notification is not WeChat Pay's, or not for this merchant: refuse it (4xx)."""


class WeChatPayV3:
    provider = "wechatpay_v3"

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        serial_no: str,
        private_key: str,
        apiv3_key: str,
        platform_public_key: str,
        platform_public_key_id: str,
        api_base: str,
        notify_url: str,
        timeout: tuple[float, float] = (3.0, 10.0),
    ) -> None:
        self.mchid, self.appid, self.public_key_id = mchid, appid, platform_public_key_id
        self.client = WeChatPay(
            wechatpay_type=WeChatPayType.JSAPI,
            mchid=mchid,
            private_key=private_key,
            cert_serial_no=serial_no,
            appid=appid,
            apiv3_key=apiv3_key,
            notify_url=notify_url,
            public_key=platform_public_key,
            public_key_id=platform_public_key_id,
            timeout=timeout,
        )
        self.client._core._gate_way = api_base.rstrip("/")  # hard-coded in the SDK  # noqa: SLF001
        # The SDK lets requests' connection errors and timeouts escape as they are: make them ours,
        # so callers (refunds, queries, prepay) handle one error type.
        core = self.client._core  # noqa: SLF001
        send = core.request

        def request(*args: Any, **kwargs: Any) -> Any:
            try:
                return send(*args, **kwargs)
            except requests.RequestException as exc:
                raise PaymentProviderError(f"WeChat Pay unreachable: {type(exc).__name__}") from None

        core.request = request

    @staticmethod
    def _result(code: int, message: Any) -> dict[str, Any]:
        body = json.loads(message) if isinstance(message, str) and message else {}
        if not 200 <= code < 300:
            raise PaymentProviderError(
                f"WeChat Pay answered {code}: {body.get('code')} {body.get('message')}",
                status=code,
                detail=body,
            )
        return body

    def jsapi(
        self, *, out_trade_no: str, amount_fen: int, openid: str, description: str, expires_at: datetime
    ) -> dict[str, Any]:
        """Prepay, then the parameters the H5 page or mini-program passes to wx.requestPayment."""
        # Fixed by the order, not by now: a second prepay of the same order (the page reloaded,
        # a cache lost) sends the very same request, which WeChat Pay answers with the same prepay_id.
        expire = expires_at.astimezone(CHINA).isoformat(timespec="seconds")
        code, message = self.client.pay(
            description=description[:127],
            out_trade_no=out_trade_no,
            amount={"total": amount_fen, "currency": "CNY"},
            payer={"openid": openid},
            time_expire=expire,
        )
        prepay_id = self._result(code, message)["prepay_id"]
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        package = f"prepay_id={prepay_id}"
        pay_sign = self.client.sign([self.appid, timestamp, nonce, package])
        return {
            "prepay_id": prepay_id,
            "appId": self.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": pay_sign,
        }

    def query(self, out_trade_no: str) -> dict[str, Any]:
        return self._result(*self.client.query(out_trade_no=out_trade_no))

    def close(self, out_trade_no: str) -> None:
        self._result(*self.client.close(out_trade_no=out_trade_no))

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int, reason: str
    ) -> dict[str, Any]:
        return self._result(
            *self.client.refund(
                out_refund_no=out_refund_no,
                out_trade_no=out_trade_no,
                amount={"refund": refund_fen, "total": total_fen, "currency": "CNY"},
                reason=reason[:80],
            )
        )

    def refund_status(self, out_refund_no: str) -> dict[str, Any]:
        """{"status": SUCCESS | PROCESSING | CLOSED | ABNORMAL, "refund_id", "amount"}."""
        result = self._result(*self.client.query_refund(out_refund_no=out_refund_no))
        return {
            "status": result.get("status", "PROCESSING"),
            "refund_id": result.get("refund_id"),
            "amount": (result.get("amount") or {}).get("refund"),
            "raw": result,
        }

    def statement(self, bill_date: str) -> str:
        """The day's trade statement as CSV text (``bill_date`` YYYY-MM-DD); empty if there is none.
        The file's SHA-1 (of the uncompressed bill) is checked against the one the API announced."""
        code, message = self.client.trade_bill(bill_date=bill_date, bill_type="ALL", tar_type="GZIP")
        if code == 400 and "NO_STATEMENT_EXIST" in str(message):
            return ""
        info = self._result(code, message)
        code, content = self.client.download_bill(info["download_url"])
        if not 200 <= code < 300 or not isinstance(content, bytes):
            raise PaymentProviderError(f"statement download failed: {code}", status=code)
        try:
            raw = gzip.decompress(content)
        except (OSError, EOFError):
            raise PaymentProviderError("statement is not gzip") from None
        if info.get("hash_type") == "SHA1" and hashlib.sha1(raw).hexdigest() != info.get("hash_value"):  # noqa: S324
            raise PaymentProviderError("statement does not match its announced SHA-1")
        return raw.decode("utf-8-sig")

    def parse_notification(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """Verify (signature, serial, freshness) before parsing; return the decrypted resource."""
        get = {k.lower(): v for k, v in headers.items()}.get
        if get("wechatpay-signature-type", "") != "WECHATPAY2-SHA256-RSA2048" or not get(
            "wechatpay-signature"
        ):
            raise NotificationError("unsigned notification")
        if get("wechatpay-serial") != self.public_key_id:
            raise NotificationError("signed with a key that is not this merchant's platform key")
        try:
            fresh = abs(time.time() - int(get("wechatpay-timestamp", ""))) <= NOTIFY_WINDOW
        except ValueError:
            fresh = False
        if not fresh:
            raise NotificationError("stale or missing timestamp")
        sdk_headers = {
            "Wechatpay-Signature": get("wechatpay-signature"),
            "Wechatpay-Timestamp": get("wechatpay-timestamp"),
            "Wechatpay-Nonce": get("wechatpay-nonce", ""),
            "Wechatpay-Serial": get("wechatpay-serial"),
            "Wechatpay-Signature-Type": get("wechatpay-signature-type"),
        }
        try:
            data = self.client.callback(sdk_headers, body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotificationError(f"unreadable notification: {type(exc).__name__}") from None
        if not data or not isinstance(data.get("resource"), dict):
            raise NotificationError("signature or decryption failed")
        return data
