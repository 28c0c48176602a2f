"""Live-stack fixtures: the real `wechat-service web` (gunicorn), `worker` and the simulator as
subprocesses on free ports, against a dedicated PostgreSQL database (tables truncated between
tests) and their own Redis database number."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa
from flask import Flask

from simulator.driver import Target
from tests import helpers

# The BOSS keeps idempotency keys per client: the live database numbers its holds and orders from 1
# as the in-process one does, so the live stack is a client of its own (no key reused across them).
LIVE_BOSS_APP = "wechat-service-live"


@dataclass
class Live:
    base: str
    sim: str
    env: dict[str, str]
    app: Flask
    logs: Path
    procs: dict[str, Popen[bytes]] = field(default_factory=dict)

    def create_account(self, mode: str = "plain", **overrides: Any) -> tuple[dict[str, Any], Target]:
        from accounts import services
        from wechat_service.extensions import db

        fields = helpers.account_fields(mode, **overrides)
        with self.app.app_context():
            services.add_account(**fields)
            db.session.commit()
        callback = f"{self.base}/wechat/{fields['appid']}/callback"
        helpers.register_with_simulator(self.sim, fields, callback)
        return fields, helpers.target_for(fields, callback)

    def drive(self, appid: str, action: str, **params: Any) -> dict[str, Any]:
        resp = requests.post(
            f"{self.sim}/_sim/accounts/{appid}/drive", json={"action": action, **params}, timeout=60
        )
        resp.raise_for_status()
        return resp.json()

    def sim_state(self, appid: str) -> dict[str, Any]:
        return requests.get(f"{self.sim}/_sim/accounts/{appid}", timeout=10).json()

    def scalar(self, query: Any) -> Any:
        from wechat_service.extensions import db

        with self.app.app_context():
            try:
                return db.session.scalar(query)
            finally:
                db.session.remove()

    def in_app(self, fn: Callable[[], Any]) -> Any:
        from wechat_service.extensions import db

        with self.app.app_context():
            try:
                return fn()
            finally:
                db.session.remove()

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Popen[bytes]:
        proc = helpers.start(helpers.cli(*args), env or self.env, self.logs / f"{name}.log")
        self.procs[name] = proc
        return proc

    def wait_for(self, check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def live_stack(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from wechat_service.app import create_app
    from wechat_service.extensions import db

    logs = tmp_path_factory.mktemp("live-logs")
    requests.post(
        f"{simulator}/_sim/boss/clients",
        json={"app_id": LIVE_BOSS_APP, "secret": helpers.BOSS_SECRET},
        timeout=5,
    ).raise_for_status()
    db_url = helpers.recreate_database(f"{helpers.DB_NAME}_live")
    redis_url = f"{helpers.REDIS}/{helpers.LIVE_REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    port = helpers.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "WECHAT_SERVICE_SECRET_KEY": helpers.SECRET_KEY,
        "WECHAT_SERVICE_MASTER_KEY": helpers.MASTER_KEY,
        "WECHAT_SERVICE_WECHAT_API_BASE": f"{simulator}/wechat",
        "WECHAT_SERVICE_WECHAT_OPEN_BASE": f"{simulator}/wechat-open",
        "WECHAT_SERVICE_BOSS_API_BASE": f"{simulator}/boss",
        "WECHAT_SERVICE_WECHATPAY_API_BASE": f"{simulator}/wechatpay",
        "WECHAT_SERVICE_ALIPAY_GATEWAY": f"{simulator}/alipay/gateway.do",
        "WECHAT_SERVICE_BOSS_APP_ID": LIVE_BOSS_APP,
        "WECHAT_SERVICE_BOSS_SECRET": helpers.BOSS_SECRET,
        "WECHAT_SERVICE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "WECHAT_SERVICE_INSTANCE_PATH": str(tmp_path_factory.mktemp("live-instance")),
        "PYTHONUNBUFFERED": "1",
    }
    helpers.run_checked(helpers.cli("db", "upgrade"), env)
    app = create_app(
        {
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": helpers.SECRET_KEY,
            "MASTER_KEY": helpers.MASTER_KEY,
            "WECHAT_API_BASE": f"{simulator}/wechat",
            "WECHAT_OPEN_BASE": f"{simulator}/wechat-open",
            "BOSS_API_BASE": f"{simulator}/boss",
            "WECHATPAY_API_BASE": f"{simulator}/wechatpay",
            "ALIPAY_GATEWAY": f"{simulator}/alipay/gateway.do",
            "BOSS_APP_ID": LIVE_BOSS_APP,
            "BOSS_SECRET": helpers.BOSS_SECRET,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "INSTANCE_PATH": env["WECHAT_SERVICE_INSTANCE_PATH"],
        }
    )
    stack = Live(base=f"http://127.0.0.1:{port}", sim=simulator, env=env, app=app, logs=logs)
    # Threads that truly overlap (gthread): concurrency tests put many requests in the
    # application at once, not two at a time.
    web = stack.start("web", "web", "--port", str(port), "--workers", "2", "--threads", "16")
    stack.start("worker", "worker")
    helpers.wait_http(f"{stack.base}/healthz", web)
    yield stack
    helpers.stop(*stack.procs.values())
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def live(live_stack: Live) -> Iterator[Live]:
    """The stack with empty tables (and its standard processes restarted if a test stopped them)."""
    from wechat_service.extensions import db

    def truncate() -> None:
        names = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
        # A job of the previous test may still hold row locks while TRUNCATE takes its table
        # locks one by one: PostgreSQL then breaks the deadlock by failing one side. Retry.
        for attempt in range(5):
            try:
                db.session.execute(sa.text(f"TRUNCATE {names} CASCADE"))
                db.session.commit()
                return
            except sa.exc.OperationalError:
                db.session.rollback()
                if attempt == 4:
                    raise
                time.sleep(0.5)

    live_stack.in_app(truncate)
    if live_stack.procs["worker"].poll() is not None:
        live_stack.start("worker", "worker")
    yield live_stack
    for name in [n for n in live_stack.procs if n not in ("web", "worker")]:
        helpers.stop(live_stack.procs.pop(name))
