"""Campaigns on the live stack: real RQ worker processes, the simulator over HTTP, exactly once
under a SIGKILLed worker, duplicate jobs, pause/resume races, a Redis restart; the rate with four
workers; 45009 and the resume after it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import redis
import requests
import sqlalchemy as sa
from rq import Worker

from accounts import services as account_services
from templates_msg import services
from templates_msg.models import Campaign, CampaignAccount, CampaignState, Delivery, DeliveryStatus
from templates_msg.sending import planning, recovery, sender
from tests import helpers
from tests.live.conftest import Live
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db

S = CampaignState


def _setup(live: Live, count: int, rate: int, batch_size: int = 100, **messaging: Any) -> tuple[int, str]:
    """An account with ``count`` followers, a campaign approved and sending, planned here into
    batches of ``batch_size`` whose send jobs go to the live workers. ``messaging`` settings of
    the simulator (a quota…) hold before the first send job can run."""
    fields, _ = live.create_account("plain")
    appid = fields["appid"]
    helpers.set_messaging(live.sim, appid, reports="off", **messaging)

    def make() -> int:
        account = account_services.account_by_appid(appid)
        helpers.seed_campaign_account(live.sim, account.id, appid, count, "oL" + appid[-6:])
        campaign = services.create_campaign(
            None, [account.id], "TPL_PROMO", {"name": "live", "data": {"first": "hi"}, "rate": rate}
        )
        services.transition(campaign.id, S.draft, S.pending_approval)
        services.transition(campaign.id, S.pending_approval, S.scheduled)
        services.transition(campaign.id, S.scheduled, S.sending, started_at=utcnow())
        db.session.commit()
        # The live app is shared by the whole session: the batch size holds for this plan only.
        with _config(live, CAMPAIGN_BATCH_SIZE=batch_size):
            planning.plan(campaign.id)
        return campaign.id

    before = live.app.config.get("CAMPAIGN_BATCH_SIZE")
    cid = live.in_app(make)
    assert live.app.config.get("CAMPAIGN_BATCH_SIZE") == before  # nothing leaks into later tests
    return cid, appid


@contextmanager
def _config(live: Live, **values: Any) -> Iterator[None]:
    """Set app config for the block, then put back exactly what was there."""
    missing = object()
    saved = {k: live.app.config.get(k, missing) for k in values}
    live.app.config.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is missing:
                live.app.config.pop(key, None)
            else:
                live.app.config[key] = old


def _sent_openids(live: Live, appid: str) -> list[str]:
    return [m["touser"] for m in live.sim_state(appid)["template_messages"]]


def _statuses(live: Live, cid: int) -> dict[str, int]:
    def q() -> dict[str, int]:
        rows = db.session.execute(
            sa.select(Delivery.status, sa.func.count())
            .where(Delivery.campaign_id == cid)
            .group_by(Delivery.status)
        )
        return {s.value: n for s, n in rows}

    return live.in_app(q)


def _state(live: Live, cid: int) -> CampaignState:
    return live.scalar(sa.select(Campaign.state).where(Campaign.id == cid))


def _tick_until_done(live: Live, cid: int, timeout: float = 120) -> None:
    """The cron job's work (recover, resume, re-queue), run here until the campaign completes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(live, cid) is S.completed:
            return
        live.in_app(lambda: recovery.recover(older_than=0) and None)
        live.in_app(lambda: recovery.kick(cid))
        time.sleep(1)
    raise AssertionError(f"campaign not completed: {_statuses(live, cid)}")


def _exactly_once(live: Live, cid: int, appid: str, count: int) -> dict[str, int]:
    sent = _sent_openids(live, appid)
    dupes = [o for o, n in Counter(sent).items() if n > 1]
    assert dupes == [], f"sent twice: {dupes[:5]}"
    statuses = _statuses(live, cid)
    assert sum(statuses.values()) == count and statuses.get("pending", 0) == 0
    # Every row is accounted for; unknown ones may or may not have reached WeChat.
    assert statuses["sent"] <= len(sent) <= statuses["sent"] + statuses.get("unknown", 0)
    return statuses


