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
from datetime import date, datetime, timedelta, timezone
from typing import Any

import requests
from wechatpayv3 import WeChatPay, WeChatPayType

from payments.providers.base import (
    NOT_FOUND,
    Answer,
    Charge,
    Checkout,
    Incoming,
    Notice,
    NotificationError,
    PaymentProviderError,
    PaymentState,
)
from payments.providers.keys import check_fields, private_key_pem, public_key_pem
from payments.providers.wechatpay import WeChatPayRefunds

NOTIFY_WINDOW = 300
CHINA = timezone(timedelta(hours=8))


class WeChatPayV3(WeChatPayRefunds):
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

    # -- the provider interface (payments.providers.base.PaymentProvider) --------------------------

    def prepare(self, charge: Charge) -> Checkout:
        params = self.jsapi(
            out_trade_no=charge.out_trade_no,
            amount_fen=charge.amount_fen,
            openid=charge.openid,
            description=charge.description,
            expires_at=charge.expires_at,
        )
        return Checkout(params, params["prepay_id"])

    def read_notification(self, incoming: Incoming) -> Notice:
        data = self.parse_notification(incoming.headers, incoming.body)
        txn = data["resource"]
        if txn.get("mchid") != self.mchid:
            return Notice("invalid", problem="not this merchant's transaction")
        event = str(data.get("event_type", ""))
        if event.startswith("REFUND."):
            amount = (txn.get("amount") or {}).get("refund")
            return Notice(
                "refund",
                out_refund_no=str(txn.get("out_refund_no", "")),
                status=str(txn.get("refund_status", "")),
                refund_id=str(txn.get("refund_id", "")),
                amount_fen=amount if isinstance(amount, int) else -1,
                raw=txn,
            )
        if event != "TRANSACTION.SUCCESS" or txn.get("trade_state") != "SUCCESS":
            return Notice("ignore")
        if txn.get("appid") != self.appid:
            return Notice("invalid", problem="not this merchant's transaction")
        amount = (txn.get("amount") or {}).get("total")
        if not isinstance(amount, int) or amount <= 0 or not txn.get("transaction_id"):
            return Notice("invalid", problem="amount or transaction id missing")
        return Notice(
            "payment",
            out_trade_no=str(txn.get("out_trade_no")),
            txn_id=str(txn["transaction_id"]),
            amount_fen=amount,
            status="SUCCESS",
            raw=txn,
        )

    @staticmethod
    def answer(status: int, message: str = "") -> Answer:
        """200/204 with no body means received; anything else (4xx/5xx + code) is retried."""
        if status < 300:
            return Answer(204, None)
        return Answer(status, {"code": "FAIL", "message": message})

    def payment(self, out_trade_no: str, amount_fen: int) -> PaymentState:
        try:
            result = self.query(out_trade_no)
        except PaymentProviderError as exc:
            if exc.code in NOT_FOUND:
                return PaymentState("NOTPAY")  # the prepay never went through: nothing can be paid
            raise
        state = str(result.get("trade_state", "UNKNOWN"))
        paid = state == "SUCCESS" and (result.get("amount") or {}).get("total") == amount_fen
        return PaymentState(state, str(result.get("transaction_id")), amount_fen, paid, dict(result))

    def day_statement(self, bill_date: date) -> str:
        return self.statement(bill_date.isoformat())


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """WeChat Pay v3 credentials: the merchant API key pair's serial and private key, the APIv3
    key, WeChat Pay's public key and its id. Keys normalised to PEM; InvalidInputError by field."""
    return check_fields(
        config,
        {
            "serial_no": _serial,
            "private_key": lambda v: private_key_pem(v, pkcs8=True),
            "apiv3_key": _apiv3_key,
            "platform_public_key": public_key_pem,
            "platform_public_key_id": lambda v: _nonempty(v, "the public key's id (PUB_KEY_ID_…)"),
        },
    )


def _serial(value: str) -> str:
    value = value.strip().upper()
    if not value or len(value) > 64 or any(c not in "0123456789ABCDEF" for c in value):
        raise ValueError("the certificate serial number is hexadecimal")
    return value


def _apiv3_key(value: str) -> str:
    if len(value) != 32:
        raise ValueError("the APIv3 key has 32 characters")
    return value


def _nonempty(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} is required")
    return value.strip()
