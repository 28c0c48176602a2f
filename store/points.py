"""Points exchange: a product for points. The BOSS holds the points balance and never lets it go
negative, so the hold is a debit there (idempotency key ``points-hold-<id>``); a failed
fulfilment credits them back (``points-release-<id>``); success settles the hold. Each step is a
conditional transition of the hold, so a job run twice moves nothing twice. A hold whose debit
went unanswered (the BOSS unreachable, its query too) is resolved later by the sweep
(``stranded`` / ``resolve``), which asks the BOSS about the debit's key."""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from accounts.subscribers import lock_subscriber
from store import catalogue, orders
from store import fulfilment as fulfilments
from store.boss import BossError, BossUnavailableError, boss
from store.errors import StoreErrorCode
from store.models import Fulfilment, FulfilmentStatus, HoldStatus, PointsHold, Product
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, step_boundary
from wechat_service.errors import ConflictError, InvalidInputError, ServiceError
from wechat_service.extensions import db

log = logging.getLogger(__name__)


@step_boundary("the hold is on record before the BOSS debits the points, and the debit's outcome right after")
def exchange(account_id: int, subscriber_id: int, product_id: int, client_key: str) -> PointsHold:
    """Idempotent on the client's key; the same guards as a paid order (``orders.claim``: stock,
    per-subscriber limit, the subscriber serialised), then the debit at the BOSS."""
    if not client_key or not 8 <= len(client_key) <= 64:
        raise InvalidInputError("client_key: 8 to 64 characters", fields={"client_key": ["invalid"]})
    # One subscriber's concurrent exchanges (and orders) queue here, so the limit check sees them.
    lock_subscriber(subscriber_id)
    existing = _hold_by_client_key(account_id, subscriber_id, product_id, client_key)
    if existing is not None:
        return existing
    product = catalogue.product_for(account_id, product_id)
    if not product.points_price:
        raise ServiceError(
            "this product cannot be exchanged for points", code=StoreErrorCode.not_exchangeable, status=409
        )
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
    key = _debit_key(hold.id)
    try:
        boss().points_debit(binding.phone, hold.points, f"exchange {product.code}", key)
    except BossError as exc:
        outcome = "failed"
        if isinstance(exc, BossUnavailableError):
            try:  # unknown outcome: ask, never debit blindly again
                outcome = str(boss().query_request(key).get("status"))
            except BossError:
                outcome = "pending"
            if outcome == "pending":  # not known yet: the hold stays held and the sweep resolves it
                raise ServiceError(
                    "积分系统暂时不可用，请稍后再试", code=StoreErrorCode.boss_unavailable, status=503
                ) from None
        if outcome != "succeeded":
            _release(hold)  # nothing was taken
            db.session.commit()
            if exc.code == "INSUFFICIENT_POINTS":
                raise ServiceError("积分不足", code=StoreErrorCode.insufficient_points, status=409) from None
            raise ServiceError(
                f"积分兑换失败（{exc.code}）", code=StoreErrorCode.boss_refused, status=409
            ) from None
    if not _begin_fulfilment(hold, product):
        # The sweep resolved this hold first (only possible long after its grace period).
        _credit_back_if_released(hold, product)
    return hold


def _hold_by_client_key(
    account_id: int, subscriber_id: int, product_id: int, client_key: str
) -> PointsHold | None:
    """The subscriber's hold already made with this client key (a retry), if any; the key used
    for another product is a conflict."""
    existing = db.session.scalar(
        sa.select(PointsHold).where(
            PointsHold.account_id == account_id,
            PointsHold.subscriber_id == subscriber_id,
            PointsHold.client_key == client_key,
        )
    )
    if existing is not None and existing.product_id != product_id:
        raise ConflictError("this client_key was used for another product")
    return existing


def _credit_back_if_released(hold: PointsHold, product: Product) -> None:
    """When the sweep released the hold, having found no debit, the debit has landed since:
    credit the points back and refuse the exchange. Otherwise the sweep found the debit and
    carried the hold on itself: nothing to do."""
    db.session.refresh(hold)
    if hold.status is HoldStatus.released:  # it found no debit, which has landed since
        try:
            boss().points_credit(hold.phone, hold.points, f"release {product.code}", _release_key(hold.id))
        except BossError:
            log.error("points hold %s: released, its late debit not credited back", hold.id)
        raise ServiceError("积分兑换失败，请稍后再试", code=StoreErrorCode.boss_refused, status=409)


