"""Points exchange: a product for points. The BOSS holds the points balance and never lets it go
negative, so the hold is a debit there (idempotency key ``points-hold-<id>``); a failed
fulfilment credits them back (``points-release-<id>``); success settles the hold. Each step is a
conditional transition of the hold, so a job run twice moves nothing twice."""

from __future__ import annotations

import sqlalchemy as sa

from accounts.subscribers import lock_subscriber
from store import catalogue, orders
from store import fulfilment as fulfilments
from store.boss import BossError, BossUnavailableError, boss
from store.models import HoldStatus, PointsHold
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ConflictError, InvalidInputError, ServiceError
from wechat_service.extensions import db, enqueue_after_commit


def exchange(account_id: int, subscriber_id: int, product_id: int, client_key: str) -> PointsHold:
    """Idempotent on the client's key; the same guards as a paid order (``orders.claim``: stock,
    per-subscriber limit, the subscriber serialised), then the debit at the BOSS."""
    if not client_key or not 8 <= len(client_key) <= 64:
        raise InvalidInputError("client_key: 8 to 64 characters", fields={"client_key": ["invalid"]})
    # One subscriber's concurrent exchanges (and orders) queue here, so the limit check sees them.
    lock_subscriber(subscriber_id)
    existing = db.session.scalar(
        sa.select(PointsHold).where(
            PointsHold.account_id == account_id,
            PointsHold.subscriber_id == subscriber_id,
            PointsHold.client_key == client_key,
        )
    )
    if existing is not None:
        if existing.product_id != product_id:
            raise ConflictError("this client_key was used for another product")
        return existing
    product = catalogue.product_for(account_id, product_id)
    if not product.points_price:
        raise ServiceError("this product cannot be exchanged for points", code="not_exchangeable", status=409)
    binding = orders.claim(account_id, subscriber_id, product)
    hold = PointsHold(
        account_id=account_id,
        subscriber_id=subscriber_id,
        product_id=product.id,
        client_key=client_key,
        phone=binding.phone,
        points=product.points_price,
        status=HoldStatus.held,
        created_at=utcnow(),
    )
    db.session.add(hold)
    # The hold (and the unit of stock it took) exists before the BOSS is asked: a crash after the
    # debit is traceable, and the subscriber's lock is released for their next purchase.
    db.session.commit()
    key = f"points-hold-{hold.id:08d}"
    try:
        boss().points_debit(binding.phone, hold.points, f"exchange {product.code}", key)
    except BossError as exc:
        debited = False
        if isinstance(exc, BossUnavailableError):
            try:  # unknown outcome: ask, never debit blindly again
                debited = boss().query_request(key).get("status") == "succeeded"
            except BossError:
                raise ServiceError(
                    "积分系统暂时不可用，请稍后再试", code="boss_unavailable", status=503
                ) from None
        if not debited:
            _release(hold)  # nothing was taken
            db.session.commit()
            if exc.code == "INSUFFICIENT_POINTS":
                raise ServiceError("积分不足", code="insufficient_points", status=409) from None
            raise ServiceError(f"积分兑换失败（{exc.code}）", code="boss_refused", status=409) from None
    job = fulfilments.create(
        account_id=account_id,
        subscriber_id=subscriber_id,
        product=product,
        phone=binding.phone,
        source="points",
        source_id=hold.id,
        idempotency_key=f"points-{hold.id:08d}",
    )
    hold.fulfilment_id = job.id
    from store.jobs import RETRY, fulfil

    enqueue_after_commit("default", fulfil, job.id, retry=RETRY)
    return hold


def settle(fulfilment_id: int) -> str | None:
    from store.models import Fulfilment, FulfilmentStatus, Product

    job = db.session.get(Fulfilment, fulfilment_id)
    if job is None or job.source != "points":
        return None
    hold = db.session.get(PointsHold, job.source_id)
    product = db.session.get(Product, job.product_id)
    if job.status is FulfilmentStatus.succeeded and _move(hold.id, HoldStatus.settled):
        return f"积分兑换成功：{product.name}（{hold.points} 积分）。"
    if job.status is FulfilmentStatus.failed and hold.status is HoldStatus.held:
        # Credit first, with its own key: if the BOSS is unreachable the hold stays held and the
        # sweep tries again; a repeated credit with the same key is a no-op there.
        boss().points_credit(
            hold.phone, hold.points, f"release {product.code}", f"points-release-{hold.id:08d}"
        )
        if _release(hold):
            return f"积分兑换未能完成，{hold.points} 积分已退回。"
    return None


def _release(hold: PointsHold) -> bool:
    """The exchange did not happen: the hold ends released and its unit of stock goes back."""
    if not _move(hold.id, HoldStatus.released):
        return False
    orders.give_back_stock(hold.product_id)
    return True


def _move(hold_id: int, target: HoldStatus) -> bool:
    return (
        db.session.execute(
            sa.update(PointsHold)
            .where(PointsHold.id == hold_id, PointsHold.status == HoldStatus.held)
            .values(status=target)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
