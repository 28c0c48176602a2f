"""Payment tables: merchants (keys encrypted at rest), provider transactions, raw notifications."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wechat_service.dbtypes import EncryptedText, UTCDateTime, utcnow
from wechat_service.extensions import db
from wechat_service.models import BigId, str_enum


class Provider(enum.StrEnum):
    wechatpay_v3 = "wechatpay_v3"
    alipay = "alipay"


class Merchant(db.Model):
    __tablename__ = "merchants"
    __table_args__ = (sa.UniqueConstraint("account_id", "provider"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    provider: Mapped[Provider] = mapped_column(str_enum(Provider, 16))
    mchid: Mapped[str] = mapped_column(sa.String(32))
    appid: Mapped[str] = mapped_column(sa.String(32))  # the appid payers pay through (the account's)
    serial_no: Mapped[str] = mapped_column(sa.String(64))  # the merchant API certificate's serial number
    private_key: Mapped[str] = mapped_column(EncryptedText)  # PEM
    apiv3_key: Mapped[str] = mapped_column(EncryptedText)
    platform_public_key: Mapped[str] = mapped_column(sa.Text)  # WeChat Pay's public key (public)
    platform_public_key_id: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TxnKind(enum.StrEnum):
    payment = "payment"
    refund = "refund"


class PaymentTransaction(db.Model):
    """The provider's record of money moving: one row per provider id; its raw payload kept."""

    __tablename__ = "payment_transactions"
    __table_args__ = (
        sa.UniqueConstraint("provider", "kind", "provider_txn_id"),
        sa.CheckConstraint("amount_fen > 0", name="amount_positive"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    provider: Mapped[Provider] = mapped_column(str_enum(Provider, 16))
    kind: Mapped[TxnKind] = mapped_column(str_enum(TxnKind, 16))
    provider_txn_id: Mapped[str] = mapped_column(sa.String(64))
    amount_fen: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(32))  # the provider's own state (SUCCESS, …)
    anomaly: Mapped[str | None] = mapped_column(sa.String(64))  # e.g. paid_after_close: refunded
    raw: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
