"""The scripted demo behind `wechat-service run --demo`: three accounts, one per message mode,
simulated subscribers following, chatting, scanning a channel QR code, clicking the menu and
leaving. With ``check`` it verifies the replies and the ledger and returns the verdict.
"""

from __future__ import annotations

import secrets
from typing import Any

import requests

from accounts import menus, qrcodes, replies, services, subscribers
from accounts.models import ChannelQRCode
from accounts.subscribers import touch
from payments import merchants
from payments import services as payments
from store import catalogue, orders
from store import services as store
from store.models import Order, Product
from wechat_service.errors import NotFoundError
from wechat_service.extensions import db
from wechat_service.wxcrypto import generate_aes_key

DEMO_ACCOUNTS = [
    {
        "name": "Demo Guangdong (plain)",
        "appid": "wx0de7000000000001",
        "original_id": "gh_de7000000001",
        "message_mode": "plain",
        "org": "demo-gd",
    },
    {
        "name": "Demo Guangzhou (compatible)",
        "appid": "wx0de7000000000002",
        "original_id": "gh_de7000000002",
        "message_mode": "compatible",
        "org": "demo-gz",
    },
    {
        "name": "Demo Shenzhen (safe)",
        "appid": "wx0de7000000000003",
        "original_id": "gh_de7000000003",
        "message_mode": "safe",
        "org": "demo-sz",
    },
]
MENU = {
    "button": [
        {"type": "click", "name": "查余额", "key": "BALANCE"},
        {
            "name": "服务",
            "sub_button": [
                {"type": "click", "name": "套餐推荐", "key": "PLANS"},
                {"type": "view", "name": "网上营业厅", "url": "https://example.com/store"},
            ],
        },
    ]
}


def _setup_org() -> None:
    for code, name, kind, parent in (
        ("demo-group", "Demo Telecom", "group", None),
        ("demo-gd", "Guangdong", "province", "demo-group"),
        ("demo-gz", "Guangzhou", "city", "demo-gd"),
        ("demo-sz", "Shenzhen", "city", "demo-gd"),
    ):
        try:
            services.org_unit_by_code(code)
        except NotFoundError:
            services.add_org_unit(code, name, kind, parent)


def _setup_account(spec: dict[str, Any], sim_base: str) -> Any:
    try:
        account = services.account_by_appid(spec["appid"])
    except NotFoundError:

        account = services.add_account(
            name=spec["name"],
            appid=spec["appid"],
            app_secret=secrets.token_hex(16),
            original_id=spec["original_id"],
            token="demotoken" + spec["appid"][-1],
            aes_key=generate_aes_key(),
            message_mode=spec["message_mode"],
            org_unit_code=spec["org"],
        )
    if not replies.list_rules(account.id):
        _add_reply_rules(account.id, spec)
    db.session.commit()
    _register_with_simulator(sim_base, account)
    menus.save_menu(account.id, MENU)
    menus.publish_menu(account.id)
    if not db.session.scalar(
        services.scoped(ChannelQRCode, account.id).where(ChannelQRCode.scene == "store-001")
    ):
        qrcodes.create_channel_qrcode(
            account.id, name="Flagship store", scene="store-001", channel_type="store"
        )
    db.session.commit()
    return account


def _add_reply_rules(account_id: int, spec: dict[str, Any]) -> None:
    """The demo's welcome, balance, plans and default replies."""
    replies.add_rule(
        account_id,
        name="welcome",
        kind="welcome",
        reply={"content": f"欢迎关注{spec['name']}！回复「余额」查询话费余额。"},
    )
    replies.add_rule(
        account_id,
        name="balance",
        keywords=["余额", "BALANCE"],
        priority=10,
        reply={"content": "您的话费余额为 58.30 元（演示数据）。"},
    )
    replies.add_rule(
        account_id,
        name="plans",
        keywords=["套餐", "PLANS"],
        match_mode="contains",
        priority=5,
        reply_type="news",
        reply={
            "articles": [
                {"title": "5G 畅享套餐", "description": "每月 100GB", "url": "https://example.com/plans"}
            ]
        },
    )
    replies.add_rule(
        account_id,
        name="default",
        kind="default",
        reply={"content": "暂时没听懂，回复「余额」或「套餐」试试。"},
    )


def _register_with_simulator(sim_base: str, account: Any) -> None:
    """Tell the simulator the account's credentials, message mode and callback URL."""
    resp = requests.post(
        f"{sim_base}/_sim/accounts",
        json={
            "appid": account.appid,
            "secret": account.app_secret,
            "token": account.token,
            "aes_key": account.aes_key,
            "mode": account.message_mode.value,
            "callback_url": services.callback_url(account),
            "original_id": account.original_id,
            "kind": account.kind.value,
        },
        timeout=10,
    )
    resp.raise_for_status()


def _say(label: str, text: str) -> None:
    print(f"[demo] {label:<12} {text}", flush=True)


