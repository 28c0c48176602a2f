"""Fulfilment: carrying a product out on a line through the BOSS, exactly once.

The idempotency key is the fulfilment's own (``redeem-<code id>``, later ``order-<id>``), so a
job run twice, or a retry after a timeout, can never top a line up twice. A write whose answer was
lost is resolved by asking the BOSS (``requests/query``), never by sending it again blindly — and
only after the BOSS says it never saw the key is it sent again, with the same key.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from rq import Retry

from payments import funds
from store.boss import BossError, BossUnavailableError, BossUnknownOutcomeError, boss
from store.models import Fulfilment, FulfilmentStatus, Product, ProductKind
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, step_boundary
from wechat_service.extensions import db, enqueue_after_commit

log = logging.getLogger(__name__)
# Transient BOSS trouble: back off, then the cron sweep takes over.
RETRY = Retry(max=5, interval=[2, 10, 30, 120, 600])


def enqueue(fulfilment_id: int) -> None:
    """Carry the fulfilment out once this transaction commits (the job ``store.jobs.fulfil``,
    enqueued by name: services never import jobs)."""
    enqueue_after_commit("default", "store.jobs.fulfil", fulfilment_id, retry=RETRY)


class RetryLaterError(Exception):
    """Transient (BUSY, unreachable, unknown outcome): the job is retried with backoff."""


def create(
    *,
    account_id: int,
    subscriber_id: int,
    product: Product,
    phone: str,
    source: str,
    source_id: int,
    idempotency_key: str,
) -> Fulfilment:
    fulfilment = Fulfilment(
        account_id=account_id,
        subscriber_id=subscriber_id,
        product_id=product.id,
        source=source,
        source_id=source_id,
        phone=phone,
        idempotency_key=idempotency_key,
        status=FulfilmentStatus.pending,
        attempts=0,
        created_at=utcnow(),
    )
    db.session.add(fulfilment)
    db.session.flush()
    return fulfilment


def _carry_out(fulfilment: Fulfilment, product: Product) -> dict[str, Any]:
    client, key, phone = boss(), fulfilment.idempotency_key, fulfilment.phone
    if product.kind is ProductKind.topup:
        return client.topup(phone, int(product.face_value_fen or 0), key)
    if product.kind is ProductKind.data_package:
        return client.data_package(phone, str(product.package_code), key)
    if product.kind is ProductKind.plan_change:
        return client.plan_change(phone, str(product.plan_code), key)
    return {"voucher": product.code}


def _finish(
    fulfilment_id: int, status: FulfilmentStatus, result: dict[str, Any] | None, error: str | None
) -> bool:
    """Conditional transition: only an open fulfilment finishes, and only once."""
    done = execute_dml(
        sa.update(Fulfilment)
        .where(
            Fulfilment.id == fulfilment_id,
            Fulfilment.status.in_([FulfilmentStatus.pending, FulfilmentStatus.unknown]),
        )
        .values(status=status, result=result, error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1


def _pool_ref(fulfilment: Fulfilment) -> str:
    return f"fulfilment-{fulfilment.id}"


@step_boundary("the failure and the fund pool's give-back are durable before the order is told")
def _failed(fulfilment: Fulfilment, product: Product, error: str) -> FulfilmentStatus:
    """Finish as failed; a draw on the product's fund pool comes back."""

    if _finish(fulfilment.id, FulfilmentStatus.failed, None, error) and product.fund_pool_id:
        funds.give_back(product.fund_pool_id, _pool_ref(fulfilment))
    db.session.commit()
    return FulfilmentStatus.failed


@step_boundary(
    "stages against the BOSS: the attempt is recorded before the BOSS is called, its outcome right after"
)
def run(fulfilment_id: int) -> FulfilmentStatus:
    """One attempt. Raises RetryLaterError when the outcome is not known yet."""

    fulfilment = db.session.get(Fulfilment, fulfilment_id)
    if fulfilment is None or fulfilment.status in (FulfilmentStatus.succeeded, FulfilmentStatus.failed):
        return fulfilment.status if fulfilment else FulfilmentStatus.failed
    product = db.session.get_one(Product, fulfilment.product_id)
    db.session.execute(
        sa.update(Fulfilment)
        .where(Fulfilment.id == fulfilment_id)
        .values(attempts=Fulfilment.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    # A product paid for by a fund pool draws on it before anything is carried out (once per
    # fulfilment, whatever the retries); an empty pool fails the fulfilment, which refunds an order.
    if product.fund_pool_id and not funds.draw(
        product.fund_pool_id, product.price_fen, _pool_ref(fulfilment)
    ):
        return _failed(fulfilment, product, "fund pool exhausted")
    db.session.commit()  # no transaction (on SQLite: no write lock) held across the BOSS call
    if fulfilment.status is FulfilmentStatus.unknown:
        # A previous attempt may have been carried out: ask before doing anything.
        settled = _ask_about_earlier_attempt(fulfilment, product)
        if settled is not None:
            return settled
        # "unknown": the BOSS never saw the key, so sending it (with the same key) is safe.
    try:
        result = _carry_out(fulfilment, product)
    except BossUnknownOutcomeError as exc:
        db.session.execute(
            sa.update(Fulfilment)
            .where(Fulfilment.id == fulfilment_id)
            .values(status=FulfilmentStatus.unknown, error=f"{exc.code}: outcome unknown")
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        raise RetryLaterError("outcome unknown") from None
    except BossUnavailableError as exc:
        db.session.execute(
            sa.update(Fulfilment)
            .where(Fulfilment.id == fulfilment_id)
            .values(error=f"{exc.code}: {exc.message}")
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        raise RetryLaterError(exc.code) from None
    except BossError as exc:
        return _failed(fulfilment, product, f"{exc.code}: {exc.message}")
    _finish(fulfilment_id, FulfilmentStatus.succeeded, result, None)
    db.session.commit()
    return FulfilmentStatus.succeeded


@step_boundary("the BOSS's answer about an earlier attempt is recorded as soon as it comes")
def _ask_about_earlier_attempt(fulfilment: Fulfilment, product: Product) -> FulfilmentStatus | None:
    """Ask the BOSS about the key of an attempt whose outcome was lost: succeeded or failed
    finishes the fulfilment (its status returned), pending or no answer raises RetryLaterError,
    and None means the BOSS never saw the key."""
    try:
        answer = boss().query_request(fulfilment.idempotency_key)
    except BossError as exc:
        db.session.commit()
        raise RetryLaterError(f"query failed: {exc.code}") from None
    if answer.get("status") == "succeeded":
        _finish(fulfilment.id, FulfilmentStatus.succeeded, answer.get("result") or {}, None)
        db.session.commit()
        return FulfilmentStatus.succeeded
    if answer.get("status") == "pending":
        db.session.commit()
        raise RetryLaterError("the BOSS is still working on it")
    if answer.get("status") == "failed":
        return _failed(fulfilment, product, str(answer.get("error") or "failed"))
    return None


def stale(limit: int = 500) -> list[int]:
    """Open fulfilments whose job may be gone (Redis lost, retries exhausted): for the cron sweep."""
    from datetime import timedelta

    cutoff = utcnow() - timedelta(minutes=5)
    return list(
        db.session.scalars(
            sa.select(Fulfilment.id)
            .where(
                Fulfilment.status.in_([FulfilmentStatus.pending, FulfilmentStatus.unknown]),
                Fulfilment.created_at < cutoff,
            )
            .limit(limit)
        )
    )
