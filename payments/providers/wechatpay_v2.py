"""WeChat Pay API v2 (XML) for merchants still on it, over wechatpy.pay.

wechatpy signs requests and carries them; what it lacks (PROTOCOLS.md) is done here: it checks
notification signatures with MD5 only (we accept MD5 **or** HMAC-SHA256, whichever the merchant's
key produced), it does not verify response signatures (we do), and its unified order looks up the
server's public IP over the internet when no client IP is given (we always pass one). XML is parsed
with DTDs and entities refused before anything is trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import time
from base64 import b64decode
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7
from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac

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
from payments.providers.keys import check_fields, optional, private_key_pem
from payments.providers.wechatpay import WeChatPayRefunds
from wechat_service.callbacks import BadMessageError, parse_xml

SIGN_TYPES = ("MD5", "HMAC-SHA256")
CHINA = timedelta(hours=8)
# v2 error codes, spelled the way v3 spells them, so callers handle one vocabulary.
CODES = {"ORDERNOTEXIST": "ORDER_NOT_EXIST", "REFUNDNOTEXIST": "RESOURCE_NOT_EXISTS"}


def sign(params: dict[str, Any], api_key: str, sign_type: str = "MD5") -> str:
    fields = {k: v for k, v in params.items() if k != "sign"}
    if sign_type == "HMAC-SHA256":
        return calculate_signature_hmac(fields, api_key)
    return calculate_signature(fields, api_key)


def signature_valid(params: dict[str, Any], api_key: str) -> bool:
    """True when ``sign`` is the MD5 or the HMAC-SHA256 signature of the other fields."""
    given = str(params.get("sign") or "").encode()  # bytes: compare_digest refuses non-ASCII str
    if not given:
        return False
    return any(hmac.compare_digest(given, sign(params, api_key, kind).encode()) for kind in SIGN_TYPES)


def decrypt_req_info(req_info: str, api_key: str) -> dict[str, str]:
    """A refund notification's ``req_info``: AES-256-ECB, key = lowercase hex md5(API key)."""
    key = hashlib.md5(api_key.encode()).hexdigest().encode()  # noqa: S324 - the protocol's key derivation
    try:
        decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305 - the protocol's mode
        padded = decryptor.update(b64decode(req_info, validate=True)) + decryptor.finalize()
        unpadder = PKCS7(128).unpadder()
        plain = unpadder.update(padded) + unpadder.finalize()
        root = parse_xml(plain.replace(b"<root>", b"<xml>").replace(b"</root>", b"</xml>"))
    except (ValueError, BadMessageError) as exc:
        raise NotificationError(f"req_info does not decrypt: {type(exc).__name__}") from None
    return root


class _Client(WeChatPay):
    """wechatpy's client with its answers' signatures checked (it does not check them itself)."""

    def _handle_result(self, res: Any) -> Any:
        data = super()._handle_result(res)
        if isinstance(data, dict) and not signature_valid(dict(data), self.api_key):
            raise PaymentProviderError("WeChat Pay's answer is not signed with this merchant's key")
        return data