def _sending_rows(live: Live) -> dict[int, str]:
    """Rows ``sending`` now, under their claims: id -> claim."""
    rows = live.in_app(
        lambda: db.session.execute(
            sa.select(Delivery.id, Delivery.claim).where(Delivery.status == DeliveryStatus.sending)
        ).all()
    )
    return {i: c for i, c in rows if c}


def test_sigkilled_worker_mid_batch_loses_and_duplicates_nothing(live: Live) -> None:
    # The stack's own worker stops first: only our two, so we know whom we kill.
    helpers.stop(live.procs["worker"])
    cid, appid = _setup(live, 600, rate=60)
    # Every send takes WeChat 150 ms: a worker is inside a chunk (most likely inside a request)
    # nearly all the time, so the kill lands mid-chunk.
    helpers.set_messaging(live.sim, appid, latency_ms=150)
    workers = [live.start("w1", "worker"), live.start("w2", "worker")]
    live.wait_for(lambda: len(_sent_openids(live, appid)) >= 40, 60, "sending to start")
    live.wait_for(lambda: _statuses(live, cid).get("sending", 0) >= 2, 30, "rows mid-chunk")

    conn = redis.Redis.from_url(live.env["REDIS_URL"])

    def mid_chunk() -> tuple[Any, list[str], dict[int, str]] | None:
        # A worker whose current job holds a claim on rows now `sending`: killed there, its job
        # dies mid-chunk for sure (another worker may be idle, or between claims).
        sending = _sending_rows(live)
        for w in Worker.all(connection=conn):
            job_id = w.get_current_job_id()
            claim = conn.get(f"tm:batch-claim:{job_id}") if job_id else None
            rows = {i: c for i, c in sending.items() if claim and c == claim.decode()}
            proc = next((p for p in workers if p.pid == w.pid), None)
            if rows and proc is not None:
                horses = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
                if horses.stdout.split():
                    return proc, horses.stdout.split(), rows
        return None

    # The worker and its work horse (RQ forks one per job), at once: a SIGKILL leaves no chance
    # to clean up. The horse's pid is read first — once its parent is dead it is re-parented and
    # `pkill -P` would no longer find it.
    a, horses, at_kill = live.wait_for(mid_chunk, 30, "a worker mid-chunk")
    os.kill(a.pid, signal.SIGKILL)
    for pid in horses:
        os.kill(int(pid), signal.SIGKILL)
    # Its rows stay `sending` under its claim until the claim's lease runs out; then they are the
    # dead job's, for recovery to resolve.
    stuck = live.wait_for(
        lambda: {} if conn.exists(f"tm:lease:{next(iter(at_kill.values()))}") else at_kill,
        sender.LEASE_SECONDS + 15,
        "the dead job's lease to run out",
    )
    live.start("w3", "worker")
    _tick_until_done(live, cid)
    statuses = _exactly_once(live, cid, appid, 600)
    assert statuses["sent"] >= 600 - sender.CHUNK
    resolved = dict(
        live.in_app(
            lambda: db.session.execute(
                sa.select(Delivery.id, Delivery.status).where(Delivery.id.in_(list(stuck)))
            ).all()
        )
    )
    assert set(resolved.values()) <= {DeliveryStatus.sent, DeliveryStatus.unknown}, resolved
    sent = Counter(_sent_openids(live, appid))
    openids = dict(
        live.in_app(
            lambda: db.session.execute(
                sa.select(Delivery.id, Delivery.openid).where(Delivery.id.in_(list(stuck)))
            ).all()
        )
    )
    for did, status in resolved.items():
        # Sent: WeChat got it exactly once. Unknown: the request was in flight when the job died
        # (it may or may not have arrived); it was never sent again.
        if status is DeliveryStatus.sent:
            assert sent[openids[did]] == 1, did
        else:
            assert sent[openids[did]] <= 1, did


