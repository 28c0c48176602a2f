"""Metrics benchmark: 50 accounts × 3 years of synthetic ledgers (~5 million rows) on PostgreSQL.

Prints the full rebuild time, one 10-minute incremental refresh, and dashboard/API latency p50/p95,
each with a baseline measured in the same run: the rebuild against one sequential scan of every
ledger it reads, the refresh against one committed single-row insert, the pages against /healthz
through the same client. Run: ``.venv/bin/python -m bench.metrics`` (needs the local PostgreSQL
and Redis; uses the database ``ws_bench_metrics`` and Redis database 9).
"""

# SQL here is built from this file's own constants; the long lines are SQL.
# ruff: noqa: E501, S608
from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cryptography.fernet import Fernet

PG = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
DB = os.environ.get("BENCH_DB_NAME", "ws_bench_metrics")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
ACCOUNTS = 50
SUBSCRIBERS = 1_000_000
EVENTS = 4_200_000
INQUIRIES = 300_000
ORDERS = 200_000
REFUNDS = 20_000
START = datetime(2023, 11, 22, tzinfo=UTC)
END = datetime(2026, 11, 21, tzinfo=UTC)
SPAN_S = int((END - START).total_seconds())


def _timed(label: str, fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    print(f"  {label}: {took:.1f} s", flush=True)
    return took


def generate(conn: psycopg.Connection, sealed_secret: str) -> dict[str, int]:
    """The ledgers, written by INSERT … SELECT generate_series (seconds, not hours)."""
    s = f"TIMESTAMPTZ '{START.isoformat()}'"
    steps = [
        (
            "org units",
            """INSERT INTO org_units (id, code, name, kind, parent_id, created_at)
            SELECT 1, 'grp', 'Group', 'group', NULL, now()
            UNION ALL SELECT 1 + p, 'p' || p, 'Province ' || p, 'province', 1, now() FROM generate_series(1, 5) p
            UNION ALL SELECT 10 + c, 'c' || c, 'City ' || c, 'city', 2 + (c - 1) % 5, now() FROM generate_series(1, 10) c""",
        ),
        (
            "accounts",
            f"""INSERT INTO accounts (id, name, kind, appid, app_secret, message_mode, status, timezone,
            org_unit_id, config_version, created_at, updated_at)
            SELECT a, 'Account ' || a, 'service', 'wxbench' || lpad(a::text, 6, '0'), '{sealed_secret}', 'plain', 'active',
                   'Asia/Shanghai', 11 + (a - 1) % 10, 1, now(), now() FROM generate_series(1, {ACCOUNTS}) a""",
        ),
        (
            "subscribers",
            f"""INSERT INTO subscribers (id, account_id, openid, following, created_at)
            SELECT i, 1 + i % {ACCOUNTS}, 'o' || i, true, now() FROM generate_series(1, {SUBSCRIBERS}) i""",
        ),
        (
            "subscriber events",
            f"""INSERT INTO subscriber_events (id, account_id, subscriber_id, kind, occurred_at,
            recorded_at, detail)
            SELECT i, 1 + sid % {ACCOUNTS}, sid,
                   (ARRAY['follow','follow','follow','follow','unfollow','message','click','view','scan','location'])[1 + i % 10],
                   {s} + make_interval(secs => (i::float8 / {EVENTS}) * {SPAN_S}),
                   {s} + make_interval(secs => (i::float8 / {EVENTS}) * {SPAN_S} + 1), '{{}}'
            FROM (SELECT i, 1 + (i::bigint * 7919) % {SUBSCRIBERS} AS sid FROM generate_series(1, {EVENTS}) i) g""",
        ),
        (
            "inquiries",
            f"""INSERT INTO inquiries (id, account_id, subscriber_id, kind, source, outcome, at)
            SELECT i, 1 + sid % {ACCOUNTS}, sid, (ARRAY['balance','data','bill','points'])[1 + i % 4], 'chat',
                   (ARRAY['answered','answered','cached','deferred','failed'])[1 + i % 5],
                   {s} + make_interval(secs => (i::float8 / {INQUIRIES}) * {SPAN_S})
            FROM (SELECT i, 1 + (i::bigint * 104729) % {SUBSCRIBERS} AS sid FROM generate_series(1, {INQUIRIES}) i) g""",
        ),
        (
            "products",
            f"""INSERT INTO products (id, account_id, code, name, kind, price_fen, face_value_fen, enabled,
            created_at) SELECT a, a, 'topup', 'Top-up', 'topup', 5000, 5000, true, now()
            FROM generate_series(1, {ACCOUNTS}) a""",
        ),
        (
            "orders",
            f"""INSERT INTO orders (id, account_id, subscriber_id, product_id, client_key, out_trade_no,
            amount_fen, phone, provider, status, discount_fen, created_at, paid_at)
            SELECT i, 1 + sid % {ACCOUNTS}, sid, 1 + sid % {ACCOUNTS}, 'k' || i, 'T' || i, 1000 + (i % 50) * 100,
                   'x', 'wechatpay_v3', 'fulfilled', 0, t, t + interval '20 seconds'
            FROM (SELECT i, 1 + (i::bigint * 15485863) % {SUBSCRIBERS} AS sid,
                         {s} + make_interval(secs => (i::float8 / {ORDERS}) * {SPAN_S}) AS t
                  FROM generate_series(1, {ORDERS}) i) g""",
        ),
        (
            "payment intents",
            """INSERT INTO payment_intents (id, account_id, provider, out_trade_no, amount_fen, refunded_fen,
            payer_id, purpose, state, provider_txn_id, created_at, expires_at, succeeded_at)
            SELECT id, account_id, 'wechatpay_v3', out_trade_no, amount_fen, 0, subscriber_id, 'order:' || id,
                   'succeeded', 'P' || id, created_at, created_at + interval '30 minutes', paid_at
            FROM orders""",
        ),
        (
            "order events",
            """INSERT INTO order_events (id, order_id, from_status, to_status, detail, at)
            SELECT id, id, 'pending_payment', 'paid', '{}', paid_at FROM orders""",
        ),
        (
            "payments",
            """INSERT INTO payment_transactions (id, account_id, intent_id, provider, kind, provider_txn_id,
            amount_fen, status, raw, created_at, moved_at)
            SELECT id, account_id, id, 'wechatpay_v3', 'payment', 'P' || id, amount_fen, 'SUCCESS', '{}', paid_at,
                   paid_at
            FROM orders""",
        ),
        (
            "refunds",
            f"""INSERT INTO payment_transactions (id, account_id, intent_id, provider, kind, provider_txn_id,
            amount_fen, status, raw, created_at, moved_at)
            SELECT {ORDERS} + id, account_id, id, 'wechatpay_v3', 'refund', 'R' || id, amount_fen / 2, 'SUCCESS',
                   '{{}}', paid_at + interval '35 days', paid_at + interval '35 days'
            FROM orders WHERE id % {ORDERS // REFUNDS} = 0""",
        ),
    ]
    for label, sql in steps:
        _timed(label, lambda sql=sql: conn.execute(sql))
    for table in (
        "org_units",
        "accounts",
        "subscribers",
        "subscriber_events",
        "inquiries",
        "products",
        "orders",
        "order_events",
        "payment_transactions",
    ):
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    conn.execute("VACUUM ANALYZE")
    counts = {}
    for table in ("subscriber_events", "inquiries", "orders", "order_events", "payment_transactions"):
        counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
    return counts


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DB}"')
    from wechat_service.app import create_app
    from wechat_service.extensions import db

    app = create_app(
        {
            "DATABASE_URL": f"{PG}/{DB}",
            "REDIS_URL": REDIS,
            "SECRET_KEY": "bench-" + "x" * 40,
            "MASTER_KEY": Fernet.generate_key().decode(),
            "INSTANCE_PATH": "/tmp/ws_bench_metrics",
        }
    )
    with app.app_context():
        db.create_all()
        from wechat_service.secrets import seal_secret

        sealed = seal_secret("bench-app-secret")
    print(f"generating {ACCOUNTS} accounts × 3 years of ledgers…", flush=True)
    with psycopg.connect(f"{PG}/{DB}", autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        t0 = time.perf_counter()
        counts = generate(conn, sealed)
        total = sum(counts.values())
        print(f"  {total:,} ledger rows ({counts}) in {time.perf_counter() - t0:.0f} s")
        # Baseline: one sequential scan of every ledger the rebuild reads.
        t0 = time.perf_counter()
        for table in counts:
            conn.execute(f"SELECT count(*), max(id) FROM {table}")
        scan = time.perf_counter() - t0

    from accounts.staff import create_user
    from metrics import rollups
    from metrics.models import MetricDaily, MetricWatermark
    from wechat_service.dbutil import upsert

    with app.app_context():
        app.extensions["redis"].delete(rollups.LOCK_KEY)
        t0 = time.perf_counter()
        written = rollups.rebuild(START.date() - timedelta(days=1), END.date() + timedelta(days=1))
        db.session.commit()
        rebuild = time.perf_counter() - t0
        rows = db.session.query(MetricDaily).count()
        # Steady state: every ledger read up to now.
        from metrics.registry import FEEDS

        marks = []
        for feed in FEEDS:
            q = db.select(db.func.max(feed.id_col))
            if feed.select_from is not None:
                q = q.select_from(feed.select_from)
            marks.append({"feed": feed.name, "last_id": db.session.scalar(q) or 0, "updated_at": END})
        upsert(MetricWatermark, marks, conflict=["feed"], update=["last_id"])
        db.session.commit()

    # Ten minutes of traffic at a busy hour: 3,000 subscriber events (some late, from yesterday),
    # 200 inquiries, 100 paid orders.
    now = datetime.now(UTC)
    with psycopg.connect(f"{PG}/{DB}", autocommit=True) as conn:
        conn.execute(f"""INSERT INTO subscriber_events (account_id, subscriber_id, kind, occurred_at, recorded_at, detail)
            SELECT 1 + sid % {ACCOUNTS}, sid, (ARRAY['follow','unfollow','message','click'])[1 + i % 4],
                   CASE WHEN i % 100 = 0 THEN now() - interval '1 day' ELSE now() - make_interval(secs => i % 600) END,
                   now() - make_interval(secs => i % 600), '{{}}'
            FROM (SELECT i, 1 + (i::bigint * 31) % {SUBSCRIBERS} AS sid FROM generate_series(1, 3000) i) g""")
        conn.execute(f"""INSERT INTO inquiries (account_id, subscriber_id, kind, source, outcome, at)
            SELECT 1 + i % {ACCOUNTS}, 1 + i % {ACCOUNTS}, 'balance', 'chat', 'answered', now()
            FROM generate_series(1, 200) i""")
        conn.execute("""INSERT INTO payment_transactions (account_id, intent_id, provider, kind, provider_txn_id,
            amount_fen, status, raw, created_at, moved_at)
            SELECT account_id, id, 'wechatpay_v3', 'payment', 'N' || id, amount_fen, 'SUCCESS', '{}', now(), now()
            FROM orders WHERE id <= 100""")
        # Baseline: one committed single-row insert.
        t0 = time.perf_counter()
        conn.execute(
            "INSERT INTO org_units (code, name, kind, created_at) VALUES ('bench', 'b', 'other', now())"
        )
        one_insert = time.perf_counter() - t0
    with app.app_context():
        t0 = time.perf_counter()
        with rollups.rollup_lock() as held:
            assert held
            report = rollups.refresh(now=now + timedelta(minutes=1))
            db.session.commit()
        incremental = time.perf_counter() - t0

        create_user("bench-admin", "a long enough password 1", is_admin=True)
        db.session.commit()
    from tests.console_helpers import Staff

    staff = Staff(app, "bench-admin")
    urls = {
        "baseline /healthz": "/healthz",
        "dashboard page": "/console/metrics",
        "account page (30 days)": "/console/metrics/accounts/7",
        "monthly report": "/console/metrics/report?month=2026-10",
        "API overview": "/api/v1/metrics/overview",
        "API account daily (1 year)": "/api/v1/metrics/accounts/7/daily?from=2025-11-01&to=2026-10-31&metric=follows&metric=gmv_fen",
        "API rankings (province, 1 year)": "/api/v1/metrics/rankings?metric=net_revenue_fen&level=province&from=2025-11-01&to=2026-10-31",
    }
    latencies = {}
    for label, url in urls.items():
        assert staff.get(url).status_code == 200, url
        samples = []
        for _ in range(40):
            t0 = time.perf_counter()
            resp = staff.get(url)
            samples.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200
        latencies[label] = percentiles(samples)

    print()
    print(
        f"ledgers: {total:,} rows over {ACCOUNTS} accounts, 3 years; rollups: {rows:,} rows ({written:,} written)"
    )
    print(
        f"full rebuild:          {rebuild:7.1f} s   = {rebuild / scan:5.1f} × one scan of every ledger ({scan:.2f} s)"
    )
    print(
        f"10-minute refresh:     {incremental * 1000:7.0f} ms  = {incremental / one_insert:5.0f} × one committed insert "
        f"({one_insert * 1000:.1f} ms); {report}"
    )
    base50 = latencies["baseline /healthz"][0]
    for label, (p50, p95) in latencies.items():
        print(f"{label:34s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  ({p50 / base50:5.1f} × baseline p50)")


if __name__ == "__main__":
    main()
