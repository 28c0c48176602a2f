"""Payments: merchants, the provider for an account, notifications applied exactly once.

A notification is verified before it is parsed, checked against its payment intent (merchant,
appid, the exact amount in fen), recorded raw, and applied idempotently: the provider's
transaction id is unique, and the intent's transition is conditional — fifty copies at once have
one effect. A payment for a trade number we never issued is recorded as an anomaly and refunded;
one for a closed intent is refunded.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any, Literal

import sqlalchemy as sa
from flask import current_app

from payments import intents, ledger, refunds
from payments.models import IntentState, Merchant, PaymentIntent, PaymentTransaction, Provider, TxnKind
from payments.providers.alipay import (
    PAID_STATES,
    AlipayProvider,
    private_key_pem,
    public_key_pem,
    yuan_to_fen,
)
from payments.providers.wechatpay_v2 import WeChatPayV2
from payments.providers.wechatpay_v3 import NotificationError, PaymentProviderError, WeChatPayV3
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db

log = logging.getLogger(__name__)


class MerchantConfigError(ServiceError):
    """A merchant's stored configuration cannot be used (a key that does not load, say): an
    operator has to fix it; notifications meanwhile get the provider's failure reply (so the
    provider retries), never a 500."""

    code = "merchant_misconfigured"
    status = 503


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
    problems: dict[str, list[str]] = {}
    try:  # Alipay's console shows bare base64; the SDK and OpenSSL want PEM: store PEM
        alipay_public_key = public_key_pem(alipay_public_key)
    except ValueError:
        problems["alipay_public_key"] = ["not an RSA public key (PEM or base64)"]
    try:
        app_private_key = private_key_pem(app_private_key)
    except ValueError:
        problems["app_private_key"] = ["not an RSA private key (PEM or base64)"]
    if problems:
        raise InvalidInputError("the Alipay keys are not valid", fields=problems)
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


def add_wechatpay_v2_merchant(
    account_id: int,
    *,
    mchid: str,
    api_key: str,
    sign_type: str = "MD5",
    appid: str | None = None,
    cert_pem: str = "",
    key_pem: str = "",
) -> Merchant:
    """A merchant still on API v2: its API key signs everything; the client certificate (optional
    here, required by WeChat Pay for refunds in production) authenticates refund requests."""
    from accounts.models import Account

    account = db.session.get(Account, account_id)
    if account is None:
        raise NotFoundError("no such account")
    if len(api_key) != 32:
        raise InvalidInputError("the API key has 32 characters", fields={"api_key": ["invalid"]})
    if sign_type not in ("MD5", "HMAC-SHA256"):
        raise InvalidInputError("sign type is MD5 or HMAC-SHA256", fields={"sign_type": ["invalid"]})
    merchant = db.session.scalar(
        sa.select(Merchant).where(
            Merchant.account_id == account_id, Merchant.provider == Provider.wechatpay_v2
        )
    )
    if merchant is None:
        merchant = Merchant(account_id=account_id, provider=Provider.wechatpay_v2)
        db.session.add(merchant)
    merchant.mchid, merchant.appid, merchant.serial_no = mchid, appid or account.appid, ""
    merchant.apiv3_key, merchant.sign_type = api_key, sign_type
    merchant.private_key, merchant.platform_public_key = key_pem, cert_pem
    merchant.platform_public_key_id = ""
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
                merchant.sign_type or "",
                cfg["WECHATPAY_API_BASE"],
                cfg["ALIPAY_GATEWAY"],
                cfg["PUBLIC_BASE_URL"],
            ]
        ).encode()
    ).hexdigest()
    cached = _providers.get(merchant.id)
    if cached and cached[0] == fingerprint:
        return cached[1]
    try:
        client = _build_provider(merchant, cfg)
    except Exception as exc:  # noqa: BLE001 - whatever the SDK or OpenSSL raise on a stored configuration
        # The type only: a key parser's message could quote the secret.
        raise MerchantConfigError(
            f"the {merchant.provider.value} merchant {merchant.id} cannot be used ({type(exc).__name__})"
        ) from None
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
    if merchant.provider is Provider.wechatpay_v2:
        return WeChatPayV2(
            mchid=merchant.mchid,
            appid=merchant.appid,
            api_key=merchant.apiv3_key,
            sign_type=merchant.sign_type or "MD5",
            cert_pem=merchant.platform_public_key or None,
            key_pem=merchant.private_key or None,
            api_base=cfg["WECHATPAY_API_BASE"],
            notify_url=f"{cfg['PUBLIC_BASE_URL']}/payments/wechatpay/v2/{merchant.id}/notify",
            refund_notify_url=f"{cfg['PUBLIC_BASE_URL']}/payments/wechatpay/v2/{merchant.id}/refund-notify",
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


def prepay(
    ref: intents.Ref,
    openid: str,
    description: str,
    client_ip: str = "127.0.0.1",
    return_url: str | None = None,
) -> dict[str, Any]:
    """What the client needs to pay an intent: JSAPI parameters (WeChat Pay), or the wap pay URL
    (Alipay, which sends the browser to ``return_url`` afterwards)."""
    intent = intents.of(ref)
    if intent.provider is Provider.alipay:
        url = provider(merchant_for(intent.account_id, "alipay")).wap_pay_url(
            out_trade_no=intent.out_trade_no,
            amount_fen=intent.amount_fen,
            subject=description,
            return_url=return_url,
        )
        return {"provider": "alipay", "url": url}
    client = provider(merchant_for(intent.account_id, intent.provider.value))
    extra: dict[str, Any] = {"expires_at": intent.expires_at}
    if intent.provider is Provider.wechatpay_v2:
        extra.update(client_ip=client_ip, starts_at=intent.created_at)
    params = client.jsapi(
        out_trade_no=intent.out_trade_no,
        amount_fen=intent.amount_fen,
        openid=openid,
        description=description,
        **extra,
    )
    intent.prepay_id = params["prepay_id"]
    return params


def _apply_payment(
    merchant: Merchant, out_trade_no: str, txn_id: str, amount: int, status: str, raw: dict[str, Any]
) -> bool:
    """Record a verified payment and apply it to its intent, once, and commit. False: the amount
    does not match the intent (recorded as an anomaly, nothing changed). Money for a trade number
    we never issued is recorded as an anomaly and sent back; money for a closed intent is sent back."""
    seen = (
        sa.select(PaymentTransaction.id)
        .where(
            PaymentTransaction.provider == merchant.provider,
            PaymentTransaction.kind == TxnKind.payment,
            PaymentTransaction.provider_txn_id == txn_id,
        )
        .exists()
    )
    # The intent and whether this payment is already on record, in one round trip.
    found = db.session.execute(
        sa.select(PaymentIntent, seen).where(
            PaymentIntent.out_trade_no == out_trade_no, PaymentIntent.account_id == merchant.account_id
        )
    ).first()
    intent, recorded = (found[0], bool(found[1])) if found else (None, False)
    if intent is not None and amount != intent.amount_fen:
        # Tampered or wrong: record it for the operator, change nothing, and say FAIL.
        ledger.record(
            merchant.account_id, intent.id, TxnKind.payment, txn_id, amount, status, raw,
            anomaly="amount_mismatch", provider_name=merchant.provider,
        )  # fmt: skip
        db.session.commit()
        return False
    if intent is not None and intent.state is not IntentState.pending and recorded:
        # A copy of a notification already applied (WeChat Pay sends several, Alipay sends
        # TRADE_FINISHED after TRADE_SUCCESS): one read, nothing to write.
        return True
    # A second notification of the same payment has the same provider id: the unique key makes
    # it a no-op even when two copies race past the check above.
    new = ledger.record(
        merchant.account_id, intent.id if intent else None, TxnKind.payment, txn_id, amount, status, raw,
        anomaly=None if intent else "unknown_order", provider_name=merchant.provider,
    )  # fmt: skip
    if intent is None:
        db.session.commit()
        if new:
            refunds.refund_unknown_payment(merchant, out_trade_no, amount, txn_id)
        return True
    # Applied even when the row existed: a copy after a half-finished first one completes it
    # (succeed() is a conditional transition, so a finished one is not applied twice).
    _take(intent, txn_id)
    db.session.commit()
    return True


def _take(intent: PaymentIntent, txn_id: str) -> None:
    """The intent is paid: announce it inside the transaction; money for a closed one goes back
    (its refund is committed, with the rest, before the provider is asked)."""
    if intents.succeed(intent, txn_id) == "late":
        refunds.refund_full(intent, "paid after the order closed")


def _merchant(merchant_id: int, kind: Provider) -> Merchant | None:
    merchant = db.session.get(Merchant, merchant_id)
    return merchant if merchant is not None and merchant.provider is kind else None


def handle_wechatpay_v3(
    merchant_id: int, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, body) for WeChat Pay: 204 and no body when accepted (or already applied)."""
    merchant = _merchant(merchant_id, Provider.wechatpay_v3)
    if merchant is None:
        return 404, {"code": "FAIL", "message": "unknown merchant"}
    try:
        data = provider(merchant).parse_notification(headers, body)
    except NotificationError as exc:
        return 401, {"code": "FAIL", "message": str(exc)}
    txn = data["resource"]
    if txn.get("mchid") != merchant.mchid:
        return 400, {"code": "FAIL", "message": "not this merchant's transaction"}
    event = str(data.get("event_type", ""))
    if event.startswith("REFUND."):
        amount = (txn.get("amount") or {}).get("refund")
        ok = refunds.notified(
            merchant,
            out_refund_no=str(txn.get("out_refund_no", "")),
            status=str(txn.get("refund_status", "")),
            provider_refund_id=str(txn.get("refund_id", "")),
            amount=amount if isinstance(amount, int) else -1,
            raw=txn,
        )
        return (204, None) if ok else (400, {"code": "FAIL", "message": "refund does not match"})
    if event != "TRANSACTION.SUCCESS" or txn.get("trade_state") != "SUCCESS":
        return 204, None  # nothing to apply
    if txn.get("appid") != merchant.appid:
        return 400, {"code": "FAIL", "message": "not this merchant's transaction"}
    amount = (txn.get("amount") or {}).get("total")
    if not isinstance(amount, int) or amount <= 0 or not txn.get("transaction_id"):
        return 400, {"code": "FAIL", "message": "amount or transaction id missing"}
    if not _apply_payment(
        merchant, str(txn.get("out_trade_no")), str(txn["transaction_id"]), amount, "SUCCESS", txn
    ):
        return 400, {"code": "FAIL", "message": "amount does not match the order"}
    return 204, None


