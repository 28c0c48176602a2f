"""Coupons, applied when an order is created: fixed or percent off, a minimum spend, per-person
and total limits, a validity window. The total limit is taken with one conditional UPDATE, so no
number of concurrent orders can use it more often than allowed; closing or refunding an order
gives its use back."""

from __future__ import annotations

import re
from datetime import datetime

import sqlalchemy as sa

from store.errors import StoreErrorCode
from store.models import Coupon, CouponKind, CouponUse
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db

CODE_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{2,31}$")


class CouponError(ServiceError):
    code = StoreErrorCode.coupon_not_applicable
    status = 409


def add_coupon(
    account_id: int,
    *,
    code: str,
    name: str,
    kind: str,
    value: int,
    valid_from: datetime,
    valid_until: datetime,
    min_spend_fen: int = 0,
    per_person_limit: int | None = None,
    total_limit: int | None = None,
) -> Coupon:
    errors: dict[str, list[str]] = {}
    code = (code or "").strip().upper()
    if not CODE_RE.match(code):
        errors["code"] = ["3-32 letters, digits, _ or -"]
    try:
        kind_enum = CouponKind(kind)
    except ValueError:
        errors["kind"] = ["fixed or percent"]
        kind_enum = None
    if kind_enum is CouponKind.percent and not 1 <= value <= 99:
        errors["value"] = ["1 to 99 percent"]
    if kind_enum is CouponKind.fixed and value <= 0:
        errors["value"] = ["a positive number of fen"]
    if valid_until <= valid_from:
        errors["valid_until"] = ["after valid_from"]
    for field, limit in (("per_person_limit", per_person_limit), ("total_limit", total_limit)):
        if limit is not None and limit <= 0:
            errors[field] = ["positive, or none"]
    if errors:
        raise InvalidInputError("invalid coupon", fields=errors)
    if db.session.scalar(sa.select(Coupon.id).where(Coupon.account_id == account_id, Coupon.code == code)):
        raise ConflictError(f"coupon {code} exists")
    coupon = Coupon(
        account_id=account_id,
        code=code,
        name=name,
        kind=kind_enum,
        value=value,
        min_spend_fen=min_spend_fen,
        per_person_limit=per_person_limit,
        total_limit=total_limit,
        used_count=0,
        valid_from=valid_from,
        valid_until=valid_until,
        enabled=True,
    )
    db.session.add(coupon)
    db.session.flush()
    return coupon


def discount(coupon: Coupon, price_fen: int) -> int:
    """Whole fen, rounded down in the buyer's disfavour never: percent off rounds the discount down."""
    off = coupon.value if coupon.kind is CouponKind.fixed else price_fen * coupon.value // 100
    return min(off, price_fen - 1)  # a payment is at least one fen


def hold(account_id: int, subscriber_id: int, code: str, price_fen: int) -> tuple[Coupon, int]:
    """Check and take one use of the coupon for an order about to be created (caller's transaction)."""
    now = utcnow()
    coupon = db.session.scalar(
        sa.select(Coupon).where(Coupon.account_id == account_id, Coupon.code == (code or "").strip().upper())
    )
    if coupon is None or not coupon.enabled or not coupon.valid_from <= now < coupon.valid_until:
        raise CouponError("优惠券无效或已过期")
    if price_fen < coupon.min_spend_fen:
        raise CouponError(f"满 {coupon.min_spend_fen / 100:.2f} 元可用")
    if coupon.per_person_limit is not None:
        used = db.session.scalars(
            sa.select(sa.func.count())
            .select_from(CouponUse)
            .where(
                CouponUse.coupon_id == coupon.id,
                CouponUse.subscriber_id == subscriber_id,
                CouponUse.released.is_(False),
            )
        ).one()
        if used >= coupon.per_person_limit:
            raise CouponError("已达到每人使用次数上限")
    taken = execute_dml(
        sa.update(Coupon)
        .where(
            Coupon.id == coupon.id,
            sa.or_(Coupon.total_limit.is_(None), Coupon.used_count < Coupon.total_limit),
        )
        .values(used_count=Coupon.used_count + 1)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        raise CouponError("优惠券已被领完")
    return coupon, discount(coupon, price_fen)


def record(coupon: Coupon, order_id: int, subscriber_id: int, discount_fen: int) -> None:
    db.session.add(
        CouponUse(
            coupon_id=coupon.id,
            order_id=order_id,
            subscriber_id=subscriber_id,
            discount_fen=discount_fen,
            released=False,
            created_at=utcnow(),
        )
    )


def release(order_id: int) -> None:
    """The order closed unpaid or was refunded: its coupon use goes back (once)."""
    use = db.session.scalar(sa.select(CouponUse).where(CouponUse.order_id == order_id))
    if use is None:
        return
    done = execute_dml(
        sa.update(CouponUse)
        .where(CouponUse.id == use.id, CouponUse.released.is_(False))
        .values(released=True)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 1:
        db.session.execute(
            sa.update(Coupon)
            .where(Coupon.id == use.coupon_id)
            .values(used_count=Coupon.used_count - 1)
            .execution_options(synchronize_session=False)
        )


# -- console ---------------------------------------------------------------------------------------


def coupons_query(account_id: int) -> sa.Select:
    return sa.select(Coupon).where(Coupon.account_id == account_id).order_by(Coupon.id.desc())


def coupon_for(account_id: int, coupon_id: int) -> Coupon:
    coupon = db.session.scalar(
        sa.select(Coupon).where(Coupon.id == coupon_id, Coupon.account_id == account_id)
    )
    if coupon is None:
        raise NotFoundError("no such coupon")
    return coupon


def deactivate(account_id: int, coupon_id: int) -> Coupon:
    """No new orders may use it; orders already holding it keep their discount."""
    coupon = coupon_for(account_id, coupon_id)
    if not coupon.enabled:
        raise ConflictError(f"coupon {coupon.code} is already inactive")
    coupon.enabled = False
    db.session.flush()
    return coupon


def usage(coupon_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per coupon: uses held by live or paid orders, uses given back (closed or refunded orders),
    distinct subscribers among the held ones, and the discount they carry in fen."""
    out = {c: {"held": 0, "released": 0, "subscribers": 0, "discount_fen": 0} for c in coupon_ids}
    if coupon_ids:
        held = sa.case((CouponUse.released.is_(False), 1), else_=0)
        rows = db.session.execute(
            sa.select(
                CouponUse.coupon_id,
                sa.func.sum(held),
                sa.func.count() - sa.func.sum(held),
                sa.func.count(sa.distinct(sa.case((CouponUse.released.is_(False), CouponUse.subscriber_id)))),
                sa.func.sum(sa.case((CouponUse.released.is_(False), CouponUse.discount_fen), else_=0)),
            )
            .where(CouponUse.coupon_id.in_(coupon_ids))
            .group_by(CouponUse.coupon_id)
        )
        for coupon_id, n_held, n_released, subscribers, discount_fen in rows:
            out[coupon_id] = {
                "held": int(n_held or 0),
                "released": int(n_released or 0),
                "subscribers": int(subscribers or 0),
                "discount_fen": int(discount_fen or 0),
            }
    return out