class WeChatPayV2(WeChatPayRefunds):
    provider = "wechatpay_v2"

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        api_key: str,
        api_base: str,
        notify_url: str,
        refund_notify_url: str = "",
        sign_type: str = "MD5",
        cert_pem: str | None = None,
        key_pem: str | None = None,
        timeout: tuple[float, float] = (3.0, 10.0),
    ) -> None:
        if sign_type not in SIGN_TYPES:
            raise ValueError(f"sign_type must be one of {SIGN_TYPES}")
        self.mchid, self.appid, self.api_key, self.sign_type = mchid, appid, api_key, sign_type
        self.notify_url, self.refund_notify_url = notify_url, refund_notify_url
        cert = key = None
        if cert_pem and key_pem:  # refunds need the API client certificate (TLS client auth)
            cert, key = _private_file(cert_pem), _private_file(key_pem)
        self.client = _Client(appid, api_key, mchid, mch_cert=cert, mch_key=key, timeout=timeout)
        self.client.API_BASE_URL = api_base.rstrip("/") + "/"  # a class attribute in wechatpy

    def _post(self, endpoint: str, data: dict[str, Any]) -> Any:
        if self.sign_type != "MD5":
            data["sign_type"] = self.sign_type
        data.setdefault("appid", self.appid)
        try:
            return self.client.post(endpoint, data=data)
        except WeChatPayException as exc:
            code = exc.errcode or exc.return_code or "FAIL"
            raise PaymentProviderError(
                f"WeChat Pay v2 {endpoint}: {code} {exc.errmsg or exc.return_msg or ''}".strip(),
                detail={"code": CODES.get(code, code), "message": exc.errmsg or exc.return_msg},
            ) from None
        except OSError as exc:  # requests' connection errors and timeouts
            raise PaymentProviderError(f"WeChat Pay v2 {endpoint}: {type(exc).__name__}") from None

    def jsapi(
        self,
        *,
        out_trade_no: str,
        amount_fen: int,
        openid: str,
        description: str,
        expires_at: datetime,
        starts_at: datetime,
        client_ip: str = "127.0.0.1",
    ) -> dict[str, Any]:
        # Beijing wall-clock yyyyMMddHHmmss, fixed by the order: a repeated prepay is the same request.
        start, end = starts_at.astimezone(UTC) + CHINA, expires_at.astimezone(UTC) + CHINA
        result = self._post(
            "pay/unifiedorder",
            {
                "body": description[:127],
                "out_trade_no": out_trade_no,
                "total_fee": amount_fen,
                "spbill_create_ip": client_ip,
                "notify_url": self.notify_url,
                "trade_type": "JSAPI",
                "openid": openid,
                "time_start": start.strftime("%Y%m%d%H%M%S"),
                "time_expire": end.strftime("%Y%m%d%H%M%S"),
            },
        )
        prepay_id = result["prepay_id"]
        params = {
            "appId": self.appid,
            "timeStamp": str(int(time.time())),
            "nonceStr": secrets.token_hex(16),
            "package": f"prepay_id={prepay_id}",
            "signType": self.sign_type,
        }
        params["paySign"] = sign(params, self.api_key, self.sign_type)
        return {"prepay_id": prepay_id, **params}

    def query(self, out_trade_no: str) -> dict[str, Any]:
        return dict(self._post("pay/orderquery", {"out_trade_no": out_trade_no}))

    def close(self, out_trade_no: str) -> None:
        self._post("pay/closeorder", {"out_trade_no": out_trade_no})

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int, reason: str
    ) -> dict[str, Any]:
        """v2 answers that the refund was accepted; its outcome comes by notification or query."""
        result = self._post(
            "secapi/pay/refund",
            {
                "out_trade_no": out_trade_no,
                "out_refund_no": out_refund_no,
                "total_fee": total_fen,
                "refund_fee": refund_fen,
                "refund_desc": reason[:80],
                "notify_url": self.refund_notify_url,
            },
        )
        return {**result, "status": "PROCESSING", "refund_id": result.get("refund_id")}

    def refund_status(self, out_refund_no: str) -> dict[str, Any]:
        """{"status": SUCCESS | PROCESSING | CLOSED | ABNORMAL, "refund_id", "amount"} (v3's words)."""
        result = self._post("pay/refundquery", {"out_refund_no": out_refund_no})
        status = result.get("refund_status_0", "PROCESSING")
        return {
            "status": {"CHANGE": "ABNORMAL", "REFUNDCLOSE": "CLOSED"}.get(status, status),
            "refund_id": result.get("refund_id_0"),
            "amount": int(result.get("refund_fee_0") or 0),
            "raw": dict(result),
        }

    def statement(self, bill_date: str) -> str:
        """The day's trade statement (CSV text); ``bill_date`` is YYYYMMDD. No bill → empty."""
        try:
            text = self._post("pay/downloadbill", {"bill_date": bill_date, "bill_type": "ALL"})
        except PaymentProviderError as exc:
            if "No Bill Exist" in str(exc) or (exc.detail or {}).get("code") == "20002":
                return ""
            raise
        return text if isinstance(text, str) else ""

    def parse_notification(self, body: bytes) -> dict[str, str]:
        """A payment notification: signature (MD5 or HMAC-SHA256) checked before any field is used."""
        try:
            data = parse_xml(body)
        except BadMessageError as exc:
            raise NotificationError(str(exc)) from None
        if not signature_valid(data, self.api_key):
            raise NotificationError("signature does not verify with this merchant's key")
        if data.get("appid") != self.appid or data.get("mch_id") != self.mchid:
            raise NotificationError("not this merchant's notification")
        return data

    def parse_refund_notification(self, body: bytes) -> dict[str, str]:
        """A refund notification: unsigned, but ``req_info`` only decrypts under our API key."""
        try:
            data = parse_xml(body)
        except BadMessageError as exc:
            raise NotificationError(str(exc)) from None
        if data.get("return_code") != "SUCCESS" or not data.get("req_info"):
            raise NotificationError("not a refund notification")
        if data.get("appid") != self.appid or data.get("mch_id") != self.mchid:
            raise NotificationError("not this merchant's notification")
        return decrypt_req_info(data["req_info"], self.api_key)

    # -- the provider interface (payments.providers.base.PaymentProvider) --------------------------

    def prepare(self, charge: Charge) -> Checkout:
        params = self.jsapi(
            out_trade_no=charge.out_trade_no,
            amount_fen=charge.amount_fen,
            openid=charge.openid,
            description=charge.description,
            expires_at=charge.expires_at,
            starts_at=charge.starts_at,
            client_ip=charge.client_ip,
        )
        return Checkout(params, params["prepay_id"])

    def read_notification(self, incoming: Incoming) -> Notice:
        if incoming.refund_path:
            info = self.parse_refund_notification(incoming.body)
            status = {"CHANGE": "ABNORMAL", "REFUNDCLOSE": "CLOSED"}.get(info.get("refund_status", ""), "")
            try:
                amount = int(info.get("refund_fee", ""))
            except ValueError:
                amount = -1
            return Notice(
                "refund",
                out_refund_no=info.get("out_refund_no", ""),
                status=status or info.get("refund_status", ""),
                refund_id=info.get("refund_id", ""),
                amount_fen=amount,
                raw=dict(info),
            )
        data = self.parse_notification(incoming.body)
        if data.get("return_code") != "SUCCESS" or data.get("result_code") != "SUCCESS":
            return Notice("ignore")  # a failed payment: nothing to apply
        try:
            amount = int(data.get("total_fee", ""))
        except ValueError:
            amount = 0
        if amount <= 0 or not data.get("transaction_id"):
            return Notice("invalid", problem="total_fee or transaction_id missing")
        return Notice(
            "payment",
            out_trade_no=data.get("out_trade_no", ""),
            txn_id=data["transaction_id"],
            amount_fen=amount,
            status="SUCCESS",
            raw=dict(data),
        )

    @staticmethod
    def answer(status: int, message: str = "") -> Answer:
        """WeChat Pay v2 resends until it reads return_code SUCCESS."""
        if status < 300:
            return Answer(200, V2_OK, "text/xml")
        return Answer(status, v2_fail(message), "text/xml")

    def payment(self, out_trade_no: str, amount_fen: int) -> PaymentState:
        try:
            result = self.query(out_trade_no)
        except PaymentProviderError as exc:
            if exc.code in NOT_FOUND:
                return PaymentState("NOTPAY")
            raise
        state = str(result.get("trade_state", "UNKNOWN"))
        paid = state == "SUCCESS" and str(result.get("total_fee")) == str(amount_fen)
        return PaymentState(state, str(result.get("transaction_id")), amount_fen, paid, dict(result))

    def day_statement(self, bill_date: date) -> str:
        return self.statement(bill_date.strftime("%Y%m%d"))


