"""Store tables: settings, phone bindings, inquiries, the catalogue, redeem codes, fulfilments,
orders, coupons and points holds."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, column_property, mapped_column

from payments.intents import refunded_fen_of
from wechat_service.dbtypes import EncryptedText, UTCDateTime, utcnow
from wechat_service.extensions import Model
from wechat_service.i18n import TitledEnum, _
from wechat_service.models import BigId, str_enum

DEFAULT_INQUIRY_KEYWORDS = {
    "balance": ["余额", "话费", "查余额"],
    "data": ["流量", "查流量"],
    "bill": ["账单", "查账单"],
    "points": ["积分", "查积分"],
}


class StoreSettings(Model):
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


class PhoneBinding(Model):
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


class Inquiry(Model):
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


# -- catalogue, redeem codes, fulfilment ---------------------------------------------------------


class ProductKind(enum.StrEnum):
    topup = "topup"  # face_value_fen onto the line's balance
    data_package = "data_package"  # package_code
    plan_change = "plan_change"  # plan_code
    voucher = "voucher"  # nothing carried out on the line (a coupon for later)


class Product(Model):
    """A catalogue item of an account (or of an org unit, shared by every account under it)."""

    __tablename__ = "products"
    __table_args__ = (
        sa.CheckConstraint("price_fen > 0", name="price_positive"),
        sa.CheckConstraint("(account_id IS NULL) <> (org_unit_id IS NULL)", name="one_owner"),
        sa.UniqueConstraint("account_id", "code"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    org_unit_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("org_units.id", ondelete="CASCADE"), index=True
    )
    code: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[ProductKind] = mapped_column(str_enum(ProductKind, 16))
    price_fen: Mapped[int]
    face_value_fen: Mapped[int | None]
    package_code: Mapped[str | None] = mapped_column(sa.String(64))
    plan_code: Mapped[str | None] = mapped_column(sa.String(64))
    active_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    active_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stock: Mapped[int | None]  # None: unlimited
    per_subscriber_limit: Mapped[int | None]
    points_price: Mapped[int | None]  # exchangeable for this many points (None: not for points)
    # Paid for by a prepaid fund pool (e.g. a partner's data gift): each fulfilment draws price_fen.
    fund_pool_id: Mapped[int | None] = mapped_column(sa.ForeignKey("fund_pools.id"))
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RedeemBatch(Model):
    __tablename__ = "redeem_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"))
    name: Mapped[str] = mapped_column(sa.String(128))
    count: Mapped[int]
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CodeStatus(enum.StrEnum):
    unused = "unused"
    redeemed = "redeemed"
    void = "void"


class RedeemCode(Model):
    """One single-use code: only its keyed hash is stored (the clear codes leave once, as CSV)."""

    __tablename__ = "redeem_codes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("redeem_batches.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    status: Mapped[CodeStatus] = mapped_column(str_enum(CodeStatus, 16), default=CodeStatus.unused)
    redeemed_by: Mapped[int | None] = mapped_column(sa.ForeignKey("subscribers.id"))
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FulfilmentStatus(enum.StrEnum):
    pending = "pending"  # waiting for the job
    succeeded = "succeeded"
    failed = "failed"  # the BOSS refused: nothing was carried out
    unknown = "unknown"  # asked, no answer yet: resolved by querying the BOSS, never by resending


class Fulfilment(Model):
    """Carrying a product out on a line through the BOSS, exactly once (its idempotency key)."""

    __tablename__ = "fulfilments"
    __table_args__ = (
        sa.Index("ix_fulfilments_status_created", "status", "created_at"),
        sa.Index("ix_fulfilments_source", "source", "source_id"),  # the attempts of one code
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    subscriber_id: Mapped[int] = mapped_column(sa.ForeignKey("subscribers.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"))
    source: Mapped[str] = mapped_column(sa.String(16))  # redemption, order
    source_id: Mapped[int]
    phone: Mapped[str] = mapped_column(EncryptedText)
    idempotency_key: Mapped[str] = mapped_column(sa.String(128), unique=True)
    status: Mapped[FulfilmentStatus] = mapped_column(
        str_enum(FulfilmentStatus, 16), default=FulfilmentStatus.pending
    )
    attempts: Mapped[int] = mapped_column(default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrderStatus(TitledEnum):
    pending_payment = "pending_payment"
    paid = "paid"
    fulfilling = "fulfilling"
    fulfilled = "fulfilled"
    fulfilment_failed = "fulfilment_failed"
    refunding = "refunding"
    refunded = "refunded"
    closed = "closed"  # unpaid, timed out or cancelled

    __titles__ = {
        "pending_payment": _("Awaiting payment"),
        "paid": _("Paid"),
        "fulfilling": _("Being carried out"),
        "fulfilled": _("Completed"),
        "fulfilment_failed": _("Carrying out failed"),
        "refunding": _("Refunding"),
        "refunded": _("Refunded"),
        "closed": _("Closed"),
    }


class Order(Model):
    __tablename__ = "orders"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "subscriber_id", "client_key"),
        sa.CheckConstraint("amount_fen > 0", name="amount_positive"),
        sa.Index("ix_orders_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"))
    client_key: Mapped[str] = mapped_column(sa.String(64))  # the client's idempotency key
    out_trade_no: Mapped[str] = mapped_column(sa.String(32), unique=True)
    amount_fen: Mapped[int]
    phone: Mapped[str] = mapped_column(EncryptedText)
    provider: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[OrderStatus] = mapped_column(
        str_enum(OrderStatus, 24), default=OrderStatus.pending_payment
    )
    list_price_fen: Mapped[int | None]  # before the coupon
    discount_fen: Mapped[int] = mapped_column(default=0)
    if TYPE_CHECKING:
        refunded_fen: int  # read from the payment intent (below)
    fulfilment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("fulfilments.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# What is refunded (or reserved for a refund) lives on the payment intent; the order reads it
# through payments' selectable, one correlated look-up by the unique trade number — deferred: loaded
# when read (the console, exports), not on every order the payment path moves.
Order.refunded_fen = column_property(refunded_fen_of(Order.out_trade_no), deferred=True)  # type: ignore[assignment]


class OrderEvent(Model):
    """The order's full state history: every transition a row."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(sa.String(24))
    to_status: Mapped[str] = mapped_column(sa.String(24))
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CouponKind(enum.StrEnum):
    fixed = "fixed"  # value: fen off
    percent = "percent"  # value: percent off (1-99)


