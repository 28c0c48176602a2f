"""The store's metric sources (composed by ``metrics.registry``): inquiries, phone bindings,
orders and their history, redemptions, coupons and points exchanges."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from store.models import (
    CouponUse,
    Fulfilment,
    Inquiry,
    InquiryOutcome,
    Order,
    OrderEvent,
    PhoneBinding,
    PointsHold,
)
from wechat_service.facts import COUNT, Bucket, Feed

Q = Inquiry
F = Fulfilment
_REDEMPTION = F.source == "redemption"
_ORDER_HISTORY = sa.join(OrderEvent, Order, OrderEvent.order_id == Order.id)
_COUPON_ORDERS = sa.join(CouponUse, Order, CouponUse.order_id == Order.id)


def inquiries(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT)


def inquiries_answered(b: Bucket) -> sa.Select[Any]:
    return b.grouped(
        Q.account_id, Q.at, COUNT, Q.outcome.in_([InquiryOutcome.answered, InquiryOutcome.cached])
    )


def inquiries_deferred(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT, Q.outcome == InquiryOutcome.deferred)


def inquiries_failed(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT, Q.outcome == InquiryOutcome.failed)


def inquiries_by_kind(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT, dim=Q.kind)


def phones_bound(b: Bucket) -> sa.Select[Any]:
    return b.grouped(PhoneBinding.account_id, PhoneBinding.bound_at, COUNT)


def orders_created(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Order.account_id, Order.created_at, COUNT)


def _order_transitions(b: Bucket, status: str) -> sa.Select[Any]:
    return b.grouped(
        Order.account_id, OrderEvent.at, COUNT, OrderEvent.to_status == status, select_from=_ORDER_HISTORY
    )


def orders_paid(b: Bucket) -> sa.Select[Any]:
    return _order_transitions(b, "paid")


def orders_fulfilled(b: Bucket) -> sa.Select[Any]:
    return _order_transitions(b, "fulfilled")


def orders_refunded(b: Bucket) -> sa.Select[Any]:
    return _order_transitions(b, "refunded")


def _earlier_attempt(row: Any) -> Any:
    """An attempt of the same code before ``row`` (by time, then id)."""
    earlier = sa.orm.aliased(Fulfilment)
    return (
        sa.select(earlier.id)
        .where(
            earlier.source == "redemption",
            earlier.source_id == row.source_id,
            sa.or_(
                earlier.created_at < row.created_at,
                sa.and_(earlier.created_at == row.created_at, earlier.id < row.id),
            ),
        )
        .exists()
    )


def redemptions(b: Bucket) -> sa.Select[Any]:
    return b.grouped(F.account_id, F.created_at, COUNT, _REDEMPTION, ~_earlier_attempt(F))


def coupon_uses(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Order.account_id, CouponUse.created_at, COUNT, select_from=_COUPON_ORDERS)


def coupon_discount(b: Bucket) -> sa.Select[Any]:
    return b.grouped(
        Order.account_id,
        CouponUse.created_at,
        sa.func.sum(CouponUse.discount_fen),
        select_from=_COUPON_ORDERS,
    )


def points_exchanges(b: Bucket) -> sa.Select[Any]:
    return b.grouped(PointsHold.account_id, PointsHold.created_at, COUNT)


def points_spent(b: Bucket) -> sa.Select[Any]:
    return b.grouped(PointsHold.account_id, PointsHold.created_at, sa.func.sum(PointsHold.points))


def _later_attempts(new: Any) -> sa.Select:
    """A redemption attempt makes later attempts of the same code repeats: their days change."""
    later = sa.orm.aliased(Fulfilment)
    return (
        sa.select(later.account_id, sa.func.min(later.created_at), sa.func.max(later.created_at))
        .select_from(F)
        .join(later, sa.and_(later.source == "redemption", later.source_id == F.source_id))
        .where(new, _REDEMPTION, later.created_at >= F.created_at, later.id != F.id)
        .group_by(later.account_id)
    )


PB, PH = PhoneBinding, PointsHold
FEEDS: tuple[Feed, ...] = (
    Feed("inquiries", Q.id, Q.at, (Q.at,), Q.account_id),
    Feed("phone_bindings", PB.id, PB.bound_at, (PB.bound_at,), PB.account_id),
    Feed("orders", Order.id, Order.created_at, (Order.created_at,), Order.account_id),
    # A status change moves orders_paid/… on its own day and a conversion on the order's day.
    Feed(
        "order_events", OrderEvent.id, OrderEvent.at, (OrderEvent.at, Order.created_at), Order.account_id,
        _ORDER_HISTORY,
    ),
    Feed("fulfilments", F.id, F.created_at, (F.created_at,), F.account_id, reaches=(_later_attempts,)),
    Feed(
        "coupon_uses", CouponUse.id, CouponUse.created_at, (CouponUse.created_at,), Order.account_id,
        _COUPON_ORDERS,
    ),
    Feed("points_holds", PH.id, PH.created_at, (PH.created_at,), PH.account_id),
)  # fmt: skip