V2_OK = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"


def v2_fail(message: str) -> str:
    return (
        "<xml><return_code><![CDATA[FAIL]]></return_code>"
        f"<return_msg><![CDATA[{message}]]></return_msg></xml>"
    )


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """WeChat Pay v2 credentials: the API key and how requests are signed; the API client
    certificate and its key (PEM; WeChat Pay requires them for refunds) when given."""
    return check_fields(
        config,
        {
            "api_key": _api_key,
            "sign_type": _sign_type,
            "cert_pem": optional(_certificate),
            "key_pem": optional(private_key_pem),
        },
    )


def _api_key(value: str) -> str:
    if len(value) != 32:
        raise ValueError("the API key has 32 characters")
    return value


def _sign_type(value: str) -> str:
    if value not in SIGN_TYPES:
        raise ValueError("sign type is MD5 or HMAC-SHA256")
    return value


def _certificate(value: str) -> str:
    try:
        x509.load_pem_x509_certificate(value.strip().encode())
    except ValueError:
        raise ValueError("not a PEM certificate") from None
    return value.strip()


def _private_file(pem: str) -> str:
    """requests wants file paths for a client certificate: a 0600 file that lives with the process."""
    fd, path = tempfile.mkstemp(prefix="wxpay-", suffix=".pem")
    with os.fdopen(fd, "w") as fh:
        fh.write(pem)
    return path
