"""`wechat-service cron`: exactly one active per deployment, the other stands by and takes over."""

from __future__ import annotations

import time
from typing import Any

import redis

from tests import helpers
from tests.live.conftest import Live
from wechat_service.worker import LEADER_KEY, release_lease, take_or_renew_lease


class _LeaseLostMeanwhile(redis.Redis):
    """A real Redis connection on which, right after cron A reads the leader key, A's lease
    expires and cron B takes it — the interleaving a GET-then-EXPIRE renewal cannot survive."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        result = super().execute_command(*args, **options)
        if args[0] == "GET" and args[1] == LEADER_KEY and result == b"cron-a":
            super().execute_command("SET", LEADER_KEY, "cron-b", "EX", 5)
        return result


def test_a_lost_lease_is_never_extended_over_another_holder() -> None:
    url = f"{helpers.REDIS}/{helpers.REDIS_DB}"
    with _LeaseLostMeanwhile.from_url(url) as conn:
        conn.delete(LEADER_KEY)
        assert take_or_renew_lease(conn, "cron-a", seconds=30)  # A takes it
        # A renews; as it does, its lease passes to B (for 5 s). A must not extend B's lease
        # to 30 s, nor think it still leads.
        renewed = take_or_renew_lease(conn, "cron-a", seconds=30)
        holder, ttl = conn.get(LEADER_KEY), conn.ttl(LEADER_KEY)
        assert (renewed, holder) in ((False, b"cron-b"), (True, b"cron-a")), (renewed, holder)
        if holder == b"cron-b":
            assert ttl <= 5
        # Plainly: B holds it, A can neither renew nor release it.
        conn.set(LEADER_KEY, "cron-b", ex=5)
        assert not take_or_renew_lease(conn, "cron-a", seconds=30)
        assert not release_lease(conn, "cron-a")
        assert conn.get(LEADER_KEY) == b"cron-b" and conn.ttl(LEADER_KEY) <= 5
        assert take_or_renew_lease(conn, "cron-b", seconds=30) and conn.ttl(LEADER_KEY) > 5
        assert release_lease(conn, "cron-b") and conn.get(LEADER_KEY) is None


def test_second_cron_stands_by_then_takes_over(live: Live) -> None:
    conn = redis.Redis.from_url(live.env["REDIS_URL"])
    conn.delete(LEADER_KEY)
    first = live.start("cron-a", "cron")
    leader = live.wait_for(lambda: conn.get(LEADER_KEY), 30, "a leader")
    assert str(first.pid).encode() in leader
    second = live.start("cron-b", "cron")
    time.sleep(8)  # the standby has started and ticked a few times
    assert second.poll() is None
    assert conn.get(LEADER_KEY) == leader  # no double scheduling
    first.terminate()
    first.wait(timeout=15)
    new_leader = live.wait_for(lambda: (v := conn.get(LEADER_KEY)) and v != leader and v, 20, "takeover")
    assert str(second.pid).encode() in new_leader


def test_cron_enqueues_its_periodic_jobs(live: Live) -> None:
    from rq import Queue

    conn = redis.Redis.from_url(live.env["REDIS_URL"])
    conn.delete(LEADER_KEY)
    live.start("cron-c", "cron")
    queue = Queue("high", connection=conn)

    def ran() -> set[str]:
        jobs = (queue.fetch_job(i) for i in queue.finished_job_registry.get_job_ids())
        return {j.func_name for j in jobs if j is not None}

    names = live.wait_for(ran, 30, "the stale-inbox sweep to run on the worker")
    assert "wechat_service.jobs.requeue_stale_inbox" in names
