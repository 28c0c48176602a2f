"""RQ jobs of metrics: thin wrappers over the services, registered in wechat_service.worker."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from metrics import datacube, rollups
from wechat_service.extensions import db

log = logging.getLogger(__name__)

REROLL_DAYS = 7


def refresh_rollups() -> dict[str, Any]:
    """Cron, every 10 minutes: the incremental refresh (skipped while a rebuild holds the lock)."""
    with rollups.rollup_lock() as held:
        if not held:
            return {"skipped": "another refresh or rebuild is running"}
        report = rollups.refresh()
        db.session.commit()
    log.info("metrics refresh: %s", report)
    return report


def reconcile_datacube() -> dict[str, Any]:
    """Cron, daily: recompute the last week whole (catches rows changed in place, such as a
    re-bound phone, and a late follow that turns a later one into a re-follow), then compare
    follows, unfollows and followers with WeChat's datacube."""
    today = rollups.today_in("Asia/Shanghai")
    with rollups.rollup_lock(wait=600) as held:
        if held:
            rollups.recompute(None, today - timedelta(days=REROLL_DAYS), today)
            db.session.commit()
    report = datacube.reconcile_recent()
    log.info("datacube reconciliation: %s", report)
    return report
