"""Refunds, full and partial, through every provider.

Each refund has its own number, and a provider treats a resend under the same number as the same
refund, so asking again is always safe. The amount is reserved on the payment intent (never beyond
what was paid, by a conditional UPDATE) and committed before the provider is asked. A refund ends by
the provider's answer, its refund notification, or the sweep's query — whichever comes first; the
others find it finished (a conditional transition out of ``processing``). How it ended is announced
(``payments.signals.refund_settled``) inside the transaction that records it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from payments import intents, ledger, merchants, signals
from payments.models import Merchant, PaymentIntent, Refund, RefundStatus, TxnKind
from payments.providers.base import PaymentProviderError
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, step_boundary, upsert
from wechat_service.errors import ConflictError, InvalidInputError
from wechat_service.extensions import db

log = logging.getLogger(__name__)
FINAL_FAILURES = ("CLOSED", "ABNORMAL")
SWEEP_AFTER = timedelta(minutes=1)


def full_refund_no(out_trade_no: str) -> str:
    return f"RF{out_trade_no[2:]}"[:64]


@step_boundary("the amount is reserved and the refund on record before the provider is asked")
def request(
    ref: intents.Ref, amount_fen: int, reason: str, *, out_refund_no: str, requested_by: int | None = None
) -> Refund:
    """Create the refund (or find it, if this number was asked before), reserve the amount on the
    intent, commit, then ask the provider."""
    if amount_fen <= 0:
        raise InvalidInputError("the refund amount must be positive", fields={"amount": ["invalid"]})
    intent = intents.of(ref)
    inserted = upsert(
        Refund,
        [
            {
                "account_id": intent.account_id,
                "intent_id": intent.id,
                "provider": intent.provider,
                "out_trade_no": intent.out_trade_no,
                "total_fen": intent.amount_fen,
                "out_refund_no": out_refund_no,
                "amount_fen": amount_fen,
                "reason": reason[:200],
                "status": RefundStatus.processing,
                "requested_by": requested_by,
                "attempts": 0,
                "created_at": utcnow(),
            }
        ],
        conflict=["out_refund_no"],
        returning=["id"],
    )
    if inserted and not intents.reserve_refund(intent.id, amount_fen):
        db.session.rollback()
        raise InvalidInputError(
            "that is more than what is left to refund on this order", fields={"amount": ["too large"]}
        )
    refund = _by_number(out_refund_no)
    assert refund is not None  # inserted just now, or there already under this number
    if not inserted and (refund.amount_fen, refund.requested_by) != (amount_fen, requested_by):
        # Someone else took this number a moment ago for another refund: never answer with theirs.
        db.session.rollback()
        raise ConflictError("another refund of this order was just asked for; reload the page")
    db.session.commit()  # reserved and on record before the provider hears of it
    ask(refund)
    return refund


def refund_full(ref: intents.Ref, reason: str) -> Refund | None:
    """The whole remaining amount, under the intent's one full-refund number (None: nothing left)."""
    intent = intents.of(ref)
    existing = _by_number(full_refund_no(intent.out_trade_no))
    if existing is not None:
        ask(existing)
        return existing
    remaining = intent.amount_fen - intent.refunded_fen
    if remaining <= 0:
        return None
    return request(intent, remaining, reason, out_refund_no=full_refund_no(intent.out_trade_no))


def partial(ref: intents.Ref, amount_fen: int, reason: str, staff_user_id: int) -> Refund:
    """A staff refund of part of a payment; numbered per intent, so two staff clicking at once
    ask for one refund, not two."""
    intent = intents.of(ref)
    count = db.session.scalar(sa.select(sa.func.count()).where(Refund.intent_id == intent.id)) or 0
    number = f"RP{intent.out_trade_no[2:]}{count + 1:02d}"[:64]
    if _by_number(number) is not None:
        raise ConflictError("another refund of this order was just asked for; reload the page")
    return request(intent, amount_fen, reason, out_refund_no=number, requested_by=staff_user_id)


@step_boundary("the refund is on record before the provider is asked")
def refund_unknown_payment(merchant: Merchant, out_trade_no: str, amount_fen: int, txn_id: str) -> None:
    """Money for an order we never created: send it back (the anomaly is already recorded)."""
    number = f"RX{txn_id}"[:64]
    upsert(
        Refund,
        [
            {
                "account_id": merchant.account_id,
                "intent_id": None,
                "provider": merchant.provider,
                "out_trade_no": out_trade_no,
                "total_fen": amount_fen,
                "out_refund_no": number,
                "amount_fen": amount_fen,
                "reason": "payment for an unknown order",
                "status": RefundStatus.processing,
                "attempts": 0,
                "created_at": utcnow(),
            }
        ],
        conflict=["out_refund_no"],
    )
    db.session.commit()
    ask(_by_number(number))


def _by_number(out_refund_no: str) -> Refund | None:
    return db.session.scalar(sa.select(Refund).where(Refund.out_refund_no == out_refund_no))


