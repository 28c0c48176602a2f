"""What templates_msg hooks into: the callback router (delivery reports, subscribe popups —
registered by importing ``reports``), the store's and payments' notices (``transactional``,
connected in ``init_app``), and the subscriber's timeline (the messages they were sent)."""

from __future__ import annotations

import sqlalchemy as sa

from accounts.timeline import Entry
from templates_msg import reports  # noqa: F401 - registers the callback handlers
from templates_msg.models import Campaign, Delivery, DeliveryStatus
from wechat_service.extensions import db


def timeline_entries(account_id: int, subscriber_id: int, limit: int, unmasked: bool) -> list[Entry]:
    """Template messages the subscriber was sent (campaigns and notices), and their first click."""
    rows = db.session.execute(
        sa.select(Delivery, Campaign.name)
        .outerjoin(Campaign, Campaign.id == Delivery.campaign_id)
        .where(
            Delivery.account_id == account_id,
            Delivery.subscriber_id == subscriber_id,
            Delivery.status.in_([DeliveryStatus.sent, DeliveryStatus.unknown, DeliveryStatus.failed]),
        )
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    out = []
    for d, campaign in rows:
        what = campaign or d.kind
        at = d.sent_at or d.created_at
        detail = {"status": d.status.value, "report": d.report.value if d.report else None}
        out.append(Entry(at, "messages", f"message.{d.status.value}", what, detail))
        if d.first_clicked_at is not None:
            out.append(Entry(d.first_clicked_at, "messages", "message.clicked", what, {"clicks": d.clicks}))
    return sorted(out, key=lambda e: e.at, reverse=True)[:limit]