def _debit_key(hold_id: int) -> str:
    return f"points-hold-{hold_id:08d}"


def _release_key(hold_id: int) -> str:
    return f"points-release-{hold_id:08d}"


@step_boundary("the hold's fulfilment exists before it is enqueued")
def _begin_fulfilment(hold: PointsHold, product: Product) -> bool:
    """The debit is certain: the hold gets its fulfilment, enqueued after commit. Once, whoever
    gets here first (the exchange or any number of sweeps): the fulfilment's unique key and a
    conditional UPDATE of the hold decide; the loser's savepoint is rolled back and it gets False."""
    savepoint = db.session.begin_nested()
    try:
        job = fulfilments.create(
            account_id=hold.account_id,
            subscriber_id=hold.subscriber_id,
            product=product,
            phone=hold.phone,
            source="points",
            source_id=hold.id,
            idempotency_key=f"points-{hold.id:08d}",
        )
    except IntegrityError:
        savepoint.rollback()
        return False
    linked = execute_dml(
        sa.update(PointsHold)
        .where(
            PointsHold.id == hold.id,
            PointsHold.status == HoldStatus.held,
            PointsHold.fulfilment_id.is_(None),
        )
        .values(fulfilment_id=job.id)
        .execution_options(synchronize_session=False)
    )
    if linked.rowcount != 1:
        savepoint.rollback()
        return False
    savepoint.commit()
    set_committed_value(hold, "fulfilment_id", job.id)
    fulfilments.enqueue(job.id)
    return True


# A hold younger than this may still have its exchange talking to the BOSS (10 s write timeout,
# 3 s query): the sweep leaves it alone.
STRANDED_AFTER = timedelta(minutes=10)


def stranded(older_than: timedelta = STRANDED_AFTER, limit: int = 200) -> list[int]:
    """Holds still held without a fulfilment after the grace period: their exchange never learned
    whether the BOSS debited the points (it was unreachable, and so was the follow-up query)."""
    return list(
        db.session.scalars(
            sa.select(PointsHold.id)
            .where(
                PointsHold.status == HoldStatus.held,
                PointsHold.fulfilment_id.is_(None),
                PointsHold.created_at < utcnow() - older_than,
            )
            .order_by(PointsHold.id)
            .limit(limit)
        )
    )


def resolve(hold_id: int) -> str | None:
    """Finish a stranded hold by what the BOSS says of its debit (``requests/query`` on the debit's
    idempotency key): debited → ``"fulfilled"`` (its fulfilment created and enqueued: the points
    were paid); failed or never seen → ``"released"`` (its stock back; nothing was debited, so
    nothing is credited). None: still pending at the BOSS, or resolved meanwhile by someone else.
    Every step is conditional, so sweeps run twice or at once resolve a hold once. A BOSS still
    unreachable raises ``BossError``: the hold waits for the next sweep. Flushes; the caller commits."""
    hold = db.session.get(PointsHold, hold_id)
    if hold is None or hold.status is not HoldStatus.held or hold.fulfilment_id is not None:
        return None
    answer = boss().query_request(_debit_key(hold.id))
    status = answer.get("status")
    if status == "succeeded":
        return "fulfilled" if _begin_fulfilment(hold, db.session.get_one(Product, hold.product_id)) else None
    if status in ("failed", "unknown"):
        # "unknown": the BOSS never saw the key, and the exchange that sent it gave up long ago.
        return "released" if _release(hold) else None
    return None


def settle(fulfilment_id: int) -> str | None:
    job = db.session.get(Fulfilment, fulfilment_id)
    if job is None or job.source != "points":
        return None
    hold = db.session.get_one(PointsHold, job.source_id)
    product = db.session.get_one(Product, job.product_id)
    if job.status is FulfilmentStatus.succeeded and _move(hold.id, HoldStatus.settled):
        return f"积分兑换成功：{product.name}（{hold.points} 积分）。"
    if job.status is FulfilmentStatus.failed and hold.status is HoldStatus.held:
        # Credit first, with its own key: if the BOSS is unreachable the hold stays held and the
        # sweep tries again; a repeated credit with the same key is a no-op there.
        boss().points_credit(hold.phone, hold.points, f"release {product.code}", _release_key(hold.id))
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
        execute_dml(
            sa.update(PointsHold)
            .where(PointsHold.id == hold_id, PointsHold.status == HoldStatus.held)
            .values(status=target)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
