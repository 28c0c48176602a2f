"""`wechat-service metrics …`: rebuild rollups for a date range, refresh now, reconcile."""

from __future__ import annotations

import json
import time
from datetime import date

import click
from flask.cli import with_appcontext

from accounts.models import Account
from metrics import rollups
from metrics.datacube import reconcile_recent
from metrics.jobs import refresh_rollups
from wechat_service.extensions import db


@click.group("metrics")
def metrics_cli() -> None:
    """Metric rollups and the datacube reconciliation."""


@metrics_cli.command("rebuild")
@click.option("--from", "day_from", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First local day.")
@click.option("--to", "day_to", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last local day.")
@click.option("--account", "appids", multiple=True, help="Only these accounts (appid); default all.")
@with_appcontext
def rebuild(day_from: date, day_to: date, appids: tuple[str, ...]) -> None:
    """Recompute the rollups of [--from, --to] from the ledgers (same result as the incremental refresh)."""
    import sqlalchemy as sa

    d0, d1 = day_from.date(), day_to.date()  # type: ignore[attr-defined]
    if d1 < d0:
        raise click.BadParameter("--to is before --from")
    ids = None
    if appids:
        ids = list(db.session.scalars(sa.select(Account.id).where(Account.appid.in_(appids))))
        if len(ids) != len(set(appids)):
            raise click.BadParameter("unknown appid")
    started = time.monotonic()
    with rollups.rollup_lock(wait=600) as held:
        if not held:
            raise click.ClickException("another refresh or rebuild kept the lock for 10 minutes")
        written = rollups.rebuild(d0, d1, ids)
        db.session.commit()
    click.echo(f"rebuilt {d0}…{d1}: {written} rollup rows in {time.monotonic() - started:.1f} s")


@metrics_cli.command("refresh")
@with_appcontext
def refresh() -> None:
    """Run the incremental refresh now."""

    click.echo(json.dumps(refresh_rollups()))


@metrics_cli.command("reconcile")
@with_appcontext
def reconcile() -> None:
    """Compare the last week with WeChat's datacube now."""

    click.echo(json.dumps(reconcile_recent()))
