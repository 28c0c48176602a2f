"""Payments: merchants, the provider for an account, notifications applied exactly once, refunds.

A notification is verified before it is parsed, checked against the order (merchant, appid, the
exact amount in fen), recorded raw, and applied idempotently: the provider's transaction id is
unique, and the order's transition is conditional — fifty copies at once have one effect. A
payment for an order that is unknown or already closed is recorded as an anomaly and refunded.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import sqlalchemy as sa
from flask import current_app

from payments.models import Merchant, PaymentTransaction, Provider, TxnKind
from payments.providers.alipay import PAID_STATES, AlipayProvider, yuan_to_fen
from payments.providers.wechatpay_v3 import NotificationError, PaymentProviderError, WeChatPayV3
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError, NotFoundError
from wechat_service.extensions import db

log = logging.getLogger(__name__)


def add_merchant(
    account_id: int,
    *,
    mchid: str,
    serial_no: str,
    private_key: str,
    apiv3_key: str,
    platform_public_key: str,
    platform_public_key_id: str,
    appid: str | None = None,
) -> Merchant:
    from accounts.models import Account

    account = db.session.get(Account, account_id)
    if account is None:
        raise NotFoundError("no such account")
    if len(apiv3_key) != 32:
        raise InvalidInputError("the APIv3 key has 32 characters", fields={"apiv3_key": ["invalid"]})
    merchant = db.session.scalar(
        sa.select(Merchant).where(
            Merchant.account_id == account_id, Merchant.provider == Provider.wechatpay_v3
        )
    )
    if merchant is None:
        merchant = Merchant(account_id=account_id, provider=Provider.wechatpay_v3)
        db.session.add(merchant)
    merchant.mchid, merchant.serial_no, merchant.appid = mchid, serial_no, appid or account.appid
    merchant.private_key, merchant.apiv3_key = private_key, apiv3_key
    merchant.platform_public_key, merchant.platform_public_key_id = (
        platform_public_key,
        platform_public_key_id,
    )
    db.session.flush()
    return merchant


def add_alipay_merchant(
    account_id: int, *, app_id: str, seller_id: str, app_private_key: str, alipay_public_key: str
) -> Merchant:
    merchant = db.session.scalar(
        sa.select(Merchant).where(Merchant.account_id == account_id, Merchant.provider == Provider.alipay)
    )
    if merchant is None:
        merchant = Merchant(account_id=account_id, provider=Provider.alipay)
        db.session.add(merchant)
    merchant.mchid, merchant.appid, merchant.serial_no = seller_id, app_id, ""
    merchant.private_key, merchant.apiv3_key = app_private_key, ""
    merchant.platform_public_key, merchant.platform_public_key_id = alipay_public_key, "alipay"
    db.session.flush()
    return merchant


def merchant_for(account_id: int, provider_name: str = "wechatpay_v3") -> Merchant:
    merchant = db.session.scalar(
        sa.select(Merchant).where(
            Merchant.account_id == account_id, Merchant.provider == Provider(provider_name)
        )
    )
    if merchant is None:
        raise NotFoundError(f"this account has no {provider_name} merchant configured")
    return merchant


def provider(merchant: Merchant) -> Any:
    """The provider client, cached per process: parsing an RSA private key costs tens of
    milliseconds (OpenSSL checks it), far more than verifying a notification."""
    cfg = current_app.config
    fingerprint = hashlib.sha256(
        "|".join(
            [
                merchant.provider.value,
                merchant.mchid,
                merchant.appid,
                merchant.serial_no,
                merchant.private_key,
                merchant.apiv3_key,
                merchant.platform_public_key,
                merchant.platform_public_key_id,
                cfg["WECHATPAY_API_BASE"],
                cfg["ALIPAY_GATEWAY"],
                cfg["PUBLIC_BASE_URL"],
            ]
        ).encode()
    ).hexdigest()
    cached = _providers.get(merchant.id)
    if cached and cached[0] == fingerprint:
        return cached[1]
    client = _build_provider(merchant, cfg)
    _providers[merchant.id] = (fingerprint, client)
    return client


_providers: dict[int, tuple[str, Any]] = {}


def _build_provider(merchant: Merchant, cfg: Any) -> Any:
    if merchant.provider is Provider.alipay:
        return AlipayProvider(
            app_id=merchant.appid,
            seller_id=merchant.mchid,
            app_private_key=merchant.private_key,
            alipay_public_key=merchant.platform_public_key,
            gateway=cfg["ALIPAY_GATEWAY"],
            notify_url=f"{cfg['PUBLIC_BASE_URL']}/payments/alipay/{merchant.id}/notify",
        )
    return WeChatPayV3(
        mchid=merchant.mchid,
        appid=merchant.appid,
        serial_no=merchant.serial_no,
        private_key=merchant.private_key,
        apiv3_key=merchant.apiv3_key,
        platform_public_key=merchant.platform_public_key,
        platform_public_key_id=merchant.platform_public_key_id,
        api_base=cfg["WECHATPAY_API_BASE"],
        notify_url=f"{cfg['PUBLIC_BASE_URL']}/payments/wechatpay/v3/{merchant.id}/notify",
    )


def prepay(order: Any, openid: str, description: str) -> dict[str, Any]:
    """What the client needs to pay: JSAPI parameters (WeChat Pay), or the wap pay URL (Alipay)."""
    if order.provider == Provider.alipay.value:
        url = provider(merchant_for(order.account_id, "alipay")).wap_pay_url(
            out_trade_no=order.out_trade_no, amount_fen=order.amount_fen, subject=description
        )
        return {"provider": "alipay", "url": url}
    params = provider(merchant_for(order.account_id)).jsapi(
        out_trade_no=order.out_trade_no, amount_fen=order.amount_fen, openid=openid, description=description
    )
    order.prepay_id = params["prepay_id"]
    return params


def refund(order: Any, amount_fen: int, reason: str) -> dict[str, Any]:
    merchant = merchant_for(order.account_id, order.provider)
    # One full refund per order, under one number: a retry is the same refund at the provider.
    out_refund_no = f"RF{order.out_trade_no[2:]}"[:64]
    try:
        if merchant.provider is Provider.alipay:
            raw = provider(merchant).refund(
                out_trade_no=order.out_trade_no,
                out_request_no=out_refund_no,
                refund_fen=amount_fen,
                reason=reason,
            )
            result = {**raw, "status": "SUCCESS", "refund_id": out_refund_no}
        else:
            result = provider(merchant).refund(
                out_trade_no=order.out_trade_no,
                out_refund_no=out_refund_no,
                refund_fen=amount_fen,
                total_fen=order.amount_fen,
                reason=reason,
            )
    except PaymentProviderError as exc:
        log.error("refund of order %s failed: %s", order.id, exc)
        return {"status": "FAILED"}
    _record(
        order.account_id,
        order.id,
        TxnKind.refund,
        str(result.get("refund_id")),
        amount_fen,
        str(result.get("status")),
        result,
        provider_name=merchant.provider,
    )
    return result


def _record(
    account_id: int,
    order_id: int | None,
    kind: TxnKind,
    txn_id: str,
    amount_fen: int,
    status: str,
    raw: dict[str, Any],
    anomaly: str | None = None,
    provider_name: Provider = Provider.wechatpay_v3,
) -> bool:
    """One row per provider id; False if that id was already recorded (a duplicate).

    INSERT … ON CONFLICT DO NOTHING rather than a savepoint: on SQLite (pysqlite's default
    transaction handling) a savepoint's RELEASE can commit the row on its own."""
    from wechat_service.dbutil import upsert

    inserted = upsert(
        PaymentTransaction,
        [
            {
                "account_id": account_id,
                "order_id": order_id,
                "provider": provider_name,
                "kind": kind,
                "provider_txn_id": txn_id,
                "amount_fen": amount_fen,
                "status": status,
                "anomaly": anomaly,
                "raw": raw,
                "created_at": utcnow(),
            }
        ],
        conflict=["provider", "kind", "provider_txn_id"],
        returning=["id"],
    )
    return bool(inserted)


