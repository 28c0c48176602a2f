"""Transactional messages (order paid / fulfilled / refunded, fund alerts): the campaign sender on
the high queue, once per idempotency key, sharing the account's daily budget."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from rq import Retry

from templates_msg.models import Delivery, DeliveryStatus, TemplateKind, TransactionalTemplate
from templates_msg.sending import budget, sender
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary, upsert
from wechat_service.extensions import db, enqueue_after_commit, get_queue, get_redis
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


@step_boundary("the same claim/mark discipline as campaigns: claimed before it is sent, marked right after")
def send(delivery_id: int) -> str:
    """Send one transactional message now; the same claim/mark/flush discipline as campaigns."""
    conn = get_redis()
    row = db.session.get(Delivery, delivery_id)
    if row is None or row.status is not DeliveryStatus.pending:
        return "done"
    account_id = row.account_id
    if budget.take_budget(account_id, 1, transactional=True) == 0:
        db.session.execute(
            sa.update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.pending)
            .values(status=DeliveryStatus.failed, reason="daily budget used")
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return "failed"
    claim_id = f"{sender.redis_run_id(conn)}:tx{delivery_id}"
    conn.set(f"tm:lease:{claim_id}", 1, ex=sender.LEASE_SECONDS)
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
        budget.give_back_budget(account_id, 1)
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
        body["url"] = sender.click_url(delivery_id)
    conn.set(f"tm:dm:{delivery_id}", "s", ex=86400)
    out = sender.send_one(sender.client(account_id, {}), TemplateKind.official, body)
    conn.set(f"tm:dm:{delivery_id}", sender.mark_of(out), ex=86400)
    if out.status not in (DeliveryStatus.sent, DeliveryStatus.unknown):
        budget.give_back_budget(account_id, 1)
    if out.action == "retry" and claimed.attempts < sender.MAX_ATTEMPTS:
        sender.flush(account_id, claim_id, [(claimed, out)])
        db.session.commit()
        raise RuntimeError(f"transient failure sending {delivery_id}: {out.reason}")  # RQ's Retry backs off
    if out.status is DeliveryStatus.pending:
        out = sender.Outcome(DeliveryStatus.failed, errcode=out.errcode, reason=out.reason)
    sender.flush(account_id, claim_id, [(claimed, out)])
    db.session.commit()
    return out.status.value


@step_boundary("the message is on record before it is sent in this job")
def send_now(
    account_id: int, openid: str, template_id: str, data: dict[str, Any], idem_key: str, **kw: Any
) -> str:
    """For callers already in a high-queue job (fund alerts): record, then send in this job."""
    delivery_id = queue_message(account_id, openid, template_id, data, idem_key, **kw)
    db.session.commit()
    if delivery_id is None:
        return "duplicate"
    return send(delivery_id)


def on_order_moved(_sender: Any, notice: dict[str, Any]) -> None:
    """Receiver of the store's ``order_moved`` (after commit): paid, fulfilled and refunded get a
    notice, sent by a job from the data the signal carries (no store table is read)."""
    if notice["status"] in ORDER_NOTICES:
        get_queue("high").enqueue("templates_msg.jobs.notify_order", notice)


def notify_order(notice: dict[str, Any]) -> str | None:
    """An order notice, if the account configured a template for it."""
    from accounts.models import Subscriber  # the tenant root, readable by every domain

    kind = ORDER_NOTICES.get(notice["status"])
    if kind is None:
        return None
    config = db.session.scalar(
        sa.select(TransactionalTemplate).where(
            TransactionalTemplate.account_id == notice["account_id"], TransactionalTemplate.notice == kind
        )
    )
    if config is None:
        return None
    openid = db.session.scalar(sa.select(Subscriber.openid).where(Subscriber.id == notice["subscriber_id"]))
    if openid is None:
        return None  # the subscriber is gone: nobody to tell
    variables = {
        "out_trade_no": notice["out_trade_no"],
        "amount": yuan(notice["amount_fen"]),
        "product": notice["product_name"],
    }
    data = {k: str(v).format_map(_Default(variables)) for k, v in (config.data or {}).items()}
    return send_now(
        notice["account_id"],
        openid,
        config.template_id,
        data,
        f"order-{notice['order_id']}-{kind}",
        notice=kind,
        subscriber_id=notice["subscriber_id"],
    )


def on_fund_pool_low(_sender: Any, alert: dict[str, Any]) -> None:
    """Receiver of payments' ``fund_pool_low`` (after commit): the pool's staff are told by a job."""
    get_queue("high").enqueue("templates_msg.jobs.send_fund_alert", alert)


def send_fund_alert(alert: dict[str, Any]) -> dict[str, int]:
    """Tell each of the pool's staff: once per alert and openid, sharing the account's daily
    budget; one recipient's failure does not stop the others."""
    counts = {"sent": 0, "failed": 0}
    for openid in alert["openids"]:
        key = f"fund-alert-{alert['pool_id']}-{alert['level']}-{alert['balance_fen']}-{openid}"
        try:
            outcome = send_now(
                alert["account_id"], openid, alert["template_id"], alert["data"], key, notice="fund_alert"
            )
        except Exception as exc:  # noqa: BLE001 - one recipient's failure must not stop the others
            db.session.rollback()
            log.error("fund alert to %s failed: %s", openid[:6], type(exc).__name__)
            outcome = "failed"
        counts["sent" if outcome in ("sent", "duplicate") else "failed"] += 1
    return counts


class _Default(dict[str, Any]):
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
    return db.session.scalars(
        sa.select(TransactionalTemplate).where(
            TransactionalTemplate.account_id == account_id, TransactionalTemplate.notice == notice
        )
    ).one()
