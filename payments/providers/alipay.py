"""Alipay wap pay through alipay-sdk-python, with the checks PROTOCOLS.md asks for.

Requests keep the SDK's own signing (RSA2 over every parameter but `sign`, `sign_type` included).
Notifications are verified here, not by the SDK's helper: its sign content keeps `sign`/`sign_type`,
it needs bytes, raises instead of returning False, accepts SHA-1 `RSA`, and re-parses the key on
every call. We drop both fields, insist on RSA2, and verify with the key parsed once (OpenSSL).
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from datetime import date
from typing import Any, Literal, cast

import requests
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.domain.AlipayDataDataserviceBillDownloadurlQueryModel import (
    AlipayDataDataserviceBillDownloadurlQueryModel,
)
from alipay.aop.api.domain.AlipayTradeFastpayRefundQueryModel import AlipayTradeFastpayRefundQueryModel
from alipay.aop.api.domain.AlipayTradeQueryModel import AlipayTradeQueryModel
from alipay.aop.api.domain.AlipayTradeRefundModel import AlipayTradeRefundModel
from alipay.aop.api.domain.AlipayTradeWapPayModel import AlipayTradeWapPayModel
from alipay.aop.api.request.AlipayDataDataserviceBillDownloadurlQueryRequest import (
    AlipayDataDataserviceBillDownloadurlQueryRequest,
)
from alipay.aop.api.request.AlipayTradeFastpayRefundQueryRequest import (
    AlipayTradeFastpayRefundQueryRequest,
)
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.request.AlipayTradeRefundRequest import AlipayTradeRefundRequest
from alipay.aop.api.request.AlipayTradeWapPayRequest import AlipayTradeWapPayRequest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
    RefundState,
)
from payments.providers.keys import check_fields, private_key_pem, public_key_pem
from wechat_service.money import fen_of, yuan

PAID_STATES = ("TRADE_SUCCESS", "TRADE_FINISHED")


def yuan_to_fen(value: str) -> int:
    """Alipay's amounts are yuan strings: exact, two decimals at most, or refused."""
    try:
        fen = fen_of(value)
    except ValueError as exc:
        raise NotificationError(str(exc)) from None
    if fen <= 0:
        raise NotificationError(f"amount {value!r} is not positive")
    return fen


def fen_to_yuan(fen: int) -> str:
    return yuan(fen)