def handle_wechatpay_v3(
    merchant_id: int, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, body) for WeChat Pay: 204 and no body when accepted (or already applied)."""
    from store import orders
    from store.models import Order, OrderStatus

    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None or merchant.provider is not Provider.wechatpay_v3:
        return 404, {"code": "FAIL", "message": "unknown merchant"}
    try:
        data = provider(merchant).parse_notification(headers, body)
    except NotificationError as exc:
        return 401, {"code": "FAIL", "message": str(exc)}
    txn = data["resource"]
    if data.get("event_type") != "TRANSACTION.SUCCESS" or txn.get("trade_state") != "SUCCESS":
        return 204, None  # nothing to apply (e.g. a refund notification we track by query)
    if txn.get("mchid") != merchant.mchid or txn.get("appid") != merchant.appid:
        return 400, {"code": "FAIL", "message": "not this merchant's transaction"}
    amount = (txn.get("amount") or {}).get("total")
    order = db.session.scalar(
        sa.select(Order).where(
            Order.out_trade_no == str(txn.get("out_trade_no")), Order.account_id == merchant.account_id
        )
    )
    if not isinstance(amount, int) or amount <= 0:
        return 400, {"code": "FAIL", "message": "amount missing"}
    if order is not None and amount != order.amount_fen:
        # Tampered or wrong: record it for the operator, change nothing, and say FAIL.
        _record(
            merchant.account_id,
            order.id,
            TxnKind.payment,
            str(txn.get("transaction_id")),
            amount,
            "SUCCESS",
            txn,
            anomaly="amount_mismatch",
        )
        db.session.commit()
        return 400, {"code": "FAIL", "message": "amount does not match the order"}
    anomaly = (
        None
        if order is not None and order.status is OrderStatus.pending_payment
        else ("unknown_order" if order is None else None)
    )
    _record(
        merchant.account_id,
        order.id if order else None,
        TxnKind.payment,
        str(txn["transaction_id"]),
        amount,
        "SUCCESS",
        txn,
        anomaly=anomaly,
    )
    # Applied even when the row existed: a copy after a half-finished first one completes it
    # (paid() is a conditional transition, so a finished one is not applied twice).
    if order is not None and not orders.paid(order, str(txn["transaction_id"])):
        db.session.refresh(order)
        if order.status is OrderStatus.closed:  # paid after we closed it: money back
            orders.refund(order, "paid after the order closed")
    db.session.commit()
    return 204, None


def reconcile_pending(order: Any) -> str:
    """Active query for an order still pending: a lost notification never loses a sale."""
    from store import orders

    merchant = merchant_for(order.account_id, order.provider)
    if merchant.provider is Provider.alipay:
        try:
            result = provider(merchant).query(order.out_trade_no)
        except PaymentProviderError:
            return "UNKNOWN"
        if (
            result.get("trade_status") in PAID_STATES
            and yuan_to_fen(result["total_amount"]) == order.amount_fen
        ):
            _record(
                order.account_id,
                order.id,
                TxnKind.payment,
                str(result["trade_no"]),
                order.amount_fen,
                str(result["trade_status"]),
                result,
                provider_name=Provider.alipay,
            )
            orders.paid(order, str(result["trade_no"]))  # conditional: applied once
            return "paid"
        return str(result.get("trade_status", "UNKNOWN"))
    try:
        result = provider(merchant).query(order.out_trade_no)
    except PaymentProviderError as exc:
        if (exc.detail or {}).get("code") == "ORDER_NOT_EXIST":
            return "NOTPAY"  # the prepay never went through: nothing can be paid, the order may close
        raise
    if (
        result.get("trade_state") == "SUCCESS"
        and (result.get("amount") or {}).get("total") == order.amount_fen
    ):
        _record(
            order.account_id,
            order.id,
            TxnKind.payment,
            str(result["transaction_id"]),
            order.amount_fen,
            "SUCCESS",
            result,
        )
        orders.paid(order, str(result["transaction_id"]))  # conditional: applied once
        return "paid"
    return str(result.get("trade_state", "UNKNOWN"))


def close_at_provider(order: Any) -> bool:
    """Close an unpaid order at WeChat Pay first, so it cannot be paid after we close it."""
    if order.provider == Provider.alipay.value:
        return True  # an Alipay trade expires on its own (timeout_express); a late payment is refunded
    try:
        provider(merchant_for(order.account_id)).close(order.out_trade_no)
    except PaymentProviderError as exc:
        if (exc.detail or {}).get("code") == "ORDERPAID":
            return False
        if (exc.detail or {}).get("code") != "ORDER_NOT_EXIST":
            raise
    return True


def handle_alipay(merchant_id: int, form: dict[str, str]) -> str:
    """Alipay wants exactly `success` (else it resends 8 times over 25 h)."""
    from store import orders
    from store.models import Order, OrderStatus

    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None or merchant.provider is not Provider.alipay:
        return "failure"
    try:
        data = provider(merchant).parse_notification(form)
        amount = yuan_to_fen(data.get("total_amount", ""))
    except NotificationError as exc:
        log.warning("alipay notification refused: %s", exc)
        return "failure"
    if data.get("trade_status") not in PAID_STATES:
        return "success"  # WAIT_BUYER_PAY, TRADE_CLOSED: nothing to apply
    order = db.session.scalar(
        sa.select(Order).where(
            Order.out_trade_no == data.get("out_trade_no", ""), Order.account_id == merchant.account_id
        )
    )
    if order is not None and amount != order.amount_fen:
        _record(
            merchant.account_id,
            order.id,
            TxnKind.payment,
            data["trade_no"],
            amount,
            data["trade_status"],
            data,
            anomaly="amount_mismatch",
            provider_name=Provider.alipay,
        )
        db.session.commit()
        return "failure"
    # TRADE_FINISHED after TRADE_SUCCESS is the same trade_no: the unique key makes it a no-op.
    _record(
        merchant.account_id,
        order.id if order else None,
        TxnKind.payment,
        data["trade_no"],
        amount,
        data["trade_status"],
        data,
        anomaly=None if order else "unknown_order",
        provider_name=Provider.alipay,
    )
    if order is not None and not orders.paid(order, data["trade_no"]):
        db.session.refresh(order)
        if order.status is OrderStatus.closed:
            orders.refund(order, "paid after the order closed")
    db.session.commit()
    return "success"