class Coupon(Model):
    __tablename__ = "coupons"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "code"),
        sa.CheckConstraint("used_count >= 0", name="used_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(sa.String(32))
    name: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[CouponKind] = mapped_column(str_enum(CouponKind, 16))
    value: Mapped[int]
    min_spend_fen: Mapped[int] = mapped_column(default=0)
    per_person_limit: Mapped[int | None]
    total_limit: Mapped[int | None]
    used_count: Mapped[int] = mapped_column(default=0)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(default=True)


class CouponUse(Model):
    """A coupon on an order: held while the order lives, released when it closes or is refunded."""

    __tablename__ = "coupon_uses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    coupon_id: Mapped[int] = mapped_column(sa.ForeignKey("coupons.id", ondelete="CASCADE"), index=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    discount_fen: Mapped[int]
    released: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HoldStatus(enum.StrEnum):
    held = "held"  # debited at the BOSS, waiting for the fulfilment
    settled = "settled"  # the fulfilment succeeded: the points are spent
    released = "released"  # the fulfilment failed: credited back


class PointsHold(Model):
    """Points exchanged for a product: debited first (the BOSS refuses a negative balance), then
    settled on fulfilment or credited back on failure — each step idempotent by its own key."""

    __tablename__ = "points_holds"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "subscriber_id", "client_key"),
        sa.CheckConstraint("points > 0", name="points_positive"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"))
    client_key: Mapped[str] = mapped_column(sa.String(64))
    phone: Mapped[str] = mapped_column(EncryptedText)
    points: Mapped[int]
    status: Mapped[HoldStatus] = mapped_column(str_enum(HoldStatus, 16), default=HoldStatus.held)
    fulfilment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("fulfilments.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