V2_OK = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"


def v2_fail(message: str) -> str:
    return (
        "<xml><return_code><![CDATA[FAIL]]></return_code>"
        f"<return_msg><![CDATA[{message}]]></return_msg></xml>"
    )


def handle_wechatpay_v2(merchant_id: int, body: bytes) -> tuple[int, str]:
    """A v2 payment notification (XML); WeChat Pay resends until it reads return_code SUCCESS."""
    merchant = _merchant(merchant_id, Provider.wechatpay_v2)
    if merchant is None:
        return 404, v2_fail("unknown merchant")
    try:
        data = provider(merchant).parse_notification(body)
    except NotificationError as exc:
        return 401, v2_fail(str(exc))
    if data.get("return_code") != "SUCCESS" or data.get("result_code") != "SUCCESS":
        return 200, V2_OK  # a failed payment: nothing to apply
    try:
        amount = int(data.get("total_fee", ""))
    except ValueError:
        amount = 0
    if amount <= 0 or not data.get("transaction_id"):
        return 400, v2_fail("total_fee or transaction_id missing")
    if not _apply_payment(
        merchant, data.get("out_trade_no", ""), data["transaction_id"], amount, "SUCCESS", data
    ):
        return 400, v2_fail("amount does not match the order")
    return 200, V2_OK


