"""Orders: pending payment → paid → fulfilling → fulfilled | fulfilment failed → refunding →
refunded; unpaid ones close. Every transition is a conditional UPDATE on the expected state and
an OrderEvent row, so a transition happens once however many notifications, jobs or clicks race.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from accounts.subscribers import lock_subscriber
from payments import intents, refunds
from store import catalogue, coupons, signals
from store import fulfilment as fulfilments
from store.errors import StoreErrorCode
from store.models import (
    Coupon,
    Fulfilment,
    FulfilmentStatus,
    HoldStatus,
    Order,
    OrderEvent,
    OrderStatus,
    PhoneBinding,
    PointsHold,
    Product,
)
from store.services import binding_of, mask_phone
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, step_boundary
from wechat_service.errors import ConflictError, ErrorCode, InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db
from wechat_service.money import yuan

ALLOWED = {
    OrderStatus.pending_payment: {OrderStatus.paid, OrderStatus.closed},
    OrderStatus.paid: {OrderStatus.fulfilling},
    OrderStatus.fulfilling: {OrderStatus.fulfilled, OrderStatus.fulfilment_failed},
    OrderStatus.fulfilment_failed: {OrderStatus.refunding},
    OrderStatus.fulfilled: {OrderStatus.refunding},  # a manual refund by staff, with a reason
    OrderStatus.closed: {OrderStatus.refunding},  # paid after it closed: the money goes back
    OrderStatus.refunding: {OrderStatus.refunded},
}
PAY_TIMEOUT = timedelta(minutes=30)
PAID = (OrderStatus.paid, OrderStatus.fulfilling, OrderStatus.fulfilled)  # the subscriber has it or will


class InvalidTransitionError(ServiceError):
    code = ErrorCode.invalid_transition
    status = 409


_NOTICE_COLUMNS = (
    Order.id, Order.account_id, Order.subscriber_id, Order.product_id, Order.out_trade_no,
    Order.amount_fen, Order.phone,
)  # fmt: skip


def transition(
    order_id: int,
    source: OrderStatus,
    target: OrderStatus,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Move the order from ``source`` to ``target``; False if it was not in ``source`` (someone
    else moved it first). A transition the state machine does not allow raises."""
    return _move(order_id, source, target, detail, **values) is not None


def _move(
    order_id: int, source: OrderStatus, target: OrderStatus, detail: dict[str, Any] | None, **values: Any
) -> Any:
    """``transition``, answering the moved order's row (what its notice and fulfilment need, from
    the UPDATE's RETURNING: no read of its own) or None."""
    if target not in ALLOWED.get(source, set()):
        raise InvalidTransitionError(f"{source.value} → {target.value} is not a transition")
    row = db.session.execute(
        sa.update(Order)
        .where(Order.id == order_id, Order.status == source)
        .values(status=target, **values)
        .returning(*_NOTICE_COLUMNS)
        .execution_options(synchronize_session=False)
    ).first()
    if row is not None:
        db.session.add(
            OrderEvent(
                order_id=order_id,
                from_status=source.value,
                to_status=target.value,
                detail=detail or {},
                at=utcnow(),
            )
        )
        _announce(row, target)  # the subscriber's notice, sent by whoever listens, after commit
    return row


def _announce(order: Any, status: OrderStatus) -> None:
    product = db.session.get(Product, order.product_id)
    signals.announce_order_moved(
        signals.OrderNotice(
            order_id=order.id,
            account_id=order.account_id,
            subscriber_id=order.subscriber_id,
            status=status.value,
            out_trade_no=order.out_trade_no,
            amount_fen=order.amount_fen,
            product_name=product.name if product else "",
        )
    )