class AlipayProvider:
    provider = "alipay"

    def __init__(
        self,
        *,
        app_id: str,
        seller_id: str,
        app_private_key: str,
        alipay_public_key: str,
        gateway: str,
        notify_url: str,
        timeout: int = 10,
    ) -> None:
        self.app_id, self.seller_id, self.notify_url = app_id, seller_id, notify_url
        # Rows saved before keys were normalised on save may hold bare base64: normalise on use too.
        alipay_public_key, app_private_key = (
            public_key_pem(alipay_public_key),
            private_key_pem(app_private_key),
        )
        config = AlipayClientConfig()
        config.server_url = gateway  # never the SDK's sandbox_debug host
        config.app_id = app_id
        config.app_private_key = app_private_key  # PKCS#1, as the SDK requires
        config.alipay_public_key = alipay_public_key
        config.sign_type = "RSA2"
        config.timeout = timeout
        self.client = DefaultAlipayClient(config)
        key = serialization.load_pem_public_key(alipay_public_key.encode())
        self.public_key = cast(rsa.RSAPublicKey, key)  # public_key_pem (above) accepted it as RSA
        self.gateway, self.timeout, self.http = gateway, timeout, requests.Session()

    def wap_pay_url(
        self,
        *,
        out_trade_no: str,
        amount_fen: int,
        subject: str,
        expire_minutes: int = 30,
        return_url: str | None = None,
    ) -> str:
        """The wap pay page; ``return_url`` is where the browser goes afterwards (paid or not)."""
        model = AlipayTradeWapPayModel()
        model.out_trade_no, model.total_amount, model.subject = (
            out_trade_no,
            fen_to_yuan(amount_fen),
            subject[:256],
        )
        model.product_code, model.timeout_express = "QUICK_WAP_WAY", f"{expire_minutes}m"
        req = AlipayTradeWapPayRequest(biz_model=model)
        req.notify_url = self.notify_url
        if return_url:
            req.return_url = return_url
            model.quit_url = return_url  # the buyer leaves the cashier without paying
        return self.client.page_execute(req, http_method="GET")

    def _execute(self, req: Any) -> dict[str, Any]:
        """The SDK signs (its rules); we send and verify. Its own transport always dials port
        80/443 whatever the gateway URL says, and verifies answers with the slow pure-Python rsa."""
        query = self.client.sdk_execute(req)  # every parameter, signed, url-encoded
        try:
            resp = self.http.post(
                self.gateway,
                data=query,
                timeout=self.timeout,
                headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
            )
        except requests.RequestException as exc:
            raise PaymentProviderError(f"Alipay unreachable: {type(exc).__name__}") from None
        node = req.get_params()["method"].replace(".", "_") + "_response"
        result = self._verified(resp.text, node)
        if result.get("code") != "10000":
            raise PaymentProviderError(
                f"Alipay: {result.get('sub_code') or result.get('code')}", detail=result
            )
        return result

    def _verified(self, text: str, node: str) -> dict[str, Any]:
        """The answer's `<node>` object, checked against the `sign` computed over its exact text."""
        start, end = text.find(f'"{node}":'), text.rfind(',"sign":"')
        if start < 0 or end < start:
            raise PaymentProviderError("Alipay: unexpected answer")
        content = text[start + len(node) + 3 : end]
        sign = text[end + len(',"sign":"') : text.rfind('"')]
        try:
            self.public_key.verify(
                base64.b64decode(sign), content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            raise PaymentProviderError("Alipay: the answer's signature does not verify") from None
        return json.loads(content)

    def query(self, out_trade_no: str) -> dict[str, Any]:
        model = AlipayTradeQueryModel()
        model.out_trade_no = out_trade_no
        return self._execute(AlipayTradeQueryRequest(biz_model=model))

    def refund(
        self, *, out_trade_no: str, out_request_no: str, refund_fen: int, reason: str
    ) -> dict[str, Any]:
        model = AlipayTradeRefundModel()
        model.out_trade_no, model.out_request_no = out_trade_no, out_request_no
        model.refund_amount, model.refund_reason = fen_to_yuan(refund_fen), reason[:256]
        return self._execute(AlipayTradeRefundRequest(biz_model=model))

    def statement(self, bill_date: str) -> str:
        """The day's trade detail (CSV text, from the GBK file inside the bill zip); empty if none."""
        model = AlipayDataDataserviceBillDownloadurlQueryModel()
        model.bill_type, model.bill_date = "trade", bill_date
        try:
            url = self._execute(AlipayDataDataserviceBillDownloadurlQueryRequest(biz_model=model))[
                "bill_download_url"
            ]
        except PaymentProviderError as exc:
            if (exc.detail or {}).get("sub_code") == "isp.bill_not_exist":
                return ""
            raise
        try:
            resp = self.http.get(url, timeout=self.timeout)
            resp.raise_for_status()
            with zipfile.ZipFile(io.BytesIO(resp.content)) as archive:
                name = next(n for n in archive.namelist() if n.endswith("业务明细.csv"))
                return archive.read(name).decode("gbk")
        except (requests.RequestException, zipfile.BadZipFile, StopIteration, UnicodeDecodeError) as exc:
            raise PaymentProviderError(f"Alipay bill unreadable: {type(exc).__name__}") from None

    def refund_status(self, out_trade_no: str, out_request_no: str) -> dict[str, Any]:
        """{"status": SUCCESS | PROCESSING, ...}: Alipay names a refund done only by REFUND_SUCCESS."""
        model = AlipayTradeFastpayRefundQueryModel()
        model.out_trade_no, model.out_request_no = out_trade_no, out_request_no
        result = self._execute(AlipayTradeFastpayRefundQueryRequest(biz_model=model))
        done = result.get("refund_status") == "REFUND_SUCCESS"
        return {"status": "SUCCESS" if done else "PROCESSING", "refund_id": result.get("trade_no"), **result}

    def parse_notification(self, form: dict[str, str]) -> dict[str, str]:
        if form.get("sign_type") != "RSA2":
            raise NotificationError("only RSA2 (SHA-256) notifications are accepted")
        content = "&".join(f"{k}={v}" for k, v in sorted(form.items()) if k not in ("sign", "sign_type"))
        try:
            self.public_key.verify(
                base64.b64decode(form.get("sign", "")),
                content.encode("utf-8"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            raise NotificationError("signature does not verify") from None
        if form.get("app_id") != self.app_id or form.get("seller_id") != self.seller_id:
            raise NotificationError("not this merchant's notification")
        return form

    # -- the provider interface (payments.providers.base.PaymentProvider) --------------------------

    def prepare(self, charge: Charge) -> Checkout:
        """The wap pay URL: the browser goes there, then back to ``return_url``."""
        url = self.wap_pay_url(
            out_trade_no=charge.out_trade_no,
            amount_fen=charge.amount_fen,
            subject=charge.description,
            return_url=charge.return_url,
        )
        return Checkout({"provider": "alipay", "url": url})

    def read_notification(self, incoming: Incoming) -> Notice:
        data = self.parse_notification(incoming.form)
        amount = yuan_to_fen(data.get("total_amount", ""))  # NotificationError when not an amount
        if data.get("trade_status") not in PAID_STATES:
            return Notice("ignore")  # WAIT_BUYER_PAY, TRADE_CLOSED: nothing to apply
        if not data.get("trade_no"):
            return Notice("invalid", problem="trade_no missing")
        return Notice(
            "payment",
            out_trade_no=data.get("out_trade_no", ""),
            txn_id=data["trade_no"],
            amount_fen=amount,
            status=data["trade_status"],
            raw=dict(data),
        )

    @staticmethod
    def answer(status: int, message: str = "") -> Answer:
        """Alipay wants exactly ``success`` (else it resends 8 times over 25 h). It reads the body
        only: 200, unless the URL names no merchant (404) or the body is too large (413)."""
        return Answer(
            status if status in (404, 413) else 200, "success" if status < 300 else "failure", "text/plain"
        )

    def payment(self, out_trade_no: str, amount_fen: int) -> PaymentState:
        try:
            result = self.query(out_trade_no)
        except PaymentProviderError as exc:
            # Not there: nothing can be paid. Anything else: Alipay's answer is not a state.
            return PaymentState("NOTPAY" if exc.code in NOT_FOUND else "UNKNOWN")
        state = str(result.get("trade_status", "UNKNOWN"))
        paid = state in PAID_STATES and yuan_to_fen(str(result.get("total_amount"))) == amount_fen
        return PaymentState(state, str(result.get("trade_no")), amount_fen, paid, dict(result))

    def close_trade(self, out_trade_no: str) -> Literal["closed", "paid"]:
        return "closed"  # an Alipay trade expires on its own (timeout_express); a late payment is refunded

    def refund_money(
        self, *, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int, reason: str
    ) -> RefundState:
        raw = self.refund(
            out_trade_no=out_trade_no, out_request_no=out_refund_no, refund_fen=amount_fen, reason=reason
        )
        # Alipay refunds synchronously, but only fund_change=Y says this call moved the money; a
        # repeat (our earlier answer was lost) says N, and then the refund query decides.
        if raw.get("fund_change") == "Y":
            status = "SUCCESS"
        else:
            raw = self.refund_status(out_trade_no, out_refund_no)
            status = raw["status"]
        # Its answer carries no refund id of its own: the trade and our request number name it.
        return RefundState(status, f"{raw.get('trade_no', '')}-{out_refund_no}"[:64], amount_fen, dict(raw))

    def refund_state(self, *, out_trade_no: str, out_refund_no: str) -> RefundState | None:
        return None  # Alipay's refund call is its own idempotent query: the refund is asked again

    def day_statement(self, bill_date: date) -> str:
        return self.statement(bill_date.isoformat())


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Alipay credentials: the app's private key (stored as the PKCS#1 PEM the SDK needs) and
    Alipay's public key (PEM, or the bare base64 Alipay's console shows)."""
    return check_fields(config, {"app_private_key": private_key_pem, "alipay_public_key": public_key_pem})