def _store_demo(sim_base: str, failures: list[str]) -> None:
    """Bind a phone by SMS code and ask for the remaining data, on the safe-mode account."""
    from flask import current_app


    spec = DEMO_ACCOUNTS[2]
    cfg = current_app.config
    requests.post(
        f"{sim_base}/_sim/boss/clients",
        json={"app_id": cfg["BOSS_APP_ID"], "secret": cfg["BOSS_SECRET"]},
        timeout=10,
    ).raise_for_status()
    account = services.account_by_appid(spec["appid"])
    store.enable_store(account.id, {"data": ["流量"], "points": ["积分"]})
    db.session.commit()
    carol, phone = "oDEMOc" + secrets.token_hex(8), f"1380013{secrets.randbelow(9000) + 1000}"

    def say(text: str) -> str:
        resp = requests.post(
            f"{sim_base}/_sim/accounts/{spec['appid']}/drive",
            json={"action": "text", "openid": carol, "content": text},
            timeout=30,
        )
        resp.raise_for_status()
        answer = (resp.json().get("reply") or {}).get("Content", "")
        _say("store", f"carol: {text} → {answer}")
        return answer

    checks = [("流量", "请先绑定"), (f"绑定 {phone}", "验证码已发送")]
    for text, expected in checks:
        if expected not in say(text):
            failures.append(f"store: {text!r} did not answer {expected!r}")
    code = requests.get(f"{sim_base}/_sim/boss/sms/{phone}", timeout=10).json()["code"]
    _say("store", f"the BOSS texted {phone[:3]}****{phone[-4:]} the code {code}")
    for text, expected in ((code, "绑定成功"), ("流量", "剩余流量"), ("积分", "当前积分")):
        if expected not in say(text):
            failures.append(f"store: {text!r} did not answer {expected!r}")


def _purchase_demo(sim_base: str, failures: list[str]) -> None:
    """A mini-program user buys a top-up with WeChat Pay; the BOSS carries it out."""
    account = _setup_mini_program(sim_base)
    _demo_merchant(sim_base, account.id)
    product = db.session.scalar(catalogue.visible_products(account.id).where(Product.code == "topup-50"))
    if product is None:
        product = catalogue.add_product(
            account_id=account.id,
            code="topup-50",
            name="50 元话费",
            kind="topup",
            price_fen=4980,
            face_value_fen=5000,
        )
    dave, phone = "oDEMOd" + secrets.token_hex(8), f"1390013{secrets.randbelow(9000) + 1000}"
    sub = touch(account.id, dave, None)
    store.bind_phone(account.id, sub.id, phone, method="mp")
    order = orders.create_order(
        account.id, sub.id, product.id, "demo-" + secrets.token_hex(8), "wechatpay_v3"
    )
    params = payments.prepay(order, dave, product.name)
    db.session.commit()
    _say("pay", f"dave orders {product.name} for {order.amount_fen / 100:.2f} 元: {params['package']}")
    before = requests.get(f"{sim_base}/_sim/boss/lines/{phone}", timeout=10).json()["balance_fen"]
    paid = requests.post(
        f"{sim_base}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "copies": 3, "concurrent": True},
        timeout=30,
    ).json()
    _say("pay", f"WeChat Pay notified 3 times at once → HTTP {paid['statuses']}")
    status = _wait_for_order(order.id)
    after = requests.get(f"{sim_base}/_sim/boss/lines/{phone}", timeout=10).json()["balance_fen"]
    _say(
        "pay",
        f"order {order.out_trade_no}: {status}; the line's balance {before / 100:.2f} → {after / 100:.2f} 元",
    )
    if status != "fulfilled" or after - before != 5000:
        failures.append(f"purchase: order {status}, balance moved by {after - before} fen (expected 5000)")


def _setup_mini_program(sim_base: str) -> Any:
    """The demo mini-program account, created once and registered with the simulator."""
    cfg_appid = "wx0de7000000000004"
    try:
        account = services.account_by_appid(cfg_appid)
    except NotFoundError:
        account = services.add_account(
            name="Demo mini-program",
            appid=cfg_appid,
            app_secret=secrets.token_hex(16),
            kind="mini_program",
            org_unit_code="demo-group",
        )
    db.session.commit()
    requests.post(
        f"{sim_base}/_sim/accounts",
        json={"appid": account.appid, "secret": account.app_secret, "kind": "mini_program"},
        timeout=10,
    ).raise_for_status()
    return account


def _wait_for_order(order_id: int) -> str | None:
    """Poll the order (up to 20 s) until the worker fulfils, refunds or fails it; its last status."""
    import time


    status = None
    for _ in range(100):
        db.session.rollback()
        status = db.session.get_one(Order, order_id).status.value
        if status in ("fulfilled", "refunded", "fulfilment_failed"):
            break
        time.sleep(0.2)
    return status


