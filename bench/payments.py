"""Payment notification throughput (WeChat Pay v3 and v2, Alipay) against a baseline measured in
the same run.

Starts gunicorn (same settings) for the service and for a bare Flask view that commits one row
insert. Drives with wrk, for each provider:
  * distinct orders: one signed (v3: and encrypted) notification per order;
  * a duplicate storm: one order's notification sent over and over.
Prints req/s, ratios, and the effects counted in the database (exactly one payment row and one
fulfilment per order).

Usage: .venv/bin/python -m bench.payments [--orders 3000] [--seconds 8]
Needs PostgreSQL and Redis on 127.0.0.1 and wrk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.callbacks import PG, REDIS, gunicorn, recreate_db, wrk  # noqa: E402
from tests.helpers import free_port, wait_http  # noqa: E402

LUA = r"""
local counter = 0
setup = function(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local reqs = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local path, hdrs, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    for k, v in hdrs:gmatch("([^|:]+):([^|]*)") do headers[k] = v end
    reqs[#reqs + 1] = wrk.format("POST", path, headers, body)
  end
  i = tid * math.floor(#reqs / 2)
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1500, help="orders per provider")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    opts = parser.parse_args()

    from cryptography.fernet import Fernet

    tmp = Path(tempfile.mkdtemp(prefix="bench-pay-"))
    db_url = recreate_db()
    sim_port, svc_port, base_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS,
        "PYTHONPATH": str(ROOT),
        "BENCH_DATABASE_URL": db_url.replace("postgresql://", "postgresql+psycopg://"),
        "BENCH_REDIS_URL": REDIS,
        "WECHAT_SERVICE_SECRET_KEY": "b" * 48,
        "WECHAT_SERVICE_MASTER_KEY": Fernet.generate_key().decode(),
        "WECHAT_SERVICE_INSTANCE_PATH": str(tmp / "instance"),
        "WECHAT_SERVICE_WECHATPAY_API_BASE": f"http://127.0.0.1:{sim_port}/wechatpay",
        "WECHAT_SERVICE_ALIPAY_GATEWAY": f"http://127.0.0.1:{sim_port}/alipay/gateway.do",
        "WECHAT_SERVICE_PUBLIC_BASE_URL": f"http://127.0.0.1:{svc_port}",
    }
    os.environ.update(env)
    sim = subprocess.Popen(
        [sys.executable, "-m", "wechat_service.cli", "simulator", "--port", str(sim_port)],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers = {
        "service": gunicorn("wsgi:app", svc_port, opts.workers, env),
        "baseline": gunicorn("bench.baselines:commit_one()", base_port, opts.workers, env),
    }
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/health", sim)
        sim_base = f"http://127.0.0.1:{sim_port}"
        setup = _setup(sim_base, opts.orders)
        for name, port in (("service", svc_port), ("baseline", base_port)):
            wait_http(f"http://127.0.0.1:{port}/", servers[name])
        lua = tmp / "notify.lua"
        lua.write_text(LUA)
        base = tmp / "base.txt"
        files: dict[str, Path] = {}
        for provider, (merchant_id, trade_nos) in setup.items():
            path = NOTIFY_PATHS[provider].format(merchant_id)
            notes = [NOTES[provider](sim_base, no) for no in trade_nos]
            files[f"{provider}:distinct"], files[f"{provider}:storm"] = (
                tmp / f"{provider}-d.txt",
                tmp / f"{provider}-s.txt",
            )
            _write(files[f"{provider}:distinct"], path, notes)
            _write(files[f"{provider}:storm"], path, [notes[0]] * 200)
            if provider == "v3":
                _write(base, "/commit-one", notes[:200])
        wrk(f"http://127.0.0.1:{base_port}", lua, base, 2, 16)  # warm
        figures = {"baseline": wrk(f"http://127.0.0.1:{base_port}", lua, base, opts.seconds, 16)}
        for key, reqs in files.items():
            figures[key] = wrk(f"http://127.0.0.1:{svc_port}", lua, reqs, opts.seconds, 16)
        with psycopg.connect(db_url) as conn:
            payments = conn.execute("select count(*) from payment_transactions").fetchone()[0]
            distinct_orders = conn.execute(
                "select count(distinct intent_id) from payment_transactions"
            ).fetchone()[0]
            fulfilments = conn.execute("select count(*) from fulfilments").fetchone()[0]
            paid = conn.execute("select count(*) from orders where status <> 'pending_payment'").fetchone()[0]
    finally:
        for proc in [*servers.values(), sim]:
            proc.terminate()
        for proc in [*servers.values(), sim]:
            proc.wait(timeout=15)
    print(
        f"gunicorn: {opts.workers} sync workers; wrk -t2 -c16 -d{opts.seconds}s; "
        f"{os.cpu_count()} cores shared"
    )
    print(f"{'target':<46}{'req/s':>9}{'vs baseline':>13}")
    labels = {"baseline": "bare view: one committed insert"}
    for provider in NOTIFY_PATHS:
        labels[f"{provider}:distinct"] = f"{provider} notifications, distinct orders"
        labels[f"{provider}:storm"] = f"{provider} notifications, one order's duplicates"
    for key, label in labels.items():
        print(f"{label:<46}{figures[key]:>9.0f}{figures[key] / figures['baseline']:>13.2f}")
    print(
        f"effects: {payments} payment rows for {distinct_orders} orders, {fulfilments} fulfilments, "
        f"{paid} orders paid (of {3 * opts.orders} notified at most once each plus the storms)"
    )


NOTIFY_PATHS = {
    "v3": "/payments/wechatpay/v3/{}/notify",
    "v2": "/payments/wechatpay/v2/{}/notify",
    "alipay": "/payments/alipay/{}/notify",
}
PROVIDERS = {"v3": "wechatpay_v3", "v2": "wechatpay_v2", "alipay": "alipay"}


def _setup(sim_base: str, n: int) -> dict[str, tuple[int, list[str]]]:
    from flask_migrate import upgrade

    from accounts import services
    from accounts.subscribers import touch
    from payments import services as payments
    from store import catalogue, orders
    from store import services as store_services
    from tests.helpers import account_fields, register_alipay, register_merchant, register_wechatpay_v2
    from wechat_service.app import create_app
    from wechat_service.extensions import db

    app = create_app()
    with app.app_context():
        upgrade()
        from bench.baselines import metadata

        metadata.create_all(db.engine)
        fields = account_fields("plain", kind="mini_program")
        account = services.add_account(**fields)
        merchants = {
            "v3": register_merchant(sim_base, account.id)["merchant"],
            "v2": register_wechatpay_v2(sim_base, account.id, sign_type="HMAC-SHA256")["merchant"],
            "alipay": register_alipay(sim_base, account.id)["alipay_merchant"],
        }
        product = catalogue.add_product(
            account_id=account.id, code="v", name="voucher", kind="voucher", price_fen=990
        )
        sub = touch(account.id, "oBENCHPAY", None)
        store_services.bind_phone(account.id, sub.id, "13800142000", method="sms")
        db.session.commit()
        out = {}
        for key, merchant in merchants.items():
            trade_nos = []
            for i in range(n):
                order = orders.create_order(
                    account.id, sub.id, product.id, f"bench-{key}-{i:06d}", PROVIDERS[key]
                )
                pay = payments.prepay(order, "oBENCHPAY", "voucher")
                db.session.commit()
                if key == "alipay":
                    requests.get(pay["url"], timeout=10)  # the buyer opens the wap pay page
                trade_nos.append(order.out_trade_no)
            out[key] = (merchant.id, trade_nos)
        db.engine.dispose()
    redis.Redis.from_url(REDIS).flushdb()
    return out


def _note(sim_base: str, out_trade_no: str) -> tuple[dict[str, str], str]:
    note = requests.post(
        f"{sim_base}/_sim/wechatpay/pay", json={"out_trade_no": out_trade_no, "deliver": False}, timeout=10
    ).json()
    return note["headers"], note["body"]


def _note_v2(sim_base: str, out_trade_no: str) -> tuple[dict[str, str], str]:
    body = requests.post(
        f"{sim_base}/_sim/wechatpay/v2/pay", json={"out_trade_no": out_trade_no, "deliver": False}, timeout=10
    ).json()["body"]
    return {"Content-Type": "text/xml"}, body


def _note_alipay(sim_base: str, out_trade_no: str) -> tuple[dict[str, str], str]:
    from urllib.parse import urlencode

    form = requests.post(
        f"{sim_base}/_sim/alipay/pay", json={"out_trade_no": out_trade_no, "deliver": False}, timeout=10
    ).json()["form"]
    return {"Content-Type": "application/x-www-form-urlencoded"}, urlencode(form)


NOTES = {"v3": _note, "v2": _note_v2, "alipay": _note_alipay}


def _write(path: Path, url_path: str, notes: list[tuple[dict[str, str], str]]) -> None:
    with open(path, "w") as fh:
        for headers, body in notes:
            hdrs = "|".join(f"{k}:{v}" for k, v in headers.items())
            fh.write(f"{url_path}\t{hdrs}\t{body}\n")


if __name__ == "__main__":
    _ = PG
    main()
