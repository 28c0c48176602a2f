"""RQ jobs of the campaign engine: thin wrappers over the services, ids in."""

from __future__ import annotations

from typing import Any

from templates_msg import dispatch, transactional
from wechat_service.extensions import db


def start_campaign(campaign_id: int) -> bool:
    return dispatch.start(campaign_id)


def plan_campaign(campaign_id: int) -> int:
    return dispatch.plan(campaign_id)


def send_batch(campaign_id: int, account_id: int, batch_no: int) -> dict[str, int]:
    try:
        return dispatch.send_batch(campaign_id, account_id, batch_no)
    finally:
        db.session.remove()


def kick_campaign(campaign_id: int) -> int:
    return dispatch.kick(campaign_id)


def tick_campaigns() -> dict[str, int]:
    """Cron: see dispatch.tick."""
    return dispatch.tick()


def send_transactional(delivery_id: int) -> str:
    return transactional.send(delivery_id)


def notify_order(notice: dict[str, Any]) -> str | None:
    return transactional.notify_order(notice)


def send_fund_alert(alert: dict[str, Any]) -> dict[str, int]:
    return transactional.send_fund_alert(alert)
