"""Payments: merchants, the provider for an account, notifications applied exactly once, refunds.

A notification is verified before it is parsed, checked against the order (merchant, appid, the
exact amount in fen), recorded raw, and applied idempotently: the provider's transaction id is
unique, and the order's transition is conditional — fifty copies at once have one effect. A
payment for an order that is unknown or already closed is recorded as an anomaly and refunded.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from payments.models import Merchant, PaymentTransaction, Provider, TxnKind
from payments.providers.wechatpay_v3 import NotificationError, PaymentProviderError, WeChatPayV3
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


def merchant_for(account_id: int) -> Merchant:
    merchant = db.session.scalar(
        sa.select(Merchant).where(
            Merchant.account_id == account_id, Merchant.provider == Provider.wechatpay_v3
        )
    )
    if merchant is None:
        raise NotFoundError("this account has no WeChat Pay merchant configured")
    return merchant


def provider(merchant: Merchant) -> WeChatPayV3:
    cfg = current_app.config
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
    params = provider(merchant_for(order.account_id)).jsapi(
        out_trade_no=order.out_trade_no, amount_fen=order.amount_fen, openid=openid, description=description
    )
    order.prepay_id = params["prepay_id"]
    return params


def refund(order: Any, amount_fen: int, reason: str) -> dict[str, Any]:
    merchant = merchant_for(order.account_id)
    out_refund_no = f"RF{order.out_trade_no[2:]}{secrets.token_hex(2).upper()}"[:64]
    try:
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
) -> bool:
    """One row per provider id; False if that id was already recorded (a duplicate)."""
    try:
        with db.session.begin_nested():
            db.session.add(
                PaymentTransaction(
                    account_id=account_id,
                    order_id=order_id,
                    provider=Provider.wechatpay_v3,
                    kind=kind,
                    provider_txn_id=txn_id,
                    amount_fen=amount_fen,
                    status=status,
                    anomaly=anomaly,
                    raw=raw,
                )
            )
    except IntegrityError:
        return False
    return True


def handle_wechatpay_v3(
    merchant_id: int, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, body) for WeChat Pay: 204 and no body when accepted (or already applied)."""
    from store import orders
    from store.models import Order, OrderStatus

    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None:
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
    first = _record(
        merchant.account_id,
        order.id if order else None,
        TxnKind.payment,
        str(txn["transaction_id"]),
        amount,
        "SUCCESS",
        txn,
        anomaly=anomaly,
    )
    if first and order is not None and not orders.paid(order, str(txn["transaction_id"])):
        db.session.refresh(order)
        if order.status is OrderStatus.closed:  # paid after we closed it: money back
            orders.refund(order, "paid after the order closed")
    db.session.commit()
    return 204, None


def reconcile_pending(order: Any) -> str:
    """Active query for an order still pending: a lost notification never loses a sale."""
    from store import orders

    result = provider(merchant_for(order.account_id)).query(order.out_trade_no)
    if (
        result.get("trade_state") == "SUCCESS"
        and (result.get("amount") or {}).get("total") == order.amount_fen
    ):
        if _record(
            order.account_id,
            order.id,
            TxnKind.payment,
            str(result["transaction_id"]),
            order.amount_fen,
            "SUCCESS",
            result,
        ):
            orders.paid(order, str(result["transaction_id"]))
        return "paid"
    return str(result.get("trade_state", "UNKNOWN"))


def close_at_provider(order: Any) -> bool:
    """Close an unpaid order at WeChat Pay first, so it cannot be paid after we close it."""
    try:
        provider(merchant_for(order.account_id)).close(order.out_trade_no)
    except PaymentProviderError as exc:
        if (exc.detail or {}).get("code") == "ORDERPAID":
            return False
        if (exc.detail or {}).get("code") != "ORDER_NOT_EXIST":
            raise
    return True
