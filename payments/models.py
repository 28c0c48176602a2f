"""Payment tables: merchants (keys encrypted at rest), payment intents, provider transactions and
refunds (raw payloads kept), reconciliation runs, fund pools."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wechat_service.dbtypes import EncryptedJSON, UTCDateTime, utcnow
from wechat_service.extensions import Model
from wechat_service.i18n import TitledEnum, _
from wechat_service.models import BigId, str_enum

CHINA = ZoneInfo("Asia/Shanghai")  # providers' times without a zone are Beijing time


class Provider(TitledEnum):
    wechatpay_v3 = "wechatpay_v3"
    wechatpay_v2 = "wechatpay_v2"
    alipay = "alipay"

    __titles__ = {
        "wechatpay_v3": _("WeChat Pay (API v3)"),
        "wechatpay_v2": _("WeChat Pay (API v2)"),
        "alipay": _("Alipay"),
    }


class Merchant(Model):
    """An account's merchant at one provider. ``mchid`` is the merchant number (Alipay: the seller
    id), ``appid`` the app payers pay through; everything else the provider needs is its own
    ``config`` (validated by the provider when saved, sealed whole at rest)."""

    __tablename__ = "merchants"
    __table_args__ = (sa.UniqueConstraint("account_id", "provider"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    provider: Mapped[Provider] = mapped_column(str_enum(Provider, 16))
    mchid: Mapped[str] = mapped_column(sa.String(32))
    appid: Mapped[str] = mapped_column(sa.String(32))
    config: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IntentState(enum.StrEnum):
    pending = "pending"  # waiting for the payer
    succeeded = "succeeded"  # the provider took the money (also after a close: then refunded)
    closed = "closed"  # unpaid and closed, here and at the provider


class PaymentIntent(Model):
    """What someone above payments asked to be paid: an amount, a payer, a provider and an opaque
    ``purpose`` (``order:123``) that only the asking domain reads. Notifications, queries, closing
    and refunds are checked against it; its state moves by conditional UPDATE, once."""

    __tablename__ = "payment_intents"
    __table_args__ = (
        sa.CheckConstraint("amount_fen > 0", name="amount_positive"),
        sa.CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refund_within_amount"),
        sa.Index("ix_payment_intents_state_created", "state", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    provider: Mapped[Provider] = mapped_column(str_enum(Provider, 16))
    out_trade_no: Mapped[str] = mapped_column(sa.String(32), unique=True)
    amount_fen: Mapped[int]
    refunded_fen: Mapped[int] = mapped_column(default=0)  # reserved by refunds asked or done
    payer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("subscribers.id", ondelete="SET NULL"))
    purpose: Mapped[str] = mapped_column(sa.String(64), index=True)
    state: Mapped[IntentState] = mapped_column(str_enum(IntentState, 16), default=IntentState.pending)
    provider_txn_id: Mapped[str | None] = mapped_column(sa.String(64))
    prepay_id: Mapped[str | None] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    succeeded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TxnKind(enum.StrEnum):
    payment = "payment"
    refund = "refund"


def _moved_at(context: Any) -> datetime:
    """Default of ``moved_at``: the provider's own time in the row's raw record (see
    provider_time_of), else when the row is written."""
    params = context.get_current_parameters()
    return provider_time_of(params.get("raw"), params.get("created_at") or utcnow())


class PaymentTransaction(Model):
    """The provider's record of money moving: one row per provider id; its raw payload kept."""

    __tablename__ = "payment_transactions"
    __table_args__ = (
        sa.UniqueConstraint("provider", "kind", "provider_txn_id"),
        sa.CheckConstraint("amount_fen > 0", name="amount_positive"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # None: money for a trade number we never issued (an anomaly, sent back).
    intent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("payment_intents.id"), index=True)
    provider: Mapped[Provider] = mapped_column(str_enum(Provider, 16))
    kind: Mapped[TxnKind] = mapped_column(str_enum(TxnKind, 16))
    provider_txn_id: Mapped[str] = mapped_column(sa.String(64))
    amount_fen: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(32))  # the provider's own state (SUCCESS, …)
    anomaly: Mapped[str | None] = mapped_column(sa.String(64))  # e.g. paid_after_close: refunded
    raw: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the provider moved the money (its success_time / time_end / gmt_payment / gmt_refund_pay):
    # the day money counts on in metrics, as in the provider's statement.
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_moved_at)


class RefundStatus(enum.StrEnum):
    processing = "processing"  # asked; the provider's notification or a query finishes it
    success = "success"
    failed = "failed"  # closed or abnormal at the provider: the amount is released


