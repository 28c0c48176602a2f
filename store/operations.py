"""Store console operations: authorise on the account, change, audit — in one transaction, the
way ``accounts/operations.py`` does it for the account pages. Callers commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from accounts import access as acl
from accounts import staff
from accounts.access import Access
from payments import funds, refunds
from store import catalogue, coupons, orders, redemption
from store.models import Coupon, OrderStatus, Product, RedeemBatch
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _product(product: Product) -> dict[str, Any]:
    values = {k: _iso(getattr(product, k)) for k in (*catalogue.EDITABLE, "enabled")}
    return {"code": product.code, "kind": product.kind.value, **values}


def create_product(access: Access, account_id: int, fields: dict[str, Any], ip: str) -> Product:
    account = acl.account_for(access, account_id, acl.STORE)
    product = catalogue.add_product(account_id=account.id, **fields)
    staff.audit(
        access.user_id,
        "product.create",
        account_id=account.id,
        target=f"product {product.code}",
        after=_product(product),
        ip=ip,
    )
    return product


def update_product(
    access: Access,
    account_id: int,
    product_id: int,
    changes: dict[str, Any],
    ip: str,
    stock_seen: Any = catalogue.UNSEEN,
) -> Product:
    account = acl.account_for(access, account_id, acl.STORE)
    before = _product(catalogue.own_product(account.id, product_id))
    product = catalogue.update_product(account.id, product_id, changes, stock_seen=stock_seen)
    after = _product(product)
    changed = {k for k in after if after[k] != before[k]}
    staff.audit(
        access.user_id,
        "product.update",
        account_id=account.id,
        target=f"product {product.code}",
        before={k: before[k] for k in changed},
        after={k: after[k] for k in changed},
        ip=ip,
    )
    return product


def set_product_enabled(access: Access, account_id: int, product_id: int, enabled: bool, ip: str) -> Product:
    account = acl.account_for(access, account_id, acl.STORE)
    before = catalogue.own_product(account.id, product_id).enabled
    product = catalogue.set_product_enabled(account.id, product_id, enabled)
    staff.audit(
        access.user_id,
        "product.activate" if enabled else "product.deactivate",
        account_id=account.id,
        target=f"product {product.code}",
        before={"enabled": before},
        after={"enabled": enabled},
        ip=ip,
    )
    return product


def create_batch(access: Access, account_id: int, fields: dict[str, Any], ip: str) -> RedeemBatch:
    """The batch, its codes' keyed hashes, and the clear codes parked (sealed, in Redis) for their
    one download. The audit entry records the batch, never a code."""
    account = acl.account_for(access, account_id, acl.STORE)
    batch, codes = redemption.create_batch(
        account.id,
        fields["product_id"],
        name=fields["name"],
        count=fields["count"],
        valid_days=fields["valid_days"],
        valid_from=fields.get("valid_from"),
    )
    redemption.stash_export(batch, codes)
    staff.audit(
        access.user_id,
        "redeem_batch.create",
        account_id=account.id,
        target=f"batch {batch.id}",
        after={
            "name": batch.name,
            "product_id": batch.product_id,
            "count": batch.count,
            "valid_from": _iso(batch.valid_from),
            "valid_until": _iso(batch.valid_until),
        },
        ip=ip,
    )
    return batch


def export_batch(access: Access, account_id: int, batch_id: int, ip: str) -> tuple[RedeemBatch, str, str]:
    """The one download of a batch's clear codes: (batch, CSV text, sealed export to restore if the
    caller's commit fails). Its audit entry is also how the batch page knows who took the codes."""
    account = acl.account_for(access, account_id, acl.STORE)
    batch, text, sealed = redemption.take_export(account.id, batch_id)
    try:
        staff.audit(
            access.user_id,
            "redeem_batch.export",
            account_id=account.id,
            target=f"batch {batch.id}",
            after={"count": batch.count},
            ip=ip,
        )
    except Exception:
        redemption.restore_export(batch.id, sealed)
        raise
    return batch, text, sealed


def export_record(account_id: int, batch_id: int) -> Any:
    """The audit entry of the batch's export, or None: the one durable trace that it happened."""

    query = staff.audit_query(
        account_ids=None, account_id=account_id, action="redeem_batch.export", target=f"batch {batch_id}"
    )
    return db.session.scalars(query.limit(1)).first()


