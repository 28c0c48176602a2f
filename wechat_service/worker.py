"""RQ worker and cron processes, every job run inside an app context."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

from flask import Flask, current_app
from redis import Redis
from rq import Queue, Worker
from rq.cron import CronScheduler
from rq.job import Job

from wechat_service.app import create_app
from wechat_service.extensions import db
from wechat_service.periodic import declared

log = logging.getLogger(__name__)

_app: Flask | None = None
_pid_with_fresh_pool: int | None = None


def set_app(app: Flask) -> None:
    global _app
    _app = app


class AppJob(Job):
    """Runs the job function inside the app context, on connections of this process."""

    def perform(self) -> Any:
        global _pid_with_fresh_pool
        if _app is None:

            set_app(create_app())
        assert _app is not None
        with _app.app_context():
            # A forked work horse must not reuse its parent's pooled connections.
            if _pid_with_fresh_pool != os.getpid():
                for engine in db.engines.values():
                    engine.dispose(close=False)
                _pid_with_fresh_pool = os.getpid()
            try:
                return super().perform()
            finally:
                db.session.remove()


def run_worker(app: Flask, queue_names: list[str], burst: bool = False) -> None:
    set_app(app)
    conn = Redis.from_url(
        app.config["REDIS_URL"], health_check_interval=30
    )  # no socket timeout: BLPOP blocks
    queues = [Queue(name, connection=conn, job_class=AppJob) for name in queue_names]
    worker = Worker(queues, connection=conn, job_class=AppJob)
    worker.work(burst=burst, with_scheduler=True, logging_level="INFO")


# -- cron ------------------------------------------------------------------------------------------

LEADER_KEY = "wechat_service:cron:leader"
LEASE_SECONDS = 30

# Take the lease if free, or extend it if it is still ours — one atomic step: a GET then EXPIRE
# could extend a lease that expired and passed to another process in between.
_TAKE_OR_RENEW = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def take_or_renew_lease(conn: Redis, name: str, seconds: int = LEASE_SECONDS) -> bool:
    """True when ``name`` holds the cron lease for the next ``seconds`` (compare-and-extend)."""
    return bool(conn.eval(_TAKE_OR_RENEW, 1, LEADER_KEY, name, seconds))


def release_lease(conn: Redis, name: str) -> bool:
    """Hand the lease over at once, only if it is still ours (compare-and-delete)."""
    return bool(conn.eval(_RELEASE, 1, LEADER_KEY, name))


def periodic_jobs(scheduler: CronScheduler, app: Flask | None = None) -> None:
    """Register every periodic job the domains declared in their ``init_app``."""

    for job in declared(app or _app or current_app._get_current_object()):  # type: ignore[attr-defined]
        when = {"interval": job.interval} if job.interval is not None else {"cron": job.cron}
        scheduler.register(job.func, job.queue, job_timeout=job.job_timeout, **when)


def run_cron(app: Flask, tick: float = 5.0, max_ticks: int | None = None) -> None:
    """RQ's cron scheduler behind a Redis lease: one active per deployment, the others stand by."""
    conn: Redis = app.extensions["redis"]
    name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    # RQ matches cron fields against the process's local time: make it UTC, so a schedule means
    # the same on a host set to Asia/Shanghai as on one set to UTC.
    os.environ["TZ"] = "UTC"
    time.tzset()
    scheduler = CronScheduler(connection=conn, name=name)
    periodic_jobs(scheduler, app)
    leading = False
    ticks = 0

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # leave through `finally`, which hands the lease over at once

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        while max_ticks is None or ticks < max_ticks:
            ticks += 1
            if take_or_renew_lease(conn, name):
                if not leading:
                    log.info("cron %s is now the active scheduler", name)
                    scheduler.register_birth()
                    leading = True
                if scheduler.enqueue_jobs():
                    scheduler.save()
                scheduler.heartbeat()
            elif leading:
                log.warning("cron %s lost the lease; standing by", name)
                leading = False
            time.sleep(min(tick, max(scheduler.calculate_sleep_interval(), 0.5)))
    except KeyboardInterrupt:
        pass
    finally:
        if leading:
            scheduler.register_death()
            release_lease(conn, name)
