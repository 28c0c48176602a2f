"""The payment ledger's metric sources (composed by ``metrics.registry``).

Money counts when the provider moved it (its success_time / time_end / gmt_payment /
gmt_refund_pay, kept as ``moved_at``), on the account's local day — the day the provider's
statement and our reconciliation put it on — not when we happened to record the notification.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from payments.models import PaymentTransaction, TxnKind
from wechat_service.facts import COUNT, Bucket, Feed

T = PaymentTransaction
# Money for an unknown trade number or of a wrong amount is an anomaly (sent back, or refused): not revenue.
_PAYMENT = sa.and_(T.kind == TxnKind.payment, T.anomaly.is_(None), T.intent_id.is_not(None))
_REFUND = sa.and_(
    T.kind == TxnKind.refund, T.anomaly.is_(None), T.intent_id.is_not(None), T.status == "SUCCESS"
)


def paid_transactions(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, COUNT, _PAYMENT)


def gmv(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, sa.func.sum(T.amount_fen), _PAYMENT)


def refunds(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, COUNT, _REFUND)


def refunds_fen(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, sa.func.sum(T.amount_fen), _REFUND)


FEEDS: tuple[Feed, ...] = (Feed("payment_transactions", T.id, T.created_at, (T.moved_at,), T.account_id),)