def test_recovery_resolves_planted_stuck_rows_from_their_marks(live: Live) -> None:
    """Rows a dead job left `sending`, each with the Redis mark its job would have left: recovery
    resends only what surely never left, and records what WeChat answered for the rest."""
    helpers.stop(live.procs["worker"])  # nothing sends until the rows are planted
    cid, appid = _setup(live, 60, rate=0)
    conn = redis.Redis.from_url(live.env["REDIS_URL"])
    run_id = str(conn.info("server")["run_id"])[:40]
    dead, alive, other_redis = f"{run_id}:dead", f"{run_id}:alive", "0" * 40 + ":before-restart"

    def plant() -> dict[str, list[tuple[int, str]]]:
        rows = db.session.execute(
            sa.select(Delivery.id, Delivery.openid, Delivery.subscriber_id)
            .where(Delivery.campaign_id == cid)
            .order_by(Delivery.id)
        ).all()
        groups = {
            "no_mark": rows[0:8],
            "released": rows[8:12],
            "sent": rows[12:16],
            "in_flight": rows[16:20],
            "refused": rows[20:23],
            "failed": rows[23:25],
            "lost_with_redis": rows[25:29],
            "alive": rows[29:33],
        }
        campaign = db.session.get(Campaign, cid)
        template_id = db.session.scalar(
            sa.select(CampaignAccount.template_id).where(CampaignAccount.campaign_id == cid)
        )
        api = sender.client(services.account_ids_of(cid)[0], {})
        marks: dict[str, str] = {}
        for name, group in groups.items():
            claim = {"alive": alive, "lost_with_redis": other_redis}.get(name, dead)
            db.session.execute(
                sa.update(Delivery)
                .where(Delivery.id.in_([r.id for r in group]))
                .values(
                    status=DeliveryStatus.sending,
                    claim=claim,
                    claimed_at=utcnow() - timedelta(minutes=1),
                    attempts=1,
                )
            )
            for r in group:
                if name in ("sent", "in_flight", "lost_with_redis"):
                    # These reached WeChat before the job died (through the real send path).
                    out = sender.send_one(
                        api, campaign.kind, sender.message_body(campaign, template_id, r, None)
                    )
                    assert out.status is DeliveryStatus.sent, out
                    mark = f"ok:{out.msgid}" if name == "sent" else "s"
                else:
                    mark = {"released": "r", "refused": "k:43004", "failed": "f:47003"}.get(name, "")
                if mark:
                    marks[f"tm:dm:{r.id}"] = mark
        db.session.commit()
        if marks:
            conn.mset(marks)
        conn.set(f"tm:lease:{alive}", 1, ex=60)  # that job is still running
        return {name: [(r.id, r.openid) for r in group] for name, group in groups.items()}

    groups = live.in_app(plant)
    before = Counter(_sent_openids(live, appid))
    counts = live.in_app(lambda: recovery.recover(older_than=0))
    assert counts == {"pending": 12, "sent": 4, "unknown": 8, "skipped": 3, "failed": 2}, counts

    def status_of(ids: list[int]) -> dict[int, tuple[DeliveryStatus, int | None]]:
        return dict(
            (i, (st, code))
            for i, st, code in live.in_app(
                lambda: db.session.execute(
                    sa.select(Delivery.id, Delivery.status, Delivery.errcode).where(Delivery.id.in_(ids))
                ).all()
            )
        )

    alive_ids = [i for i, _ in groups["alive"]]
    assert {st for st, _ in status_of(alive_ids).values()} == {DeliveryStatus.sending}  # left alone
    conn.delete(f"tm:lease:{alive}")  # now that job is dead too
    live.start("w1", "worker")
    _tick_until_done(live, cid)
    sent = Counter(_sent_openids(live, appid))
    for name, group in groups.items():
        for did, openid in group:
            status, errcode = status_of([did])[did]
            expected = {
                "no_mark": (DeliveryStatus.sent, 1),
                "released": (DeliveryStatus.sent, 1),
                "alive": (DeliveryStatus.sent, 1),
                "sent": (DeliveryStatus.sent, 1),  # recorded from its mark, never resent
                "in_flight": (DeliveryStatus.unknown, 1),
                "lost_with_redis": (DeliveryStatus.unknown, 1),
                "refused": (DeliveryStatus.skipped, 0),
                "failed": (DeliveryStatus.failed, 0),
            }[name]
            assert (status, sent[openid]) == expected, (name, did, status, sent[openid])
            if name in ("refused", "failed"):
                assert errcode == (43004 if name == "refused" else 47003)
    planted = {o for g in groups.values() for _, o in g}
    assert all(n == 1 for o, n in sent.items() if o not in planted)  # the rest: once each
    assert sum(before.values()) == 12 and _exactly_once(live, cid, appid, 60)["sent"] == 60 - 8 - 5