class Refund(Model):
    """One refund request (full or partial) under its own number; the provider treats a resend with
    the same number as the same refund, so asking again is always safe."""

    __tablename__ = "refunds"
    __table_args__ = (sa.CheckConstraint("amount_fen > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # None: money the provider took for a trade number we do not know (an anomaly), sent straight back.
    intent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("payment_intents.id"), index=True)
    provider: Mapped[Provider] = mapped_column(str_enum(Provider, 16))
    out_trade_no: Mapped[str] = mapped_column(sa.String(64))
    total_fen: Mapped[int]  # what was paid (the providers want it with every refund)
    out_refund_no: Mapped[str] = mapped_column(sa.String(64), unique=True)
    amount_fen: Mapped[int]
    reason: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[RefundStatus] = mapped_column(str_enum(RefundStatus, 16), default=RefundStatus.processing)
    provider_refund_id: Mapped[str | None] = mapped_column(sa.String(64))
    requested_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id"))  # None: automatic
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReconStatus(enum.StrEnum):
    matched = "matched"  # every line on both sides agrees
    discrepancies = "discrepancies"
    failed = "failed"  # the statement could not be fetched or read


class ReconciliationRun(Model):
    """One merchant's statement for one day matched against our ledger (re-running replaces it)."""

    __tablename__ = "reconciliation_runs"
    __table_args__ = (sa.UniqueConstraint("merchant_id", "bill_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    merchant_id: Mapped[int] = mapped_column(sa.ForeignKey("merchants.id", ondelete="CASCADE"))
    provider: Mapped[Provider] = mapped_column(str_enum(Provider, 16))
    bill_date: Mapped[date] = mapped_column(sa.Date)
    status: Mapped[ReconStatus] = mapped_column(str_enum(ReconStatus, 16))
    statement_rows: Mapped[int] = mapped_column(default=0)
    ledger_rows: Mapped[int] = mapped_column(default=0)
    matched: Mapped[int] = mapped_column(default=0)
    statement_net_fen: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # payments − refunds
    ledger_net_fen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReconItemKind(enum.StrEnum):
    missing_in_ledger = "missing_in_ledger"  # the provider moved money we have no record of
    missing_in_statement = "missing_in_statement"  # we recorded money the provider does not list
    amount_mismatch = "amount_mismatch"


class ReconciliationItem(Model):
    __tablename__ = "reconciliation_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        sa.ForeignKey("reconciliation_runs.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[ReconItemKind] = mapped_column(str_enum(ReconItemKind, 24))
    txn_kind: Mapped[TxnKind] = mapped_column(str_enum(TxnKind, 16))
    provider_txn_id: Mapped[str] = mapped_column(sa.String(64))
    out_trade_no: Mapped[str | None] = mapped_column(sa.String(64))
    ledger_fen: Mapped[int | None]
    statement_fen: Mapped[int | None]


class AlertLevel(enum.IntEnum):
    ok = 0
    warning = 1  # below the first threshold
    critical = 2  # below the second


class FundPool(Model):
    """A prepaid budget (e.g. a partner's money behind a data-gift campaign) that the products it
    funds draw on; it can never go below zero, and crossing a threshold alerts its staff once."""

    __tablename__ = "fund_pools"
    __table_args__ = (
        sa.CheckConstraint("balance_fen >= 0", name="balance_not_negative"),
        sa.CheckConstraint("critical_fen <= warning_fen", name="thresholds_ordered"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    balance_fen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    warning_fen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    critical_fen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    alert_level: Mapped[int] = mapped_column(default=0)  # an AlertLevel; moved by conditional UPDATE
    alert_openids: Mapped[list[str]] = mapped_column(sa.JSON, default=list)  # staff who get the message
    alert_template_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PoolEntryKind(enum.StrEnum):
    top_up = "top_up"
    debit = "debit"  # reserved for a fulfilment
    release = "release"  # the fulfilment failed: the reservation comes back
    alert = "alert"  # a threshold was crossed (amount 0; the level in `note`)


class FundPoolEntry(Model):
    """The pool's append-only ledger; (pool, kind, ref) is unique, so a retried debit is one debit."""

    __tablename__ = "fund_pool_entries"
    __table_args__ = (sa.UniqueConstraint("pool_id", "kind", "ref"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pool_id: Mapped[int] = mapped_column(sa.ForeignKey("fund_pools.id", ondelete="CASCADE"), index=True)
    kind: Mapped[PoolEntryKind] = mapped_column(str_enum(PoolEntryKind, 16))
    amount_fen: Mapped[int] = mapped_column(sa.BigInteger)
    ref: Mapped[str] = mapped_column(sa.String(64))
    balance_after: Mapped[int] = mapped_column(sa.BigInteger)
    note: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def provider_time_of(raw: Any, recorded: datetime) -> datetime:
    """The provider's time in a raw record (also the default of PaymentTransaction.moved_at)."""
    raw = raw if isinstance(raw, dict) else {}
    for key in ("success_time", "gmt_refund_pay", "gmt_payment", "time_end"):
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            continue
        try:
            if key == "time_end":  # v2: yyyyMMddHHmmss, Beijing time
                return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=CHINA).astimezone(UTC)
            parsed = datetime.fromisoformat(value)  # v3: RFC 3339; v2 refunds, Alipay: Beijing time
        except ValueError:
            continue
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=CHINA)).astimezone(UTC)
    return recorded
