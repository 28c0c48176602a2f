"""The campaign engine's metric sources over its own deliveries (composed by ``metrics.registry``).

A delivery row changes as it goes (sent, reported, clicked): each metric buckets by the time of
its own step, and the refresh re-reads deliveries by their change sequence."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from templates_msg.models import Delivery, ReportStatus
from wechat_service.facts import COUNT, Bucket

M = Delivery
_CAMPAIGN = sa.and_(M.kind == "campaign", M.control.is_(False))


def campaign_sends(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.sent_at, COUNT, _CAMPAIGN, M.sent_at.is_not(None))


def campaign_deliveries(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.reported_at, COUNT, _CAMPAIGN, M.report == ReportStatus.delivered)


def campaign_clicks(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.first_clicked_at, COUNT, _CAMPAIGN, M.first_clicked_at.is_not(None))


def transactional(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.sent_at, COUNT, M.kind != "campaign", M.sent_at.is_not(None))