def test_duplicate_jobs_and_pause_resume_race(live: Live) -> None:
    from rq import Queue

    from templates_msg import jobs

    cid, appid = _setup(live, 400, rate=80, batch_size=400)
    live.start("w1", "worker")
    live.start("w2", "worker")
    queue = Queue("default", connection=redis.Redis.from_url(live.env["REDIS_URL"]))
    for _ in range(3):  # the same batch queued three more times, run by three workers at once
        queue.enqueue(jobs.send_batch, cid, live.in_app(lambda: services.account_ids_of(cid)[0]), 0)
    live.wait_for(lambda: len(_sent_openids(live, appid)) >= 80, 60, "sending to start")
    live.in_app(lambda: (services.pause(cid, None), db.session.commit()))
    time.sleep(1.0)  # within a chunk every job sees the pause
    frozen = len(_sent_openids(live, appid))
    time.sleep(1.5)
    assert len(_sent_openids(live, appid)) == frozen < 400
    live.in_app(lambda: (services.resume(cid, None), db.session.commit()))
    live.in_app(lambda: (services.pause(cid, None), db.session.commit()))  # and again, racing
    live.in_app(lambda: (services.resume(cid, None), db.session.commit()))
    _tick_until_done(live, cid)
    assert _exactly_once(live, cid, appid, 400)["sent"] == 400


def test_rate_holds_with_four_workers(live: Live) -> None:
    rate = 40
    cid, appid = _setup(live, 400, rate=rate, batch_size=100)
    for i in range(3):
        live.start(f"w{i}", "worker")  # four with the stack's own
    _tick_until_done(live, cid)
    times = sorted(m["at"] for m in live.sim_state(appid)["template_messages"])
    assert len(times) == 400
    elapsed = times[-1] - times[0]
    assert (400 - rate) / elapsed <= rate * 1.1, f"{400 / elapsed:.1f}/s over {elapsed:.1f}s"
    peak = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert peak <= 2 * rate + 2  # a one-second burst, then the rate


