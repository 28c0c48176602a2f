"""metrics: the metric registry, daily rollups from the ledgers, the org tree, the datacube
check, contracts, targets and result-based fees (see README "Metrics, targets and fees")."""

from __future__ import annotations

from flask import Flask

from wechat_service.periodic import declare


def init_app(app: Flask) -> None:
    """Models, console pages and API, CLI, periodic jobs."""
    # Its own modules (models add their tables): they import this package, so they load here.
    from metrics import api, cli, console, jobs, models  # noqa: F401

    app.register_blueprint(console.bp)
    app.extensions["openapi"].register_blueprint(api.blp)
    app.cli.add_command(cli.metrics_cli)
    declare(app, jobs.refresh_rollups, "default", interval=600, job_timeout=600)
    # WeChat's datacube has yesterday's figures by Beijing morning; 04:00 UTC (the cron process
    # runs on UTC) is noon there.
    declare(app, jobs.reconcile_datacube, "low", cron="0 4 * * *", job_timeout=3600)
