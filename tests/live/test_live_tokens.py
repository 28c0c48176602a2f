"""One access token per account, shared by every process, refreshed exactly once."""

from __future__ import annotations

import subprocess
import sys
import time

import requests

from accounts import services
from tests import helpers
from tests.live.conftest import Live


def test_eight_processes_after_invalidation_cause_exactly_one_refresh(live: Live) -> None:
    fields, _ = live.create_account("plain")
    account_id = live.in_app(lambda: services.account_by_appid(fields["appid"]).id)
    live.in_app(lambda: services.api_client(account_id).tag.get())  # warm: one token in Redis
    assert live.sim_state(fields["appid"])["stats"]["stable_token"] == 1

    requests.post(
        f"{live.sim}/_sim/accounts/{fields['appid']}/invalidate-token", timeout=5
    ).raise_for_status()
    start_at = time.time() + 4.0  # every process imported and waiting before the shot
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.live.api_call", str(account_id), str(start_at)],
            env=live.env,
            cwd=str(helpers.ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outputs
    assert all(out.startswith("ok") for out, _ in outputs)
    stats = live.sim_state(fields["appid"])["stats"]
    assert stats["stable_token"] == 2, stats  # the warm-up and exactly one refresh
    assert stats["token"] == 0  # never cgi-bin/token, which would knock other processes out
    health = live.in_app(
        lambda: __import__("wechat_service.gateway", fromlist=["x"]).token_manager().health(fields["appid"])
    )
    assert health["refreshes"] == 2 and health["healthy"]
