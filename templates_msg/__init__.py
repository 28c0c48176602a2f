"""Template-message campaigns: templates, segments, dispatch, delivery reports, clicks,
attribution, transactional notices."""

from __future__ import annotations

from flask import Flask

from accounts.timeline import contribute
from payments.signals import fund_pool_low
from store.signals import order_moved
from wechat_service.periodic import declare


def init_app(app: Flask) -> None:
    """Models, callback handlers, console pages and API, click tracking, periodic jobs."""
    # Its own modules (handlers register, models add their tables): they import this package, so
    # they load here, once the app is being built.
    from templates_msg import api, console, handlers, jobs, models, tracking, transactional  # noqa: F401

    # Notices are pushed: the store and payments announce, and this domain sends.
    order_moved.connect(transactional.on_order_moved)
    fund_pool_low.connect(transactional.on_fund_pool_low)

    contribute(app, "messages", handlers.timeline_entries)  # the subscriber's timeline
    app.register_blueprint(console.bp)
    app.register_blueprint(tracking.bp)  # /t/<token>: a GET redirect, no form
    app.extensions["openapi"].register_blueprint(api.blp)
    # Start due campaigns, recover rows of dead send jobs, resume paused accounts.
    declare(app, jobs.tick_campaigns, "default", interval=15, job_timeout=300)