def claim(account_id: int, subscriber_id: int, product: Product) -> PhoneBinding:
    """The guards every way of getting a product passes — a paid order and a points exchange
    alike — inside the caller's transaction, with the subscriber already locked
    (``lock_subscriber``): on sale, a bound phone, the per-subscriber limit counted over both
    orders and points exchanges still standing, and one unit of stock taken (given back by
    ``give_back_stock`` when the purchase ends without the subscriber keeping it)."""

    if not catalogue.on_sale(product):
        raise ServiceError("this product is not on sale", code=StoreErrorCode.not_on_sale, status=409)
    binding = binding_of(account_id, subscriber_id)
    if binding is None:
        raise ServiceError("bind a phone number first", code=StoreErrorCode.phone_required, status=409)
    if product.per_subscriber_limit is not None:
        ordered = (
            sa.select(sa.func.count())
            .select_from(Order)
            .where(
                Order.account_id == account_id,
                Order.subscriber_id == subscriber_id,
                Order.product_id == product.id,
                Order.status.not_in([OrderStatus.closed, OrderStatus.refunded]),
            )
            .scalar_subquery()
        )
        exchanged = (
            sa.select(sa.func.count())
            .select_from(PointsHold)
            .where(
                PointsHold.account_id == account_id,
                PointsHold.subscriber_id == subscriber_id,
                PointsHold.product_id == product.id,
                PointsHold.status != HoldStatus.released,
            )
            .scalar_subquery()
        )
        if db.session.scalars(sa.select(ordered + exchanged)).one() >= product.per_subscriber_limit:
            raise ServiceError("purchase limit reached", code=StoreErrorCode.limit_reached, status=409)
    if product.stock is not None:
        taken = execute_dml(
            sa.update(Product)
            .where(Product.id == product.id, Product.stock > 0)
            .values(stock=Product.stock - 1)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:
            raise ServiceError("sold out", code=StoreErrorCode.sold_out, status=409)
    return binding


def give_back_stock(product_id: int) -> None:
    """The unit ``claim`` took goes back (a product without stock counting is left alone)."""
    db.session.execute(
        sa.update(Product)
        .where(Product.id == product_id, Product.stock.is_not(None))
        .values(stock=Product.stock + 1)
        .execution_options(synchronize_session=False)
    )


def create_order(
    account_id: int,
    subscriber_id: int,
    product_id: int,
    client_key: str,
    provider: str,
    coupon_code: str | None = None,
) -> Order:
    """Idempotent on the client's key; stock and per-subscriber limits enforced atomically."""

    if not client_key or len(client_key) > 64:
        raise InvalidInputError("client_key: 1 to 64 characters", fields={"client_key": ["invalid"]})
    # One subscriber's concurrent purchases queue here; the checks below then see each other.
    lock_subscriber(subscriber_id)
    existing = _order_by_client_key(account_id, subscriber_id, product_id, client_key)
    if existing is not None:
        return existing
    product = catalogue.product_for(account_id, product_id)
    binding = claim(account_id, subscriber_id, product)

    coupon, discount_fen = (
        coupons.hold(account_id, subscriber_id, coupon_code, product.price_fen) if coupon_code else (None, 0)
    )
    order = Order(
        account_id=account_id,
        subscriber_id=subscriber_id,
        product_id=product.id,
        client_key=client_key,
        out_trade_no=f"WS{utcnow():%y%m%d%H%M%S}{secrets.token_hex(5).upper()}",
        list_price_fen=product.price_fen,
        discount_fen=discount_fen,
        amount_fen=product.price_fen - discount_fen,
        phone=binding.phone,
        provider=provider,
        status=OrderStatus.pending_payment,
        created_at=utcnow(),
    )
    db.session.add(order)
    db.session.flush()
    intents.create(
        account_id,
        provider=provider,
        out_trade_no=order.out_trade_no,
        amount_fen=order.amount_fen,
        purpose=purpose_of(order.id),
        expires_at=order.created_at + PAY_TIMEOUT,
        payer_id=subscriber_id,
    )
    if coupon is not None:
        coupons.record(coupon, order.id, subscriber_id, discount_fen)
    _add_created_event(order, product, coupon, discount_fen)
    return order


def _order_by_client_key(
    account_id: int, subscriber_id: int, product_id: int, client_key: str
) -> Order | None:
    """The subscriber's order already created with this client key (a retry), if any; the key
    used for another product is a conflict."""
    existing = db.session.scalar(
        sa.select(Order).where(
            Order.account_id == account_id,
            Order.subscriber_id == subscriber_id,
            Order.client_key == client_key,
        )
    )
    if existing is not None and existing.product_id != product_id:
        raise ConflictError("this client_key was used for another product")
    return existing


def _add_created_event(order: Order, product: Product, coupon: Coupon | None, discount_fen: int) -> None:
    """The order's first event: created, pending payment, with its amount, product and coupon."""
    db.session.add(
        OrderEvent(
            order_id=order.id,
            from_status=None,
            to_status=OrderStatus.pending_payment.value,
            detail={
                "amount_fen": order.amount_fen,
                "product": product.code,
                "coupon": coupon.code if coupon else None,
                "discount_fen": discount_fen,
            },
            at=utcnow(),
        )
    )


def purpose_of(order_id: int) -> str:
    """The payment intent's purpose for an order (payments keeps it opaque)."""
    return f"order:{order_id}"


def order_id_of(purpose: str) -> int | None:
    """The order a payment event is about (None: the payment was not for an order)."""
    kind, _, ident = purpose.partition(":")
    return int(ident) if kind == "order" and ident.isdigit() else None


def of_subscriber(account_id: int, subscriber_id: int, limit: int) -> list[tuple[Order, str]]:
    """The subscriber's newest orders, each with its product's name."""
    rows = db.session.execute(
        sa.select(Order, Product.name)
        .join(Product, Product.id == Order.product_id)
        .where(Order.account_id == account_id, Order.subscriber_id == subscriber_id)
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(limit)
    )
    return [(o, name) for o, name in rows]


def order_for(account_id: int, order_id: int) -> Order:
    order = db.session.scalar(sa.select(Order).where(Order.account_id == account_id, Order.id == order_id))
    if order is None:
        raise NotFoundError("no such order")
    return order


def paid(order_id: int, provider_txn_id: str) -> bool:
    """The provider confirmed the payment: mark paid and hand it to fulfilment (once)."""
    order = _move(
        order_id,
        OrderStatus.pending_payment,
        OrderStatus.paid,
        {"transaction_id": provider_txn_id},
        paid_at=utcnow(),
    )
    if order is None:
        return False
    product = db.session.get_one(Product, order.product_id)
    job = fulfilments.create(
        account_id=order.account_id,
        subscriber_id=order.subscriber_id,
        product=product,
        phone=order.phone,
        source="order",
        source_id=order.id,
        idempotency_key=f"order-{order.out_trade_no}",
    )
    transition(
        order.id, OrderStatus.paid, OrderStatus.fulfilling, {"fulfilment_id": job.id}, fulfilment_id=job.id
    )
    fulfilments.enqueue(job.id)
    return True


def release_stock(order: Order) -> None:
    """Stock and coupon go back when an order ends without the subscriber keeping it."""

    coupons.release(order.id)
    give_back_stock(order.product_id)


def settle(fulfilment_id: int) -> str | None:
    """After the fulfilment ended: fulfilled with a receipt, or failed and refunded in full."""

    job = db.session.get(Fulfilment, fulfilment_id)
    if job is None or job.source != "order":
        return None
    order = db.session.get_one(Order, job.source_id)
    product = db.session.get_one(Product, order.product_id)
    if job.status is FulfilmentStatus.succeeded:
        if transition(order.id, OrderStatus.fulfilling, OrderStatus.fulfilled, finished_at=utcnow()):
            return f"订单 {order.out_trade_no} 已完成：{product.name}，实付 {yuan(order.amount_fen)} 元。"
        return None
    if job.status is FulfilmentStatus.failed and transition(
        order.id, OrderStatus.fulfilling, OrderStatus.fulfilment_failed, {"error": job.error}
    ):
        release_stock(order)
        refund(order, "fulfilment failed")
        amount = yuan(order.amount_fen)
        return f"订单 {order.out_trade_no} 未能办理（{product.name}），{amount} 元已原路退回。"
    return None


@step_boundary("the order is refunding (committed) before the provider is asked")
def refund(order: Order, reason: str) -> None:
    """Full refund of what is left through the provider. The order is `refunding` (committed) before
    the provider is asked, and ends `refunded` when payments announces the refund succeeded
    (``payments.signals.refund_settled``); until then the sweep asks again under the same refund
    number, which the provider treats as the same refund."""
    db.session.refresh(order)  # its status may have moved by a conditional UPDATE since it was loaded
    if not transition(order.id, order.status, OrderStatus.refunding, {"reason": reason}):
        raise InvalidTransitionError("the order changed meanwhile; reload it")
    db.session.commit()
    complete_refund(order, reason)


@step_boundary("the order's refund finishes in its own commit once payments has settled it")
def complete_refund(order: Order, reason: str) -> bool:
    """Ask for (or after) the order's full refund; True once the order is refunded."""
    db.session.refresh(order)
    if (
        refunds.refund_full(order, reason) is None
        and order.status is OrderStatus.refunding
        and refunds.all_succeeded(order)
    ):
        refund_settled(order.id, 0, full=True)  # partial refunds already returned everything
        db.session.commit()
    db.session.refresh(order)
    return order.status is OrderStatus.refunded


def refund_failed(order_id: int, amount_fen: int, why: str) -> None:
    """A refund failed at the provider (its reservation is already released): the order notes why."""
    _note(order_id, {"refund_failed": why, "amount_fen": amount_fen})


def refund_settled(order_id: int, amount_fen: int, *, full: bool) -> None:
    """The provider paid a refund back. The full refund finishes the order; a partial one is noted."""

    if full:
        if transition(
            order_id, OrderStatus.refunding, OrderStatus.refunded, {"refunded_fen": amount_fen},
            finished_at=utcnow(),
        ):  # fmt: skip
            coupons.release(order_id)  # a refunded order gives its coupon use back
    else:
        _note(order_id, {"partial_refund_fen": amount_fen})


def _note(order_id: int, detail: dict[str, Any]) -> None:
    """A history entry that does not change the state (a partial refund, a failed refund)."""
    status = db.session.scalar(sa.select(Order.status).where(Order.id == order_id))
    if status is not None:
        db.session.add(
            OrderEvent(
                order_id=order_id,
                from_status=status.value,
                to_status=status.value,
                detail=detail,
                at=utcnow(),
            )
        )


def close(order: Order) -> bool:
    if transition(
        order.id,
        OrderStatus.pending_payment,
        OrderStatus.closed,
        {"reason": "payment timeout"},
        finished_at=utcnow(),
    ):
        release_stock(order)
        return True
    return False


def history(order_id: int) -> list[OrderEvent]:
    return list(
        db.session.scalars(
            sa.select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        )
    )


def search(account_id: int, *, q: str | None = None, status: str | None = None) -> sa.Select[Any]:
    query = sa.select(Order).where(Order.account_id == account_id)
    if q:
        query = query.where(Order.out_trade_no == q.strip())
    if status:
        try:
            query = query.where(Order.status == OrderStatus(status))
        except ValueError:
            raise InvalidInputError("unknown status", fields={"status": ["invalid"]}) from None
    return query.order_by(Order.created_at.desc(), Order.id.desc())


EXPORT_COLUMNS = (
    "out_trade_no", "product_code", "product_name", "status", "provider", "amount_fen",
    "refunded_fen", "phone", "created_at", "paid_at",
)  # fmt: skip


def export_rows(
    account_id: int, *, q: str | None = None, status: str | None = None, unmasked: bool = False
) -> list[list[Any]]:
    """The orders a search finds, one row each for the console's and the API's CSV (written by
    wechat_service.exports, formula-safe); the phone masked unless the caller's role allows."""

    query = search(account_id, q=q, status=status).add_columns(Product.code, Product.name)
    query = query.join(Product, Product.id == Order.product_id)
    return [
        [
            o.out_trade_no, code, name, o.status.value, o.provider, o.amount_fen, o.refunded_fen,
            o.phone if unmasked else mask_phone(o.phone),
            o.created_at.isoformat(), o.paid_at.isoformat() if o.paid_at else None,
        ]
        for o, code, name in db.session.execute(query)
    ]  # fmt: skip


# -- selectables for the domains above (set-based SQL over orders without their table) -----------


def paid_orders() -> sa.Subquery:
    """Paid orders (paid, being carried out, or carried out), as rows of ``id, account_id,
    subscriber_id, product_id, amount_fen, created_at``: what campaign attribution and the metrics
    built on it read."""
    return (
        sa.select(
            Order.id,
            Order.account_id,
            Order.subscriber_id,
            Order.product_id,
            Order.amount_fen,
            Order.created_at,
        )
        .where(Order.status.in_(PAID))
        .subquery("paid_orders")
    )


def bought(subscriber_id: Any, product_ids: list[int], since: Any) -> sa.Exists:
    """EXISTS: the subscriber (a column or a value) paid for one of the products since then."""
    return sa.exists().where(
        Order.subscriber_id == subscriber_id,
        Order.product_id.in_(product_ids),
        Order.status.in_(PAID),
        Order.created_at >= since,
    )
