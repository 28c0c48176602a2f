"""Payments: prepaying an intent, provider notifications applied exactly once, active queries,
closing at the provider, the sweep of pending intents.

A notification is verified before it is parsed, checked against its payment intent (merchant,
appid, the exact amount in fen), recorded raw, and applied idempotently: the provider's
transaction id is unique, and the intent's transition is conditional — fifty copies at once have
one effect. A payment for a trade number we never issued is recorded as an anomaly and refunded;
one for a closed intent is refunded.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Literal

import sqlalchemy as sa

from payments import intents, ledger, merchants, refunds
from payments.merchants import MerchantConfigError
from payments.models import IntentState, Merchant, PaymentIntent, PaymentTransaction, Provider, TxnKind
from payments.providers import kind_of
from payments.providers.base import Answer, Charge, Incoming, NotificationError
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary
from wechat_service.extensions import db

log = logging.getLogger(__name__)
__all__ = [
    "MerchantConfigError",
    "close_at_provider",
    "notified",
    "prepay",
    "reconcile_pending",
    "sweep_pending",
]


def prepay(
    ref: intents.Ref,
    openid: str,
    description: str,
    client_ip: str = "127.0.0.1",
    return_url: str | None = None,
) -> dict[str, Any]:
    """What the payer's client needs to pay an intent: JSAPI parameters (WeChat Pay), or the
    cashier's URL (Alipay, which sends the browser to ``return_url`` afterwards)."""
    intent = intents.of(ref)
    client = merchants.client_for(merchants.merchant_for(intent.account_id, intent.provider))
    checkout = client.prepare(
        Charge(
            intent.out_trade_no, intent.amount_fen, description, openid, client_ip,
            starts_at=intent.created_at, expires_at=intent.expires_at, return_url=return_url,
        )
    )  # fmt: skip
    if checkout.prepay_id:
        intent.prepay_id = checkout.prepay_id
    return checkout.params


@step_boundary("a provider notification: acknowledged only once the payment and its order's move committed")
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


def notified(merchant_id: int, provider: Provider, incoming: Incoming) -> Answer:
    """A provider's notification for one of our merchants: verified by the merchant's provider,
    applied once, answered the way that provider wants (ok stops its resending)."""
    answer = kind_of(provider).answer
    merchant = merchants.merchant_at(merchant_id, provider)
    if merchant is None:
        return answer(404, "unknown merchant")
    try:
        notice = merchants.client_for(merchant).read_notification(incoming)
    except NotificationError as exc:
        log.warning("%s notification for merchant %s refused: %s", provider.value, merchant_id, exc)
        return answer(401, str(exc))
    if notice.kind == "invalid":
        return answer(400, notice.problem)
    if notice.kind == "refund":
        ok = refunds.notified(
            merchant,
            out_refund_no=notice.out_refund_no,
            status=notice.status,
            provider_refund_id=notice.refund_id,
            amount=notice.amount_fen,
            raw=notice.raw,
        )
        return answer(200) if ok else answer(400, "refund does not match")
    if notice.kind == "payment" and not _apply_payment(
        merchant, notice.out_trade_no, notice.txn_id, notice.amount_fen, notice.status, notice.raw
    ):
        return answer(400, "amount does not match the order")
    return answer(200)


def reconcile_pending(ref: intents.Ref) -> str:
    """Active query for an intent still pending: a lost notification never loses a sale.
    ``paid`` once it is applied here; otherwise the provider's state."""
    intent = intents.of(ref)
    merchant = merchants.merchant_for(intent.account_id, intent.provider)
    state = merchants.client_for(merchant).payment(intent.out_trade_no, intent.amount_fen)
    if not state.paid:
        return state.state
    ledger.record(
        intent.account_id,
        intent.id,
        TxnKind.payment,
        state.txn_id,
        intent.amount_fen,
        state.state,
        state.raw,
        provider_name=merchant.provider,
    )
    _take(intent, state.txn_id)  # conditional: applied once
    return "paid"


def close_at_provider(ref: intents.Ref) -> Literal["closed", "paid", "open"]:
    """Close an unpaid intent at the provider first, so it cannot be paid after we close it:
    ``closed`` — closed there (or nothing to close), it may close here; ``paid`` — the provider
    says it was paid meanwhile (its notification not here yet), so it was queried and is now paid;
    ``open`` — paid there but the query disagrees: it must not close, and is asked about again."""
    intent = intents.of(ref)
    client = merchants.client_for(merchants.merchant_for(intent.account_id, intent.provider))
    if client.close_trade(intent.out_trade_no) == "closed":
        return "closed"
    state = reconcile_pending(intent)
    if state == "paid":
        return "paid"
    log.warning("intent %s: close says paid, query says %s", intent.out_trade_no, state)
    return "open"


SWEEP_AFTER = timedelta(minutes=2)


@step_boundary("one intent per transaction: one intent's trouble does not undo the others")
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
