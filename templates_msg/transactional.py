"""Transactional messages (order paid / fulfilled / refunded, fund alerts): the campaign sender on
the high queue, once per idempotency key, sharing the account's daily budget."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from rq import Retry

from templates_msg import dispatch
from templates_msg.models import Delivery, DeliveryStatus, TemplateKind, TransactionalTemplate
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import upsert
from wechat_service.extensions import db, enqueue_after_commit, get_redis
from wechat_service.money import yuan

log = logging.getLogger(__name__)
# A transient failure of a transactional send (-1 after the gateway's own retries, a refused
# connection): RQ retries with backoff, on the worker's scheduler.
TX_RETRY = Retry(max=3, interval=[5, 30, 120])

ORDER_NOTICES = {"paid": "order_paid", "fulfilled": "order_fulfilled", "refunded": "order_refunded"}


def queue_message(
    account_id: int,
    openid: str,
    template_id: str,
    data: dict[str, Any],
    idem_key: str,
    *,
    url: str | None = None,
    notice: str = "transactional",
    subscriber_id: int | None = None,
) -> int | None:
    """Record the message once (by ``idem_key``); returns its delivery id (None if it existed)."""
    values = {
        "campaign_id": None,
        "account_id": account_id,
        "subscriber_id": subscriber_id,
        "openid": openid,
        "kind": notice[:24],
        "idem_key": idem_key[:128],
        "payload": {"template_id": template_id, "data": data, "url": url},
        "status": DeliveryStatus.pending,
        "attempts": 0,
        "clicks": 0,
        "batch_no": 0,
        "control": False,
        "created_at": utcnow(),
    }
    rows = upsert(Delivery, [values], conflict=["idem_key"], returning=["id"])
    return rows[0].id if rows else None


def enqueue(delivery_id: int) -> None:

    enqueue_after_commit("high", "templates_msg.jobs.send_transactional", delivery_id, retry=TX_RETRY)


def send(delivery_id: int) -> str:
    """Send one transactional message now; the same claim/mark/flush discipline as campaigns."""
    conn = get_redis()
    row = db.session.get(Delivery, delivery_id)
    if row is None or row.status is not DeliveryStatus.pending:
        return "done"
    account_id = row.account_id
    if dispatch.take_budget(account_id, 1, transactional=True) == 0:
        db.session.execute(
            sa.update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.pending)
            .values(status=DeliveryStatus.failed, reason="daily budget used")
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return "failed"
    claim_id = f"{dispatch._run_id(conn)}:tx{delivery_id}"
    conn.set(f"tm:lease:{claim_id}", 1, ex=dispatch.LEASE_SECONDS)
    claimed = db.session.execute(
        sa.update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.pending)
        .values(
            status=DeliveryStatus.sending, claim=claim_id, claimed_at=utcnow(), attempts=Delivery.attempts + 1
        )
        .returning(Delivery.id, Delivery.openid, Delivery.subscriber_id, Delivery.attempts, Delivery.payload)
        .execution_options(synchronize_session=False)
    ).first()
    db.session.commit()
    if claimed is None:
        dispatch.give_back_budget(account_id, 1)
        return "done"
    payload = claimed.payload or {}
    body: dict[str, Any] = {
        "touser": claimed.openid,
        "template_id": payload.get("template_id"),
        "data": {
            k: {"value": str(v)} if not isinstance(v, dict) else v
            for k, v in (payload.get("data") or {}).items()
        },
        "client_msg_id": f"tm{delivery_id}",
    }
    if payload.get("url"):
        body["url"] = dispatch.click_url(delivery_id)
    conn.set(f"tm:dm:{delivery_id}", "s", ex=86400)
    out = dispatch.send_one(dispatch.client(account_id, {}), TemplateKind.official, body)
    conn.set(f"tm:dm:{delivery_id}", dispatch._mark(out), ex=86400)
    if out.status not in (DeliveryStatus.sent, DeliveryStatus.unknown):
        dispatch.give_back_budget(account_id, 1)
    if out.action == "retry" and claimed.attempts < dispatch.MAX_ATTEMPTS:
        dispatch._flush(account_id, claim_id, [(claimed, out)])
        db.session.commit()
        raise RuntimeError(f"transient failure sending {delivery_id}: {out.reason}")  # RQ's Retry backs off
    if out.status is DeliveryStatus.pending:
        out = dispatch.Outcome(DeliveryStatus.failed, errcode=out.errcode, reason=out.reason)
    dispatch._flush(account_id, claim_id, [(claimed, out)])
    db.session.commit()
    return out.status.value


def send_now(
    account_id: int, openid: str, template_id: str, data: dict[str, Any], idem_key: str, **kw: Any
) -> str:
    """For callers already in a high-queue job (fund alerts): record, then send in this job."""
    delivery_id = queue_message(account_id, openid, template_id, data, idem_key, **kw)
    db.session.commit()
    if delivery_id is None:
        return "duplicate"
    return send(delivery_id)


def order_changed(order_id: int, status: str) -> None:
    """The store moved an order: paid, fulfilled and refunded get a notice, queued after commit."""
    if status in ORDER_NOTICES:
        enqueue_after_commit("high", "templates_msg.jobs.notify_order", order_id, status)


def notify_order(order_id: int, status: str) -> str | None:
    """An order notice, if the account configured a template for it."""
    from accounts.models import Subscriber
    from store.models import Order, Product

    notice = ORDER_NOTICES.get(status)
    order = db.session.get(Order, order_id)
    if notice is None or order is None:
        return None
    config = db.session.scalar(
        sa.select(TransactionalTemplate).where(
            TransactionalTemplate.account_id == order.account_id, TransactionalTemplate.notice == notice
        )
    )
    if config is None:
        return None
    openid = db.session.scalar(sa.select(Subscriber.openid).where(Subscriber.id == order.subscriber_id))
    product = db.session.get(Product, order.product_id)
    variables = {
        "out_trade_no": order.out_trade_no,
        "amount": yuan(order.amount_fen),
        "product": product.name if product else "",
    }
    data = {k: str(v).format_map(_Default(variables)) for k, v in (config.data or {}).items()}
    return send_now(
        order.account_id,
        openid,
        config.template_id,
        data,
        f"order-{order.id}-{notice}",
        notice=notice,
        subscriber_id=order.subscriber_id,
    )


class _Default(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def set_template(
    account_id: int, notice: str, template_id: str, data: dict[str, Any]
) -> TransactionalTemplate:
    upsert(
        TransactionalTemplate,
        [{"account_id": account_id, "notice": notice, "template_id": template_id, "data": data}],
        conflict=["account_id", "notice"],
        update=["template_id", "data"],
    )
    return db.session.scalar(
        sa.select(TransactionalTemplate).where(
            TransactionalTemplate.account_id == account_id, TransactionalTemplate.notice == notice
        )
    )