def test_45009_pauses_then_resumes_by_itself(live: Live) -> None:
    # The quota is set before planning: set after, the workers may already have sent a few.
    cid, appid = _setup(live, 300, rate=0, daily_quota=120, reset_counters=True)
    live.wait_for(
        lambda: live.scalar(
            sa.select(CampaignAccount.pause_reason).where(CampaignAccount.campaign_id == cid)
        ),
        60,
        "the 45009 pause",
    )
    time.sleep(1)
    assert _statuses(live, cid) == {"sent": 120, "pending": 180} and _state(live, cid) is S.sending
    # Midnight in the account's timezone: WeChat's quota resets and the pause ends.
    helpers.set_messaging(live.sim, appid, daily_quota=0, reset_counters=True)

    def midnight() -> None:
        db.session.execute(
            sa.update(CampaignAccount)
            .where(CampaignAccount.campaign_id == cid)
            .values(paused_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()

    live.in_app(midnight)
    live.in_app(recovery.tick)  # the cron job
    live.wait_for(lambda: _state(live, cid) is S.completed, 60, "completion")
    assert _exactly_once(live, cid, appid, 300)["sent"] == 300


def test_private_redis_restart_mid_campaign(live: Live, tmp_path: Any) -> None:
    from wechat_service.app import create_app

    port = helpers.free_port()

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=port) as probe:
                    probe.ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    server = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    env = {**live.env, "REDIS_URL": url}
    private = Live(
        live.base, live.sim, env, create_app({**_app_overrides(live), "REDIS_URL": url}), live.logs
    )
    try:
        cid, appid = _setup(private, 500, rate=100)
        live.procs["w-private"] = private.start("w-private", "worker")
        private.wait_for(lambda: len(_sent_openids(private, appid)) >= 100, 60, "sending")
        server.kill()
        server.wait()
        server = start_redis()  # empty: queues, marks and leases are gone
        live.procs["w-private2"] = private.start("w-private2", "worker")
        _tick_until_done(private, cid)
        statuses = _exactly_once(private, cid, appid, 500)
        assert statuses["sent"] >= 500 - 2 * sender.CHUNK
    finally:
        server.kill()
        server.wait()
        from wechat_service.extensions import db

        with private.app.app_context():  # the private app's pool would otherwise leak connections
            for engine in db.engines.values():
                engine.dispose()
        private.app.extensions["redis"].close()


def _app_overrides(live: Live) -> dict[str, Any]:
    env = live.env
    return {
        "DATABASE_URL": env["DATABASE_URL"],
        "SECRET_KEY": env["WECHAT_SERVICE_SECRET_KEY"],
        "MASTER_KEY": env["WECHAT_SERVICE_MASTER_KEY"],
        "WECHAT_API_BASE": env["WECHAT_SERVICE_WECHAT_API_BASE"],
        "PUBLIC_BASE_URL": env["WECHAT_SERVICE_PUBLIC_BASE_URL"],
        "INSTANCE_PATH": env["WECHAT_SERVICE_INSTANCE_PATH"],
    }


def test_reports_come_back_through_the_callback_endpoint(live: Live) -> None:
    fields, _ = live.create_account("safe")
    appid = fields["appid"]
    mix = {"success": 2, "failed:user block": 1, "failed: system failed": 1, "failed:freq limit": 1}
    helpers.set_messaging(live.sim, appid, report_mix=mix)

    def make() -> int:
        account = account_services.account_by_appid(appid)
        helpers.seed_campaign_account(live.sim, account.id, appid, 200, "oR" + appid[-6:])
        campaign = services.create_campaign(
            None, [account.id], "TPL_PROMO", {"name": "r", "data": {"first": "hi"}, "rate": 0}
        )
        services.transition(campaign.id, S.draft, S.pending_approval)
        services.transition(campaign.id, S.pending_approval, S.scheduled)
        db.session.commit()
        recovery.start(campaign.id)
        return campaign.id

    cid = live.in_app(make)
    _tick_until_done(live, cid)

    def reported() -> int:
        live.in_app(lambda: (recovery.tick(), None))
        return (
            live.scalar(
                sa.select(sa.func.count()).where(Delivery.campaign_id == cid, Delivery.report.is_not(None))
            )
            == 200
        )

    live.wait_for(reported, 60, "every report")
    got = dict(
        live.in_app(
            lambda: db.session.execute(
                sa.select(Delivery.report_raw, sa.func.count())
                .where(Delivery.campaign_id == cid)
                .group_by(Delivery.report_raw)
            ).all()
        )
    )
    sent_mix = requests.get(f"{live.sim}/_sim/accounts/{appid}/messaging", timeout=5).json()["reports_sent"]
    assert got == sent_mix
