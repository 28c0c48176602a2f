"""Payment intents: what a domain above asks to be paid, and the only thing payments checks money
against.

A domain creates an intent (amount, payer, provider, its own opaque ``purpose``) and later hears
what became of it through ``payments.signals`` — ``intent_succeeded`` and ``intent_closed`` inside
the transaction that records the money, so its own state (an order) moves with the payment or not
at all. Every state change is a conditional UPDATE on the expected state: however many
notifications, queries and sweeps race, each change happens once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol

import sqlalchemy as sa

from payments import signals
from payments.models import IntentState, PaymentIntent, PaymentTransaction, Provider
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml
from wechat_service.errors import NotFoundError
from wechat_service.extensions import db


class Payable(Protocol):
    """Anything carrying one of our trade numbers (an intent, or the order that asked for it)."""

    @property
    def out_trade_no(self) -> str: ...


Ref = str | Payable


def create(
    account_id: int,
    *,
    provider: Provider | str,
    out_trade_no: str,
    amount_fen: int,
    purpose: str,
    expires_at: datetime,
    payer_id: int | None = None,
) -> PaymentIntent:
    """A new intent, pending (flushed, not committed: the caller's transaction owns it)."""
    intent = PaymentIntent(
        account_id=account_id,
        provider=Provider(provider),
        out_trade_no=out_trade_no,
        amount_fen=amount_fen,
        refunded_fen=0,
        payer_id=payer_id,
        purpose=purpose,
        state=IntentState.pending,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    db.session.add(intent)
    db.session.flush()
    return intent


def of(ref: Ref) -> PaymentIntent:
    """The intent of a trade number (or of anything carrying one)."""
    number = ref if isinstance(ref, str) else ref.out_trade_no
    intent = db.session.scalar(sa.select(PaymentIntent).where(PaymentIntent.out_trade_no == number))
    if intent is None:
        raise NotFoundError("no such payment")
    return intent


def event(intent: PaymentIntent, **extra: Any) -> signals.IntentEvent:
    return signals.IntentEvent(
        intent_id=intent.id,
        account_id=intent.account_id,
        purpose=intent.purpose,
        out_trade_no=intent.out_trade_no,
        amount_fen=intent.amount_fen,
        **extra,
    )


def _move(intent_id: int, source: IntentState, target: IntentState, **values: Any) -> bool:
    return (
        execute_dml(
            sa.update(PaymentIntent)
            .where(PaymentIntent.id == intent_id, PaymentIntent.state == source)
            .values(state=target, **values)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def succeed(intent: PaymentIntent, provider_txn_id: str) -> Literal["paid", "late", "again"]:
    """The provider took the money: ``paid`` (pending → succeeded, announced), ``late`` (it had
    been closed: announced as late, the caller sends the money back) or ``again`` (already
    succeeded: nothing to do)."""
    now = utcnow()
    for source, outcome in ((IntentState.pending, "paid"), (IntentState.closed, "late")):
        if _move(intent.id, source, IntentState.succeeded, provider_txn_id=provider_txn_id, succeeded_at=now):
            signals.intent_succeeded.send(
                "payments", event=event(intent, provider_txn_id=provider_txn_id, late=outcome == "late")
            )
            return outcome  # type: ignore[return-value]  # one of the two literals above
    return "again"


def close(intent: PaymentIntent) -> bool:
    """Closed unpaid (already closed at the provider); announced. False: it was not pending."""
    if not _move(intent.id, IntentState.pending, IntentState.closed, closed_at=utcnow()):
        return False
    signals.intent_closed.send("payments", event=event(intent))
    return True


def reserve_refund(intent_id: int, amount_fen: int) -> bool:
    """Reserve ``amount_fen`` of what was paid for a refund; False if that is more than is left."""
    return (
        execute_dml(
            sa.update(PaymentIntent)
            .where(
                PaymentIntent.id == intent_id,
                PaymentIntent.refunded_fen + amount_fen <= PaymentIntent.amount_fen,
            )
            .values(refunded_fen=PaymentIntent.refunded_fen + amount_fen)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def release_refund(intent_id: int, amount_fen: int) -> None:
    """A refund failed at the provider: its reservation comes back."""
    db.session.execute(
        sa.update(PaymentIntent)
        .where(PaymentIntent.id == intent_id)
        .values(refunded_fen=PaymentIntent.refunded_fen - amount_fen)
        .execution_options(synchronize_session=False)
    )


def refunded_fen_of(out_trade_no: Any) -> sa.ScalarSelect[int]:
    """A correlated scalar select of what is refunded (or reserved) on the intent of a trade-number
    column: the selectable a domain above reads it through."""
    return (
        sa.select(sa.func.coalesce(sa.func.max(PaymentIntent.refunded_fen), 0))
        .where(PaymentIntent.out_trade_no == out_trade_no)
        .correlate_except(PaymentIntent)
        .scalar_subquery()
    )


def transactions(ref: Ref) -> list[PaymentTransaction]:
    """The provider's records of money moving for this intent (payments and refunds)."""
    intent = of(ref)
    return list(
        db.session.scalars(
            sa.select(PaymentTransaction)
            .where(PaymentTransaction.intent_id == intent.id)
            .order_by(PaymentTransaction.id)
        )
    )


def pending_before(cutoff: datetime, limit: int) -> list[PaymentIntent]:
    return list(
        db.session.scalars(
            sa.select(PaymentIntent)
            .where(PaymentIntent.state == IntentState.pending, PaymentIntent.created_at < cutoff)
            .order_by(PaymentIntent.created_at)
            .limit(limit)
        )
    )
