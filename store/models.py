"""Store tables (so far): store settings, phone bindings and the inquiry ledger."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wechat_service.dbtypes import EncryptedText, UTCDateTime, utcnow
from wechat_service.extensions import db
from wechat_service.models import str_enum

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")

DEFAULT_INQUIRY_KEYWORDS = {
    "balance": ["余额", "话费", "查余额"],
    "data": ["流量", "查流量"],
    "bill": ["账单", "查账单"],
    "points": ["积分", "查积分"],
}


class StoreSettings(db.Model):
    """Per account: whether the store answers in chat, and with which keywords and menu keys."""

    __tablename__ = "store_settings"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), unique=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    # {"balance": ["余额", ...], ...}; menu CLICK keys are INQUIRY_BALANCE, INQUIRY_DATA, ...
    inquiry_keywords: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON, default=lambda: dict(DEFAULT_INQUIRY_KEYWORDS)
    )
    bind_keyword: Mapped[str] = mapped_column(sa.String(32), default="绑定")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PhoneBinding(db.Model):
    """A subscriber's verified phone number: encrypted at rest, found by a keyed hash."""

    __tablename__ = "phone_bindings"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "subscriber_id"),
        sa.Index("ix_phone_bindings_phone_hash", "phone_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    subscriber_id: Mapped[int] = mapped_column(sa.ForeignKey("subscribers.id", ondelete="CASCADE"))
    phone: Mapped[str] = mapped_column(EncryptedText)
    phone_hash: Mapped[str] = mapped_column(
        sa.String(64)
    )  # HMAC-SHA256(secret key, phone): look-ups, no clear text
    method: Mapped[str] = mapped_column(sa.String(16), default="sms")  # sms, mp (getPhoneNumber)
    bound_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InquiryKind(enum.StrEnum):
    balance = "balance"
    data = "data"
    bill = "bill"
    points = "points"


class InquiryOutcome(enum.StrEnum):
    answered = "answered"  # inside the callback (or the API call)
    cached = "cached"  # from the short per-subscriber cache
    deferred = "deferred"  # BOSS slower than the budget: answered later by customer-service message
    unbound = "unbound"  # no phone bound yet: told how to bind
    failed = "failed"


class Inquiry(db.Model):
    """The inquiry ledger (append-only): every inquiry is counted; metrics read it."""

    __tablename__ = "inquiries"
    __table_args__ = (sa.Index("ix_inquiries_account_at", "account_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[InquiryKind] = mapped_column(str_enum(InquiryKind, 16))
    source: Mapped[str] = mapped_column(sa.String(16))  # chat, menu, h5, mp
    outcome: Mapped[InquiryOutcome] = mapped_column(str_enum(InquiryOutcome, 16))
    latency_ms: Mapped[int | None]
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