def void_batch(access: Access, account_id: int, batch_id: int, ip: str) -> int:
    account = acl.account_for(access, account_id, acl.STORE)
    voided = redemption.void_batch(account.id, batch_id)
    staff.audit(
        access.user_id,
        "redeem_batch.void",
        account_id=account.id,
        target=f"batch {batch_id}",
        after={"voided_codes": voided},
        ip=ip,
    )
    return voided


def _coupon(coupon: Coupon) -> dict[str, Any]:
    keys = ("code", "name", "value", "min_spend_fen", "per_person_limit", "total_limit", "enabled")
    return {k: getattr(coupon, k) for k in keys} | {
        "kind": coupon.kind.value,
        "valid_from": _iso(coupon.valid_from),
        "valid_until": _iso(coupon.valid_until),
    }


def create_coupon(access: Access, account_id: int, fields: dict[str, Any], ip: str) -> Coupon:
    account = acl.account_for(access, account_id, acl.STORE)
    fields = dict(fields)
    valid_from = fields.pop("valid_from", None) or utcnow()
    coupon = coupons.add_coupon(account.id, valid_from=valid_from, **fields)
    staff.audit(
        access.user_id,
        "coupon.create",
        account_id=account.id,
        target=f"coupon {coupon.code}",
        after=_coupon(coupon),
        ip=ip,
    )
    return coupon


def deactivate_coupon(access: Access, account_id: int, coupon_id: int, ip: str) -> Coupon:
    account = acl.account_for(access, account_id, acl.STORE)
    coupon = coupons.deactivate(account.id, coupon_id)
    staff.audit(
        access.user_id,
        "coupon.deactivate",
        account_id=account.id,
        target=f"coupon {coupon.code}",
        before={"enabled": True},
        after={"enabled": False, "used_count": coupon.used_count},
        ip=ip,
    )
    return coupon


def refund_order(
    access: Access, account_id: int, order_id: int, reason: str, ip: str, amount_fen: int | None = None
) -> Any:
    """A manual refund of a fulfilled order, in full (what is left of it) or of ``amount_fen``
    (the line keeps what was carried out: staff decide)."""
    account = acl.account_for(access, account_id, acl.REFUND)
    if len(reason.strip()) < 3:
        raise acl.InvalidInputError("give the reason for the refund", fields={"reason": ["required"]})
    order = orders.order_for(account.id, order_id)
    if order.status is not OrderStatus.fulfilled:
        raise orders.InvalidTransitionError(
            f"only a fulfilled order is refunded by hand (this one is {order.status.value})"
        )
    before = {"status": order.status.value, "refunded_fen": order.refunded_fen}
    full = amount_fen is None or amount_fen == order.amount_fen - order.refunded_fen
    # Audited in the transaction that reserves the amount, i.e. before the provider hears of it:
    # whatever happens to the provider call, the refund is on record with who asked for it.
    staff.audit(
        access.user_id,
        "order.refund",
        account_id=account.id,
        target=f"order {order.out_trade_no}",
        before=before,
        after={
            "reason": reason.strip()[:200],
            "amount_fen": order.amount_fen - order.refunded_fen if full else amount_fen,
            "full": full,
        },
        ip=ip,
    )
    if full:
        orders.refund(order, reason.strip())
    else:
        refunds.partial(order, int(amount_fen or 0), reason.strip(), access.user_id)
    db.session.refresh(order)
    return order


def fund_product(
    access: Access, account_id: int, pool_id: int, product_id: int, funded: bool, ip: str
) -> None:
    """Have a product's fulfilments drawn from the pool (or no longer)."""
    account = acl.account_for(access, account_id, acl.FINANCE)
    pool = funds.pool_for(account.id, pool_id)
    product = catalogue.own_product(account.id, product_id)
    before = product.fund_pool_id
    if funded:
        catalogue.set_fund_pool(account.id, product.id, pool.id)
    elif before == pool.id:
        catalogue.set_fund_pool(account.id, product.id, None)
    staff.audit(
        access.user_id,
        "fund_pool.fund_product" if funded else "fund_pool.unfund_product",
        account_id=account.id,
        target=f"fund pool {pool.name}",
        before={"product": product.code, "fund_pool_id": before},
        after={"product": product.code, "fund_pool_id": product.fund_pool_id},
        ip=ip,
    )
