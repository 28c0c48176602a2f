"""RQ jobs of the store: thin wrappers over services, ids in."""

from __future__ import annotations

import logging

from accounts.services import api_client
from accounts.subscribers import subscriber_by_id
from store import fulfilment, orders, points, redemption, services
from store.boss import BossError
from store.models import Fulfilment, FulfilmentStatus, InquiryKind, Order, OrderStatus, PointsHold
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db, get_queue
from wechat_service.gateway import WeChatAPIError

log = logging.getLogger(__name__)
RETRY = fulfilment.RETRY


def answer_inquiry(account_id: int, subscriber_id: int, kind: str) -> str:
    text = services.answer_later(account_id, subscriber_id, InquiryKind(kind))
    db.session.commit()
    return text


def fulfil(fulfilment_id: int) -> str:
    """Carry a fulfilment out; a transient failure raises, and RQ retries with backoff."""
    status = fulfilment.run(fulfilment_id)
    message = redemption.settle(fulfilment_id) or orders.settle(fulfilment_id) or points.settle(fulfilment_id)
    db.session.commit()
    if message:
        _notify(fulfilment_id, message)
    return status.value


def _notify(fulfilment_id: int, text: str) -> None:
    """The receipt, as a customer-service message; a subscriber out of reach is not an error."""

    job = db.session.get_one(Fulfilment, fulfilment_id)
    try:
        openid = subscriber_by_id(job.account_id, job.subscriber_id).openid
        api_client(job.account_id).message.send_text(openid, text)
    except WeChatAPIError as exc:
        log.info("receipt for fulfilment %s not delivered: %s", fulfilment_id, exc)


def sweep_fulfilments() -> int:
    """Cron: fulfilments left open (retries exhausted, job lost) are tried again, and finished ones
    whose order, points hold or code was not settled (a crash in between) are settled now."""
    from datetime import timedelta

    import sqlalchemy as sa

    ids = fulfilment.stale()
    for fid in ids:
        get_queue("default").enqueue(fulfil, fid, retry=RETRY, job_id=f"fulfil-{fid}-sweep")
    cutoff = utcnow() - timedelta(minutes=2)
    finished = [FulfilmentStatus.succeeded, FulfilmentStatus.failed]
    unsettled = set(
        db.session.scalars(
            sa.select(Fulfilment.id)
            .join(Order, sa.and_(Fulfilment.source == "order", Order.id == Fulfilment.source_id))
            .where(
                Fulfilment.status.in_(finished),
                Fulfilment.finished_at < cutoff,
                Order.status == OrderStatus.fulfilling,
            )
        )
    )
    unsettled |= set(
        db.session.scalars(
            sa.select(Fulfilment.id)
            .join(PointsHold, sa.and_(Fulfilment.source == "points", PointsHold.id == Fulfilment.source_id))
            .where(
                Fulfilment.status.in_(finished), Fulfilment.finished_at < cutoff, PointsHold.status == "held"
            )
        )
    )
    unsettled |= set(
        db.session.scalars(
            sa.select(Fulfilment.id).where(
                Fulfilment.source == "redemption",
                Fulfilment.status == FulfilmentStatus.failed,
                Fulfilment.finished_at < cutoff,
                Fulfilment.finished_at > utcnow() - timedelta(days=1),
            )
        )
    )
    for fid in sorted(unsettled):
        try:
            fulfil(fid)  # run() sees it finished; settle() is conditional, so a settled one stays
        except Exception:  # noqa: BLE001 - one item's trouble must not stop the sweep
            db.session.rollback()
            log.exception("settling fulfilment %s failed", fid)
    return len(ids) + len(unsettled)


def sweep_points_holds() -> dict[str, int]:
    """Cron: points holds whose exchange never learned whether the BOSS debited them (unreachable,
    its follow-up query too) are resolved by asking the BOSS: fulfilled if debited, else released
    (stock back). One commit per hold; a hold the BOSS still cannot answer for waits."""

    counts = {"fulfilled": 0, "released": 0}
    ids = points.stranded()
    db.session.commit()
    for hold_id in ids:
        try:
            outcome = points.resolve(hold_id)
            db.session.commit()
        except BossError as exc:
            db.session.rollback()
            log.info("points hold %s not resolved yet: %s", hold_id, exc)
            continue
        except Exception:  # noqa: BLE001 - one hold's trouble must not stop the sweep
            db.session.rollback()
            log.exception("resolving points hold %s failed", hold_id)
            continue
        if outcome:
            counts[outcome] += 1
    return counts


def sweep_orders() -> dict[str, int]:
    """Cron: orders stuck refunding (the provider unreachable when asked) are asked again, under
    the same refund number. Pending payments are payments' own sweep (``payments.jobs``): an order
    follows its intent's events."""
    import sqlalchemy as sa

    counts: dict[str, int] = {}
    for order in db.session.scalars(
        sa.select(Order).where(Order.status == OrderStatus.refunding).order_by(Order.id).limit(200)
    ).all():
        try:
            if orders.complete_refund(order, "retry"):
                counts["refunded"] = counts.get("refunded", 0) + 1
            db.session.commit()
        except Exception:  # noqa: BLE001 - one order's trouble must not stop the sweep
            db.session.rollback()
            log.exception("refund retry for order %s failed", order.id)
    return counts
