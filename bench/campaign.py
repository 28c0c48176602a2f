"""Campaign dispatch against the simulator, with its baselines measured in the same run.

For each size (50,000 and 200,000 recipients, rate limit off):
  * planning time (recipients → delivery rows, keyset batches);
  * sends/s of N `wechat-service worker` processes vs a raw keep-alive HTTP loop in N processes
    posting the same template sends to the same simulator (rate measured the same way for both:
    the simulator's accepted count between 10 % and 90 % of the run);
  * peak RSS of any worker process (RQ's work horses included) — flat memory means the same for
    both sizes.
Then the report storm: TEMPLATESENDJOBFINISH callbacks for the sent messages through the real
callback endpoint (gunicorn) at twice the dispatch rate, with a probe of text-message callbacks
whose latency is compared with the same probe on an idle endpoint.

Usage: .venv/bin/python -m bench.campaign [--sizes 50000,200000] [--workers 2] [--storm 20000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.driver import Target, event_fields, message_xml, signed_request  # noqa: E402
from tests.helpers import free_port, wait_http  # noqa: E402

PG = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
DB_NAME = "wechat_service_bench_campaign"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wechat_service.cli", *args]


def recreate_db() -> str:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"{PG}/{DB_NAME}"


def accepted(sim: str, appid: str) -> int:
    return requests.get(f"{sim}/_sim/accounts/{appid}/messaging", timeout=10).json()["accepted"]


class Poller:
    """Samples the simulator's accepted count (and worker RSS) every 0.2 s."""

    def __init__(self, sim: str, appid: str, roots: list[int]) -> None:
        self.sim, self.appid, self.roots = sim, appid, roots
        self.samples: list[tuple[float, int]] = []
        self.peak_rss = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), accepted(self.sim, self.appid)))
            for pid in self.roots:
                try:
                    proc = psutil.Process(pid)
                    for p in [proc, *proc.children(recursive=True)]:
                        self.peak_rss = max(self.peak_rss, p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def rate(self, base: int, total: int) -> float:
        lo = next(t for t, n in self.samples if n - base >= total * 0.1)
        hi = next(t for t, n in self.samples if n - base >= total * 0.9)
        return total * 0.8 / (hi - lo)

    def wait(self, base: int, total: int, timeout: float = 3600, on_stall: Any = None) -> None:
        """Until everything is accepted. ``on_stall`` is what the cron tick would do when progress
        stops (jobs lost with Redis): without cron in the benchmark, it is called here."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][1] - base >= total:
                break
            current = self.samples[-1][1] if self.samples else -1
            if current != last:
                last, since = current, time.monotonic()
            elif on_stall is not None and time.monotonic() - since > 15:
                on_stall()
                since = time.monotonic()
            time.sleep(0.2)
        time.sleep(0.3)
        self.stop.set()
        self.thread.join()


def raw_sender(sim: str, token: str, openids: list[str], start_at: float) -> None:
    session = requests.Session()
    url = f"{sim}/wechat/cgi-bin/message/template/send"
    time.sleep(max(0.0, start_at - time.time()))
    for openid in openids:
        body = {"touser": openid, "template_id": "TPL_PROMO", "data": {"first": {"value": "hi"}}}
        session.post(url, params={"access_token": token}, data=json.dumps(body), timeout=10).json()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50000,200000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storm", type=int, default=20000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    n_workers = args.workers

    from flask_migrate import upgrade

    from accounts import services as account_services
    from templates_msg import services
    from templates_msg.models import CampaignState, Delivery
    from templates_msg.sending import planning, recovery
    from tests import helpers
    from wechat_service.app import create_app
    from wechat_service.dbtypes import utcnow
    from wechat_service.extensions import db

    tmp = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    db_url = recreate_db()
    redis.Redis.from_url(REDIS).flushdb()
    sim_port, web_port = free_port(), free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS,
        "WECHAT_SERVICE_SECRET_KEY": "bench-secret-" + "x" * 40,
        "WECHAT_SERVICE_MASTER_KEY": helpers.MASTER_KEY,
        "WECHAT_SERVICE_WECHAT_API_BASE": f"{sim}/wechat",
        "WECHAT_SERVICE_PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
        "WECHAT_SERVICE_INSTANCE_PATH": str(tmp),
        "WECHAT_SERVICE_CAMPAIGN_DAILY_QUOTA": "10000000",
    }
    logs = open(tmp / "procs.log", "ab")  # noqa: SIM115 - open for the whole run
    procs = [
        subprocess.Popen(
            cli("simulator", "--port", str(sim_port)), env=env, stdout=logs, stderr=logs, cwd=ROOT
        )
    ]
    wait_http(f"{sim}/_sim/health", procs[0])
    app = create_app(
        {
            "DATABASE_URL": db_url,
            "REDIS_URL": REDIS,
            "SECRET_KEY": env["WECHAT_SERVICE_SECRET_KEY"],
            "MASTER_KEY": helpers.MASTER_KEY,
            "WECHAT_API_BASE": f"{sim}/wechat",
            "PUBLIC_BASE_URL": env["WECHAT_SERVICE_PUBLIC_BASE_URL"],
            "INSTANCE_PATH": str(tmp),
            "CAMPAIGN_DAILY_QUOTA": 10_000_000,
        }
    )
    results = []
    try:
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"), revision="heads")
            for size in sizes:
                fields = helpers.account_fields("plain")
                account_services.add_account(**fields)
                db.session.commit()
                helpers.register_with_simulator(
                    sim, fields, f"http://127.0.0.1:{web_port}/wechat/{fields['appid']}/callback"
                )
                appid = fields["appid"]
                helpers.set_messaging(sim, appid, reports="off", record=False)
                account = account_services.account_by_appid(appid)
                prefix = "oB" + appid[-6:]
                helpers.seed_campaign_account(sim, account.id, appid, size, prefix)
                openids = [f"{prefix}{i:08d}" for i in range(size)]

                # Baseline: the raw keep-alive loop, same process count, same simulator.
                token = requests.post(
                    f"{sim}/wechat/cgi-bin/stable_token",
                    json={"grant_type": "client_credential", "appid": appid, "secret": fields["app_secret"]},
                    timeout=10,
                ).json()["access_token"]
                base = accepted(sim, appid)
                start_at = time.time() + 1.0
                raw = [
                    multiprocessing.Process(
                        target=raw_sender, args=(sim, token, openids[i::n_workers], start_at)
                    )
                    for i in range(n_workers)
                ]
                for p in raw:
                    p.start()
                poll = Poller(sim, appid, [p.pid for p in raw])
                poll.wait(base, size)
                for p in raw:
                    p.join()
                raw_rate, raw_rss = poll.rate(base, size), poll.peak_rss

                # The engine: plan here (timed), then N workers send.
                campaign = services.create_campaign(
                    None, [account.id], "TPL_PROMO", {"name": "bench", "data": {"first": "hi"}, "rate": 0}
                )
                for a, b in (
                    (CampaignState.draft, CampaignState.pending_approval),
                    (CampaignState.pending_approval, CampaignState.scheduled),
                    (CampaignState.scheduled, CampaignState.sending),
                ):
                    services.transition(
                        campaign.id, a, b, started_at=utcnow()
                    ) if b is CampaignState.sending else services.transition(campaign.id, a, b)
                db.session.commit()
                t0 = time.perf_counter()
                planning.plan(campaign.id)
                planning = time.perf_counter() - t0
                base = accepted(sim, appid)
                workers = [
                    subprocess.Popen(cli("worker", "default"), env=env, stdout=logs, stderr=logs, cwd=ROOT)
                    for _ in range(n_workers)
                ]
                poll = Poller(sim, appid, [w.pid for w in workers])
                poll.wait(base, size, on_stall=lambda cid=campaign.id: recovery.kick(cid))
                engine_rate, engine_rss = poll.rate(base, size), poll.peak_rss
                for w in workers:
                    w.terminate()
                for w in workers:
                    w.wait(30)
                sent = db.session.scalar(
                    __import__("sqlalchemy")
                    .select(__import__("sqlalchemy").func.count())
                    .where(Delivery.campaign_id == campaign.id, Delivery.status == "sent")
                )
                results.append(
                    {
                        "size": size,
                        "planning_s": round(planning, 2),
                        "planning_rows_per_s": round(size / planning),
                        "engine_sends_per_s": round(engine_rate),
                        "raw_sends_per_s": round(raw_rate),
                        "engine_vs_raw": round(engine_rate / raw_rate, 3),
                        "sent": sent,
                        "peak_worker_rss_mb": round(engine_rss / 2**20, 1),
                        "peak_raw_rss_mb": round(raw_rss / 2**20, 1),
                        "appid": appid,
                        "fields": fields,
                        "campaign_id": campaign.id,
                    }
                )
                print(json.dumps({k: v for k, v in results[-1].items() if k not in ("fields",)}), flush=True)

            # The report storm, through the real callback endpoint at twice the dispatch rate.
            last = results[-1]
            web = subprocess.Popen(
                cli("web", "--port", str(web_port), "--workers", "4"),
                env=env,
                stdout=logs,
                stderr=logs,
                cwd=ROOT,
            )
            procs.append(web)
            wait_http(f"http://127.0.0.1:{web_port}/healthz", web)
            f = last["fields"]
            target = Target(
                f["appid"],
                f["token"],
                f["aes_key"],
                "plain",
                f"http://127.0.0.1:{web_port}/wechat/{f['appid']}/callback",
                f["original_id"],
            )
            import sqlalchemy as sa

            rows = db.session.execute(
                sa.select(Delivery.openid, Delivery.msgid)
                .where(Delivery.campaign_id == last["campaign_id"])
                .order_by(Delivery.id)
                .limit(args.storm)
            ).all()
            db.session.commit()
            idle = probe(target, 200, None)
            storm_rate = 2 * min(r["engine_sends_per_s"] for r in results)
            done = threading.Event()
            probe_result: dict[str, list[float]] = {}
            prober = threading.Thread(target=lambda: probe_result.update(lat=probe(target, 10**6, done)))
            prober.start()
            achieved, errors = storm(target, rows, storm_rate, threads=32)
            done.set()
            prober.join()
            reported = db.session.scalar(
                sa.select(sa.func.count()).where(
                    Delivery.campaign_id == last["campaign_id"], Delivery.report.is_not(None)
                )
            )
            print(
                json.dumps(
                    {
                        "storm_target_per_s": storm_rate,
                        "storm_achieved_per_s": round(achieved),
                        "storm_errors": errors,
                        "reports_matched": reported,
                        "reports_sent": len(rows),
                        "probe_p50_ms_idle": pct(idle, 50),
                        "probe_p99_ms_idle": pct(idle, 99),
                        "probe_p50_ms_storm": pct(probe_result["lat"], 50),
                        "probe_p99_ms_storm": pct(probe_result["lat"], 99),
                    }
                ),
                flush=True,
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def pct(values: list[float], q: int) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q / 100))] * 1000, 1) if values else 0.0


def probe(target: Target, n: int, done: threading.Event | None) -> list[float]:
    """Text-message callbacks one after another (a subscriber chatting), their latencies."""
    session = requests.Session()
    out = []
    for i in range(n):
        if done is not None and done.is_set():
            break
        xml = message_xml(
            target,
            "oPROBE",
            event_fields("text", {"content": f"hi {i}"}, 7_000_000_000 + i + int(time.time() * 1000)),
        )
        args, body = signed_request(target, xml)
        t = time.perf_counter()
        session.post(target.callback_url, params=args, data=body, timeout=10)
        out.append(time.perf_counter() - t)
        time.sleep(0.02)
    return out


def storm(target: Target, rows: list, rate: float, threads: int) -> tuple[float, int]:
    """Open loop: report i is due at i / rate; threads take the next due report."""
    lock = threading.Lock()
    index = [0]
    errors = [0]
    start = time.perf_counter()

    def run() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = index[0]
                index[0] += 1
            if i >= len(rows):
                return
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            openid, msgid = rows[i]
            xml = message_xml(
                target, openid, event_fields("template_finish", {"msgid": msgid, "status": "success"}, msgid)
            )
            args, body = signed_request(target, xml)
            try:
                if session.post(target.callback_url, params=args, data=body, timeout=10).status_code != 200:
                    errors[0] += 1
            except requests.RequestException:
                errors[0] += 1

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(rows) / (time.perf_counter() - start), errors[0]


if __name__ == "__main__":
    main()
