"""Shared test plumbing: databases, free ports, processes, account factories."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import requests
from cryptography.fernet import Fernet

from simulator.driver import Target

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Two test runs at once (a developer and CI, say) pick different names and numbers.
DB_NAME = os.environ.get("TEST_DB_NAME", "wechat_service_test")
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "14"))
LIVE_REDIS_DB = REDIS_DB - 1
MASTER_KEY = Fernet.generate_key().decode()
SECRET_KEY = "test-secret-" + secrets.token_hex(24)
BOSS_SECRET = "boss-" + secrets.token_hex(16)


def recreate_database(name: str) -> str:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG}/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wechat_service.cli", *args]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT))


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def new_appid() -> str:
    return "wx" + secrets.token_hex(8)


def account_fields(mode: str = "plain", **overrides: Any) -> dict[str, Any]:
    from wechat_service.wxcrypto import generate_aes_key

    fields = {
        "name": f"Test {mode}",
        "appid": new_appid(),
        "app_secret": secrets.token_hex(16),
        "original_id": "gh_" + secrets.token_hex(6),
        "token": "tok" + secrets.token_hex(6),
        "aes_key": generate_aes_key(),
        "message_mode": mode,
    }
    fields.update(overrides)
    return fields


def target_for(fields: dict[str, Any], callback_url: str) -> Target:
    return Target(
        appid=fields["appid"],
        token=fields["token"],
        aes_key=fields["aes_key"],
        mode=fields["message_mode"],
        callback_url=callback_url,
        original_id=fields["original_id"],
    )


def register_with_simulator(sim_base: str, fields: dict[str, Any], callback_url: str = "") -> None:
    resp = requests.post(
        f"{sim_base}/_sim/accounts",
        json={
            "appid": fields["appid"],
            "secret": fields["app_secret"],
            "token": fields.get("token") or "",
            "aes_key": fields.get("aes_key") or "",
            "mode": fields.get("message_mode", "plain"),
            "callback_url": callback_url,
            "original_id": fields.get("original_id") or "",
            "kind": fields.get("kind", "service"),
        },
        timeout=10,
    )
    resp.raise_for_status()


def run_checked(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def register_merchant(sim_base: str, account_id: int, refund_status: str = "SUCCESS") -> dict[str, Any]:
    """A WeChat Pay merchant for the account: our RSA key pair, the simulator's platform key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from payments import merchants as payments

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    mchid = str(1900000000 + secrets.randbelow(99999999))
    apiv3_key = secrets.token_hex(16)
    platform = requests.post(
        f"{sim_base}/_sim/wechatpay/merchants",
        json={
            "mchid": mchid,
            "public_key": public_pem,
            "apiv3_key": apiv3_key,
            "refund_status": refund_status,
        },
        timeout=10,
    ).json()
    merchant = payments.add_merchant(
        account_id,
        mchid=mchid,
        serial_no=secrets.token_hex(20).upper(),
        private_key=private_pem,
        apiv3_key=apiv3_key,
        platform_public_key=platform["platform_public_key"],
        platform_public_key_id=platform["platform_public_key_id"],
    )
    return {"merchant": merchant, "public_key": key.public_key(), "mchid": mchid}


