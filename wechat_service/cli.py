"""`wechat-service`: a Flask CLI group over ``create_app`` plus the process commands."""

from __future__ import annotations

import os
import sys

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

from accounts.services import account_by_appid
from wechat_service.app import create_app
from wechat_service.config import ConfigError
from wechat_service.extensions import RedisMissingError, db
from wechat_service.gateway import token_manager
from wechat_service.rotation import rotate_all
from wechat_service.supervisor import supervise
from wechat_service.worker import run_cron, run_worker


def _create_app() -> Flask:
    try:
        return create_app()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)


def _require_redis() -> None:
    if current_app.extensions.get("redis") is None:
        click.echo(
            f"error: {RedisMissingError.__doc__} Set REDIS_URL, or use `wechat-service run`.", err=True
        )
        sys.exit(2)


@click.command("web")
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8000, type=int)
@click.option("--workers", default=None, type=int, help="gunicorn workers (default 2 × cores + 1).")
@click.option("--threads", default=1, type=int)
@with_appcontext
def web(host: str, port: int, workers: int | None, threads: int) -> None:
    """Serve HTTP with gunicorn (wsgi:app)."""
    _require_redis()
    workers = workers or (2 * (os.cpu_count() or 1) + 1)
    # Each request thread holds one database connection: the pool of every worker process
    # (which reads the environment in create_app) has at least that many.
    pool = max(threads, int(current_app.config["DB_POOL_SIZE"]))
    os.environ["WECHAT_SERVICE_DB_POOL_SIZE"] = str(pool)
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "wsgi:app",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread" if threads > 1 else "sync",
        "--threads",
        str(threads),
        "--timeout",
        "30",
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        # Callback signatures, nonces and OAuth codes stay out of the access log.
        "--logger-class",
        "wechat_service.accesslog.RedactingLogger",
        "--error-logfile",
        "-",
    ]
    os.execv(sys.executable, args)


@click.command("worker")
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@with_appcontext
def worker(queues: tuple[str, ...], burst: bool) -> None:
    """RQ worker (scheduler enabled), every job inside an app context."""

    _require_redis()
    run_worker(current_app._get_current_object(), list(queues) or ["high", "default", "low"], burst)  # type: ignore[attr-defined]


@click.command("cron")
@with_appcontext
def cron() -> None:
    """RQ's cron scheduler with our periodic jobs; a second one stands by."""

    _require_redis()
    run_cron(current_app._get_current_object())  # type: ignore[attr-defined]


@click.command("simulator")
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8100, type=int)
def simulator(host: str, port: int) -> None:
    """The offline stand-in for WeChat (and later WeChat Pay, Alipay, the BOSS)."""
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "simulator.app:create_app()",
        "--bind",
        f"{host}:{port}",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        "32",
        "--timeout",
        "60",
        "--error-logfile",
        "-",
    ]
    os.execv(sys.executable, args)


@click.command("run")
@click.option("--demo", is_flag=True, help="Start the simulator and drive the scripted demo.")
@click.option("--once", is_flag=True, help="With --demo: run the scenario, check it, exit 0/1.")
@click.option("--port", default=8000, type=int)
@click.option("--sim-port", default=8100, type=int)
def run(demo: bool, once: bool, port: int, sim_port: int) -> None:
    """Development supervisor: web + worker + cron (+ simulator and demo)."""

    sys.exit(supervise(demo=demo, once=once, port=port, sim_port=sim_port))


@click.group("secrets")
def secrets_cli() -> None:
    """Master-key housekeeping."""


@secrets_cli.command("generate-key")
def generate_key() -> None:
    """Print a new master key (prepend it to WECHAT_SERVICE_MASTER_KEY, then `secrets rotate`)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


@secrets_cli.command("rotate")
@with_appcontext
def rotate() -> None:
    """Re-encrypt every stored secret under the first master key."""

    counts = rotate_all()
    db.session.commit()
    for table, n in counts.items():
        click.echo(f"{table}: {n} values re-encrypted")


@click.command("token")
@click.argument("appid")
@click.option("--refresh", is_flag=True)
@with_appcontext
def token(appid: str, refresh: bool) -> None:
    """Show (or refresh) an account's access-token health."""
    import json


    _require_redis()
    account = account_by_appid(appid)
    if refresh:
        token_manager().refresh(account.appid, account.app_secret)
    click.echo(json.dumps(token_manager().health(appid), indent=2))


def register_commands(app: Flask) -> None:
    """The process and housekeeping commands; the domains add theirs in ``init_app``."""
    for command in (web, worker, cron, secrets_cli, token):
        app.cli.add_command(command)


cli = FlaskGroup(
    create_app=_create_app,
    name="wechat-service",
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
    help="WeChat official-account matrix backend.",
)
# These two need no app of their own (run builds its children's environment first).
cli.add_command(simulator)
cli.add_command(run)


def main() -> None:
    cli.main(prog_name="wechat-service")


if __name__ == "__main__":
    main()
