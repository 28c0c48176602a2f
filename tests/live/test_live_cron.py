"""`wechat-service cron`: exactly one active per deployment, the other stands by and takes over."""

from __future__ import annotations

import time

import redis

from tests.live.conftest import Live
from wechat_service.worker import LEADER_KEY


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
