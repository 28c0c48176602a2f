"""RQ jobs of the campaign engine: thin wrappers over the services, ids in."""

from __future__ import annotations

from typing import Any

from templates_msg import transactional
from templates_msg.sending import planning, recovery, sender
from wechat_service.extensions import db


def start_campaign(campaign_id: int) -> bool:
    return recovery.start(campaign_id)


def plan_campaign(campaign_id: int) -> int:
    return planning.plan(campaign_id)


def send_batch(campaign_id: int, account_id: int, batch_no: int) -> dict[str, int]:
    try:
        return sender.send_batch(campaign_id, account_id, batch_no)
    finally:
        db.session.remove()


def kick_campaign(campaign_id: int) -> int:
    return recovery.kick(campaign_id)


def tick_campaigns() -> dict[str, int]:
    """Cron: see templates_msg.sending.recovery.tick."""
    return recovery.tick()


def send_transactional(delivery_id: int) -> str:
    return transactional.send(delivery_id)


def notify_order(notice: dict[str, Any]) -> str | None:
    return transactional.notify_order(notice)


def send_fund_alert(alert: dict[str, Any]) -> dict[str, int]:
    return transactional.send_fund_alert(alert)