def register_alipay(sim_base: str, account_id: int) -> dict[str, Any]:
    """An Alipay app for the account: our PKCS#1 key pair (the SDK's format), Alipay's public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from payments import merchants as payments

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    app_id, seller_id = f"2021{secrets.randbelow(10**12):012d}", f"2088{secrets.randbelow(10**12):012d}"
    answer = requests.post(
        f"{sim_base}/_sim/alipay/apps",
        json={"app_id": app_id, "public_key": public_pem, "seller_id": seller_id},
        timeout=10,
    ).json()
    merchant = payments.add_alipay_merchant(
        account_id,
        app_id=app_id,
        seller_id=seller_id,
        app_private_key=private_pem,
        alipay_public_key=answer["alipay_public_key"],
    )
    return {"alipay_merchant": merchant, "alipay_app_id": app_id, "seller_id": seller_id}


def register_wechatpay_v2(
    sim_base: str, account_id: int, sign_type: str = "MD5", refund_status: str = "SUCCESS"
) -> dict[str, Any]:
    """A WeChat Pay API v2 merchant for the account: one API key shared with the simulator."""
    from accounts.models import Account
    from payments import merchants as payments
    from wechat_service.extensions import db

    mchid = str(1600000000 + secrets.randbelow(99999999))
    api_key = secrets.token_hex(16)
    appid = db.session.get(Account, account_id).appid
    requests.post(
        f"{sim_base}/_sim/wechatpay/v2/merchants",
        json={"mchid": mchid, "api_key": api_key, "appid": appid, "refund_status": refund_status},
        timeout=10,
    ).raise_for_status()
    merchant = payments.add_wechatpay_v2_merchant(
        account_id, mchid=mchid, api_key=api_key, sign_type=sign_type
    )
    return {"merchant": merchant, "mchid": mchid, "api_key": api_key}


# -- campaigns (templates_msg) ---------------------------------------------------------------------

CAMPAIGN_TEMPLATE = {
    "template_id": "TPL_PROMO",
    "title": "流量包优惠通知",
    "content": "{{first.DATA}}\n套餐名称：{{keyword1.DATA}}\n优惠价格：{{keyword2.DATA}}\n{{remark.DATA}}",
    "example": "",
}


def seed_campaign_account(sim_base: str, account_id: int, appid: str, count: int, prefix: str) -> list[int]:
    """``count`` following subscribers in the database and the simulator, and the promo template
    synced; returns the subscribers' ids. (Call inside an app context; commits.)"""
    from datetime import UTC, datetime, timedelta

    from accounts.models import Subscriber
    from templates_msg import services
    from wechat_service.dbutil import upsert
    from wechat_service.extensions import db

    requests.post(
        f"{sim_base}/_sim/accounts/{appid}/templates", json={"templates": [CAMPAIGN_TEMPLATE]}, timeout=10
    ).raise_for_status()
    requests.post(
        f"{sim_base}/_sim/accounts/{appid}/followers", json={"count": count, "prefix": prefix}, timeout=60
    ).raise_for_status()
    now = datetime.now(UTC)
    rows = [
        {
            "account_id": account_id,
            "openid": f"{prefix}{i:08d}",
            "following": True,
            "first_followed_at": now - timedelta(days=30 + i % 100),
            "last_interaction_at": now - timedelta(days=i % 60),
            "created_at": now,
        }
        for i in range(count)
    ]
    for start in range(0, len(rows), 5000):
        upsert(Subscriber, rows[start : start + 5000], conflict=["account_id", "openid"])
    services.sync_templates(account_id)
    db.session.commit()
    return list(
        db.session.scalars(
            __import__("sqlalchemy")
            .select(Subscriber.id)
            .where(Subscriber.account_id == account_id)
            .order_by(Subscriber.id)
        )
    )


def set_messaging(sim_base: str, appid: str, **settings: Any) -> dict[str, Any]:
    resp = requests.put(f"{sim_base}/_sim/accounts/{appid}/messaging", json=settings, timeout=10)
    resp.raise_for_status()
    return resp.json()


def age_order(order: Any, by: Any) -> None:
    """Make an order and its payment intent look created ``by`` (a timedelta) ago (the intent's
    expiry follows), for the sweeps to find. Not committed."""
    import sqlalchemy as sa

    from payments.models import PaymentIntent
    from store.models import Order
    from store.orders import PAY_TIMEOUT
    from wechat_service.dbtypes import utcnow
    from wechat_service.extensions import db

    then = utcnow() - by
    db.session.execute(sa.update(Order).where(Order.id == order.id).values(created_at=then))
    db.session.execute(
        sa.update(PaymentIntent)
        .where(PaymentIntent.out_trade_no == order.out_trade_no)
        .values(created_at=then, expires_at=then + PAY_TIMEOUT)
    )