def _demo_merchant(sim_base: str, account_id: int) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa


    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    apiv3_key, mchid = secrets.token_hex(16), "1900009999"
    platform = requests.post(
        f"{sim_base}/_sim/wechatpay/merchants",
        json={"mchid": mchid, "public_key": public_pem, "apiv3_key": apiv3_key},
        timeout=10,
    )
    platform.raise_for_status()
    merchants.add_merchant(
        account_id,
        mchid=mchid,
        serial_no=secrets.token_hex(20).upper(),
        private_key=private_pem,
        apiv3_key=apiv3_key,
        platform_public_key=platform.json()["platform_public_key"],
        platform_public_key_id=platform.json()["platform_public_key_id"],
    )
    db.session.commit()


def _converse(
    sim_base: str, spec: dict[str, Any], label: str, alice: str, bob: str, failures: list[str]
) -> None:
    """Alice and Bob follow, chat, click, scan the store QR code and leave; each reply checked."""

    def drive(openid: str, action: str, **params: Any) -> dict[str, Any]:
        resp = requests.post(
            f"{sim_base}/_sim/accounts/{spec['appid']}/drive",
            json={"action": action, "openid": openid, **params},
            timeout=30,
        )
        resp.raise_for_status()
        return resp.json()

    def expect(what: str, result: dict[str, Any], contains: str | None) -> None:
        reply = result.get("reply") or {}
        text = reply.get("Content") or reply.get("ArticleTitles") or ""
        enc = " (encrypted reply)" if reply.get("_encrypted") else ""
        _say(label, f"{what} → HTTP {result['status']}: {text or result['body']!r}{enc}")
        if result["status"] != 200:
            failures.append(f"{label}: {what}: HTTP {result['status']} {result['body']}")
        elif contains is None and text:
            failures.append(f"{label}: {what}: expected no reply, got {text!r}")
        elif contains is not None and contains not in text:
            failures.append(f"{label}: {what}: expected {contains!r} in {text!r}")

    expect("alice follows", drive(alice, "follow"), "欢迎关注")
    expect("alice: 余额", drive(alice, "text", content="余额"), "余额为")
    retries = drive(alice, "text", content="我的套餐", repeat=3)
    expect("alice: 我的套餐 ×3 (WeChat re-sends)", retries, "5G 畅享套餐")
    if len({d["body"] for d in retries["deliveries"]}) != 1 and label == "plain":
        failures.append(f"{label}: re-sends got different replies")
    expect("alice: hello", drive(alice, "text", content="hello"), "没听懂")
    expect("alice clicks 查余额", drive(alice, "click", key="BALANCE"), "余额为")
    expect("bob scans store QR", drive(bob, "follow", scene="store-001"), "欢迎关注")
    expect("bob opens store", drive(bob, "view", url="https://example.com/store"), None)
    expect("alice unfollows", drive(alice, "unfollow"), None)


def _check_ledgers(account_id: int, label: str, alice: str, bob: str, failures: list[str]) -> None:
    """Alice's and Bob's subscriber history as the conversation should have left it."""
    history = {
        o: [e.kind.value for e in subscribers.subscriber_history(account_id, o)] for o in (alice, bob)
    }
    _say(label, f"ledger alice: {history[alice]}")
    _say(label, f"ledger bob:   {history[bob]}")
    want_alice = ["follow", "message", "message", "message", "click", "unfollow"]
    if history[alice] != want_alice:
        failures.append(f"{label}: alice's ledger {history[alice]} != {want_alice}")
    bob_events = subscribers.subscriber_history(account_id, bob)
    if [e.kind.value for e in bob_events] != ["follow", "view"] or bob_events[0].channel_id is None:
        failures.append(f"{label}: bob's QR follow not attributed to the store channel")


def _verdict(failures: list[str], check: bool) -> bool:
    """With ``check``, print the failures (or OK); True when there are none."""
    if check:
        if failures:
            print("[demo] FAILED:", flush=True)
            for f in failures:
                print(f"  - {f}", flush=True)
            return False
        print("[demo] OK: every reply and ledger row as expected", flush=True)
    return not failures


def run_demo(sim_base: str, check: bool) -> bool:
    _setup_org()
    db.session.commit()
    failures: list[str] = []
    for spec in DEMO_ACCOUNTS:
        account = _setup_account(spec, sim_base)
        label = account.message_mode.value
        _say(label, f"{account.name}: callback {services.callback_url(account)}")
        alice = "oDEMOa" + secrets.token_hex(8)
        bob = "oDEMOb" + secrets.token_hex(8)
        _converse(sim_base, spec, label, alice, bob, failures)
        _check_ledgers(account.id, label, alice, bob, failures)
        _say(label, f"followers now: {subscribers.follower_count(account.id)}")
    _store_demo(sim_base, failures)
    _purchase_demo(sim_base, failures)
    db.session.rollback()
    return _verdict(failures, check)