@step_boundary("the provider's answer (or the failed attempt) is recorded before anything else happens")
def ask(refund: Refund | None) -> RefundStatus | None:
    """Ask the provider (again) for a refund still processing; apply its answer."""
    if refund is None:
        return None
    db.session.refresh(refund)
    if refund.status is not RefundStatus.processing:
        return refund.status
    client = merchants.client_for(merchants.merchant_for(refund.account_id, refund.provider))
    try:
        answer = client.refund_money(
            out_trade_no=refund.out_trade_no,
            out_refund_no=refund.out_refund_no,
            amount_fen=refund.amount_fen,
            total_fen=refund.total_fen,
            reason=refund.reason,
        )
    except PaymentProviderError as exc:
        log.error("refund %s not accepted yet: %s", refund.out_refund_no, exc)
        db.session.execute(
            sa.update(Refund).where(Refund.id == refund.id).values(attempts=Refund.attempts + 1)
        )
        db.session.commit()
        return RefundStatus.processing
    return settle(refund, answer.status, answer.refund_id, answer.raw)


@step_boundary("the provider's word on a refund, with the order's move, in one commit")
def settle(refund: Refund, status: str, provider_refund_id: str, raw: dict[str, Any]) -> RefundStatus:
    """Apply the provider's word on a refund, once, announce it, and commit."""
    if status == "SUCCESS":
        moved = execute_dml(
            sa.update(Refund)
            .where(Refund.id == refund.id, Refund.status == RefundStatus.processing)
            .values(
                status=RefundStatus.success,
                provider_refund_id=provider_refund_id or None,
                finished_at=utcnow(),
            )
        ).rowcount
        if moved:
            ledger.record(
                refund.account_id,
                refund.intent_id,
                TxnKind.refund,
                provider_refund_id or refund.out_refund_no,
                refund.amount_fen,
                "SUCCESS",
                raw,
                provider_name=refund.provider,
            )
            _announce(refund, succeeded=True)
    elif status in FINAL_FAILURES:
        moved = execute_dml(
            sa.update(Refund)
            .where(Refund.id == refund.id, Refund.status == RefundStatus.processing)
            .values(status=RefundStatus.failed, finished_at=utcnow())
        ).rowcount
        if moved:
            # ABNORMAL: the payer's card refused it (WeChat Pay keeps the money for a manual
            # refund); CLOSED: it never happened. Either way staff must act: the order stays as is.
            log.error("refund %s ended %s at the provider", refund.out_refund_no, status)
            if refund.intent_id is not None:
                intents.release_refund(refund.intent_id, refund.amount_fen)
            _announce(refund, succeeded=False, why=status)
    db.session.commit()
    db.session.refresh(refund)
    return refund.status


def _announce(refund: Refund, *, succeeded: bool, why: str = "") -> None:
    """Tell the domain that asked for the payment, inside this transaction."""
    intent = db.session.get(PaymentIntent, refund.intent_id) if refund.intent_id is not None else None
    if intent is None:
        return  # money for an unknown trade number: nobody above to tell
    signals.refund_settled.send(
        "payments",
        event=signals.RefundEvent(
            intent_id=intent.id,
            purpose=intent.purpose,
            amount_fen=refund.amount_fen,
            succeeded=succeeded,
            full=refund.out_refund_no == full_refund_no(refund.out_trade_no),
            why=why,
        ),
    )


@step_boundary("a provider notification: answered only once its effect is committed")
def notified(
    merchant: Merchant,
    *,
    out_refund_no: str,
    status: str,
    provider_refund_id: str,
    amount: int,
    raw: dict[str, Any],
) -> bool:
    """A verified refund notification. False: it does not match our refund (recorded, not applied)."""
    refund = db.session.scalar(
        sa.select(Refund).where(
            Refund.out_refund_no == out_refund_no, Refund.account_id == merchant.account_id
        )
    )
    if refund is None or amount != refund.amount_fen:
        if amount > 0 and provider_refund_id:
            ledger.record(
                merchant.account_id,
                refund.intent_id if refund else None,
                TxnKind.refund,
                provider_refund_id,
                amount,
                status,
                raw,
                anomaly="unknown_refund" if refund is None else "amount_mismatch",
                provider_name=merchant.provider,
            )
            db.session.commit()
        return refund is None  # an unknown refund is acknowledged (nothing to do); a mismatch is not
    settle(refund, status, provider_refund_id, raw)
    return True


def sweep(limit: int = 100) -> dict[str, int]:
    """Refunds still processing after a minute: ask the provider where they stand."""
    counts: dict[str, int] = {}
    stale = list(
        db.session.scalars(
            sa.select(Refund)
            .where(Refund.status == RefundStatus.processing, Refund.created_at < utcnow() - SWEEP_AFTER)
            .order_by(Refund.id)
            .limit(limit)
        )
    )
    for refund in stale:
        try:
            client = merchants.client_for(merchants.merchant_for(refund.account_id, refund.provider))
            answer = client.refund_state(out_trade_no=refund.out_trade_no, out_refund_no=refund.out_refund_no)
            if answer is None:
                outcome = ask(refund)  # the provider never heard of it (or asking is its query): ask now
            else:
                outcome = settle(refund, answer.status, answer.refund_id, answer.raw)
            key = outcome.value if outcome else "gone"
            counts[key] = counts.get(key, 0) + 1
        except Exception:  # noqa: BLE001 - one refund's trouble must not stop the others
            db.session.rollback()
            log.exception("refund sweep: %s", refund.out_refund_no)
            counts["error"] = counts.get("error", 0) + 1
    return counts


def of(ref: intents.Ref) -> list[Refund]:
    """The refunds of one payment, oldest first."""
    intent = intents.of(ref)
    return list(
        db.session.scalars(sa.select(Refund).where(Refund.intent_id == intent.id).order_by(Refund.id))
    )


def all_succeeded(ref: intents.Ref) -> bool:
    return all(r.status is RefundStatus.success for r in of(ref))