def handle_wechatpay_v2_refund(merchant_id: int, body: bytes) -> tuple[int, str]:
    merchant = _merchant(merchant_id, Provider.wechatpay_v2)
    if merchant is None:
        return 404, v2_fail("unknown merchant")
    try:
        info = provider(merchant).parse_refund_notification(body)
    except NotificationError as exc:
        return 401, v2_fail(str(exc))
    status = {"CHANGE": "ABNORMAL", "REFUNDCLOSE": "CLOSED"}.get(info.get("refund_status", ""), "")
    try:
        amount = int(info.get("refund_fee", ""))
    except ValueError:
        amount = -1
    ok = refunds.notified(
        merchant,
        out_refund_no=info.get("out_refund_no", ""),
        status=status or info.get("refund_status", ""),
        provider_refund_id=info.get("refund_id", ""),
        amount=amount,
        raw=info,
    )
    return (200, V2_OK) if ok else (400, v2_fail("refund does not match"))


def reconcile_pending(ref: intents.Ref) -> str:
    """Active query for an intent still pending: a lost notification never loses a sale.
    ``paid`` once it is applied here; otherwise the provider's state."""
    intent = intents.of(ref)
    merchant = merchant_for(intent.account_id, intent.provider.value)
    try:
        result = provider(merchant).query(intent.out_trade_no)
    except PaymentProviderError as exc:
        if (exc.detail or {}).get("code") in ("ORDER_NOT_EXIST", "ACQ.TRADE_NOT_EXIST"):
            return "NOTPAY"  # the prepay never went through: nothing can be paid, it may close
        if merchant.provider is Provider.alipay:
            return "UNKNOWN"
        raise
    if merchant.provider is Provider.alipay:
        state, txn_id = str(result.get("trade_status", "UNKNOWN")), str(result.get("trade_no"))
        paid = state in PAID_STATES and yuan_to_fen(str(result.get("total_amount"))) == intent.amount_fen
    elif merchant.provider is Provider.wechatpay_v2:
        state, txn_id = str(result.get("trade_state", "UNKNOWN")), str(result.get("transaction_id"))
        paid = state == "SUCCESS" and str(result.get("total_fee")) == str(intent.amount_fen)
    else:
        state, txn_id = str(result.get("trade_state", "UNKNOWN")), str(result.get("transaction_id"))
        paid = state == "SUCCESS" and (result.get("amount") or {}).get("total") == intent.amount_fen
    if not paid:
        return state
    ledger.record(
        intent.account_id, intent.id, TxnKind.payment, txn_id, intent.amount_fen, state, dict(result),
        provider_name=merchant.provider,
    )  # fmt: skip
    _take(intent, txn_id)  # conditional: applied once
    return "paid"


