"""Payments: merchants, providers (WeChat Pay v3 and v2, Alipay), notifications, refunds,
reconciliation and fund pools. Every payment or refund state change is a new row; the
provider's ids are unique."""

from __future__ import annotations

from flask import Flask

from wechat_service.extensions import csrf
from wechat_service.periodic import declare


def init_app(app: Flask) -> None:
    """Models, provider notification endpoints, console pages, periodic jobs."""
    # Its own modules (models add their tables): they import this package, so they load here.
    from payments import console, endpoints, jobs, models  # noqa: F401

    app.register_blueprint(endpoints.bp)
    csrf.exempt(endpoints.bp)  # providers' notifications carry their own signatures, no browser session
    app.register_blueprint(console.bp)
    declare(app, jobs.sweep_payments, "default", interval=60)
    declare(app, jobs.sweep_refunds, "default", interval=120, job_timeout=300)
    # Hourly: it starts once yesterday's statements are published (10:30 Beijing time) and
    # retries merchants whose statement was not there yet; a finished day is not run again.
    declare(app, jobs.reconcile_day, "low", cron="15 * * * *", job_timeout=3600)
