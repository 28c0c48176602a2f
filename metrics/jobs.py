"""RQ jobs of metrics: thin wrappers over the services, registered in wechat_service.worker."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from metrics import datacube, rollups
from wechat_service.extensions import db

log = logging.getLogger(__name__)

REROLL_DAYS = 7


def refresh_rollups() -> dict[str, Any]:
    """Cron, every 10 minutes: the incremental refresh (skipped while a rebuild holds the lock;
    the next run reads whatever this one did not). After an upgrade that changed the metric
    definitions, the open periods are recomputed under the new ones first."""
    with rollups.rollup_lock() as held:
        if not held:
            return {"skipped": "another refresh or rebuild is running"}
        applied = _apply_definitions()
        report = rollups.refresh()
        if applied is not None:
            report["definitions"] = applied
        db.session.commit()
    log.info("metrics refresh: %s", report)
    return report


def _apply_definitions(budget: float = 300) -> dict[str, Any] | None:
    """Steps of one account each, committed, for at most ``budget`` seconds (the next run goes on)."""
    deadline = time.monotonic() + budget
    applied = None
    while time.monotonic() < deadline:
        step = rollups.apply_definitions(accounts=1)
        if step is None:
            break
        db.session.commit()  # step: one account's rollups under the new definitions
        applied = {"from": step["from"].isoformat(), "done": step["done"]}
        if step["done"]:
            break
    return applied


def reconcile_datacube(now: datetime | None = None) -> dict[str, Any]:
    """Cron, daily: recompute the last week whole — each account up to its own local today —
    (catches rows changed in place, such as a re-bound phone), then compare follows, unfollows and
    followers with WeChat's datacube. Late rows that change other days are the refresh's job."""
    with rollups.rollup_lock(wait=600) as held:
        if held:
            rollups.reroll(REROLL_DAYS, now)
            db.session.commit()
    report = datacube.reconcile_recent()
    log.info("datacube reconciliation: %s", report)
    return report
