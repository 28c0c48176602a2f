"""Points exchange: a product for points. The BOSS holds the points balance and never lets it go
negative, so the hold is a debit there (idempotency key ``points-hold-<id>``); a failed
fulfilment credits them back (``points-release-<id>``); success settles the hold. Each step is a
conditional transition of the hold, so a job run twice moves nothing twice."""

from __future__ import annotations

import sqlalchemy as sa

from store import catalogue
from store import fulfilment as fulfilments
from store.boss import BossError, BossUnavailableError, boss
from store.models import HoldStatus, PointsHold
from store.services import binding_of
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError, ServiceError
from wechat_service.extensions import db, enqueue_after_commit


def exchange(account_id: int, subscriber_id: int, product_id: int, client_key: str) -> PointsHold:
    if not client_key or not 8 <= len(client_key) <= 64:
        raise InvalidInputError("client_key: 8 to 64 characters", fields={"client_key": ["invalid"]})
    existing = db.session.scalar(
        sa.select(PointsHold).where(
            PointsHold.account_id == account_id,
            PointsHold.subscriber_id == subscriber_id,
            PointsHold.client_key == client_key,
        )
    )
    if existing is not None:
        return existing
    product = catalogue.product_for(account_id, product_id)
    if not product.points_price or not catalogue.on_sale(product):
        raise ServiceError("this product cannot be exchanged for points", code="not_exchangeable", status=409)
    binding = binding_of(account_id, subscriber_id)
    if binding is None:
        raise ServiceError("bind a phone number first", code="phone_required", status=409)
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
    db.session.commit()  # the hold exists before the BOSS is asked: a crash after the debit is traceable
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
            _move(hold.id, HoldStatus.released)  # nothing was taken
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
        if _move(hold.id, HoldStatus.released):
            return f"积分兑换未能完成，{hold.points} 积分已退回。"
    return None


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