def close_at_provider(ref: intents.Ref) -> Literal["closed", "paid", "open"]:
    """Close an unpaid intent at the provider first, so it cannot be paid after we close it:
    ``closed`` — closed there (or nothing to close), it may close here; ``paid`` — the provider
    answered ORDERPAID (paid since we last asked, its notification not here yet), so it was queried
    and is now paid; ``open`` — ORDERPAID but the query disagrees: it must not close, and is asked
    about again later."""
    intent = intents.of(ref)
    if intent.provider is Provider.alipay:
        return "closed"  # an Alipay trade expires on its own (timeout_express); a late payment is refunded
    try:
        provider(merchant_for(intent.account_id, intent.provider.value)).close(intent.out_trade_no)
    except PaymentProviderError as exc:
        if (exc.detail or {}).get("code") == "ORDERPAID":
            state = reconcile_pending(intent)
            if state == "paid":
                return "paid"
            log.warning("intent %s: close says ORDERPAID, query says %s", intent.out_trade_no, state)
            return "open"
        if (exc.detail or {}).get("code") not in ("ORDER_NOT_EXIST", "ORDERCLOSED"):
            raise
    return "closed"


SWEEP_AFTER = timedelta(minutes=2)


def sweep_pending(limit: int = 500) -> dict[str, int]:
    """Intents still pending after two minutes are asked about (a lost notification never loses a
    sale); expired ones are closed — at the provider first, so they cannot be paid later. One
    intent per transaction (a step boundary: each one's outcome commits on its own)."""
    counts = {"paid": 0, "closed": 0}
    now = utcnow()
    for intent in intents.pending_before(now - SWEEP_AFTER, limit):
        try:
            if reconcile_pending(intent) == "paid":
                counts["paid"] += 1
            elif intent.expires_at < now:
                # Paid between the query and the close (ORDERPAID): marked paid there, counted here.
                outcome = close_at_provider(intent)
                if outcome == "paid":
                    counts["paid"] += 1
                elif outcome == "closed" and intents.close(intent):
                    counts["closed"] += 1
            db.session.commit()
        except Exception:  # noqa: BLE001 - one intent's trouble must not stop the sweep
            db.session.rollback()
            log.exception("sweeping payment %s failed", intent.out_trade_no)
    return counts


def handle_alipay(merchant_id: int, form: dict[str, str]) -> str:
    """Alipay wants exactly `success` (else it resends 8 times over 25 h)."""
    merchant = _merchant(merchant_id, Provider.alipay)
    if merchant is None:
        return "failure"
    try:
        data = provider(merchant).parse_notification(form)
        amount = yuan_to_fen(data.get("total_amount", ""))
    except NotificationError as exc:
        log.warning("alipay notification refused: %s", exc)
        return "failure"
    if data.get("trade_status") not in PAID_STATES:
        return "success"  # WAIT_BUYER_PAY, TRADE_CLOSED: nothing to apply
    if not data.get("trade_no"):
        return "failure"
    ok = _apply_payment(
        merchant, data.get("out_trade_no", ""), data["trade_no"], amount, data["trade_status"], data
    )
    return "success" if ok else "failure"
