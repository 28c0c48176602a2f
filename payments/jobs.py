"""RQ jobs of the payments domain: thin wrappers over its services."""

from __future__ import annotations

from datetime import date

from payments import reconciliation, refunds, services
from wechat_service.extensions import db


def sweep_refunds() -> dict[str, int]:
    """Cron: refunds still processing after a minute are asked about at the provider."""

    return refunds.sweep()


def sweep_payments() -> dict[str, int]:
    """Cron: payments still pending after two minutes are asked about; expired ones are closed."""

    return services.sweep_pending()


def reconcile_day(bill_date: str | None = None) -> dict[str, int]:
    """Cron (daily, after the providers publish yesterday's statements): every merchant."""

    counts = reconciliation.reconcile_day(date.fromisoformat(bill_date) if bill_date else None)
    db.session.remove()
    return counts
