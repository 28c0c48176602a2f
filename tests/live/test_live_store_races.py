"""Races in the store and payments, through gunicorn (2 workers × 16 threads) or many database
sessions at once: stock never oversold (orders or points), one subscriber's limit holds, partial
refunds never go beyond what was paid, fund pools never overdraw."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests import helpers
from tests.live.conftest import Live


def _line(live: Live, phone: str) -> dict[str, Any]:
    return requests.get(f"{live.sim}/_sim/boss/lines/{phone}", timeout=5).json()


def _mp_shop(live: Live, subscribers: int, prefix: str, **product: Any) -> dict[str, Any]:
    """A mini-program account, ``subscribers`` signed in (each with a phone of their own) and one
    top-up product with the given stock / limit / points price."""
    from accounts import services
    from accounts.subscribers import touch
    from store import catalogue
    from store import services as store_services
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain", kind="mini_program")
    appid = fields["appid"]
    openids = [f"o{prefix}{i:010d}" for i in range(subscribers)]
    phones = [f"1380013{8000 + i * 7 + len(prefix):04d}" for i in range(subscribers)]
    tokens = []
    for openid in openids:
        code = requests.post(f"{live.sim}/_sim/accounts/{appid}/js-codes", json={"openid": openid}, timeout=5)
        tokens.append(
            requests.post(
                f"{live.base}/api/mp/{appid}/session", json={"code": code.json()["code"]}, timeout=5
            ).json()["token"]
        )

    def setup() -> int:
        account = services.account_by_appid(appid)
        helpers.register_merchant(live.sim, account.id)
        for openid, phone in zip(openids, phones, strict=True):
            sub = touch(account.id, openid, None)
            store_services.bind_phone(account.id, sub.id, phone, method="sms")
        item = catalogue.add_product(
            account_id=account.id, code="t5", name="5 元话费", kind="topup", price_fen=500,
            face_value_fen=500, **product,
        )  # fmt: skip
        db.session.commit()
        return item.id

    return {"appid": appid, "tokens": tokens, "phones": phones, "product_id": live.in_app(setup)}


def _at_once(count: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(i)`` for every i, all released together by a barrier."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_twenty_parallel_points_exchanges_of_a_stock_one_item(live: Live) -> None:
    from store.models import Fulfilment, HoldStatus, PointsHold

    shop = _mp_shop(live, 4, "PTS", stock=1, points_price=1)
    points_before = sum(_line(live, p)["points"] for p in shop["phones"])
    balance_before = sum(_line(live, p)["balance_fen"] for p in shop["phones"])
    topups_before = _line(live, shop["phones"][0])["calls"].get("topup", 0)

    def exchange(i: int) -> tuple[int, str]:
        resp = requests.post(
            f"{live.base}/api/mp/{shop['appid']}/points/exchange",
            json={"product_id": shop["product_id"], "client_key": f"race-points-{i:04d}"},
            headers={"Authorization": f"Bearer {shop['tokens'][i % 4]}"},
            timeout=60,
        )
        return resp.status_code, (resp.json().get("error") or {}).get("code", "")

    results = _at_once(20, exchange)
    assert [s for s, _ in results].count(202) == 1, results
    assert {c for s, c in results if s != 202} == {"sold_out"}, results
    assert live.scalar(sa.select(sa.func.count()).select_from(PointsHold)) == 1
    live.wait_for(lambda: live.scalar(sa.select(PointsHold.status)) is HoldStatus.settled, 30, "the exchange")
    assert live.scalar(sa.select(sa.func.count()).select_from(Fulfilment)) == 1
    assert sum(_line(live, p)["points"] for p in shop["phones"]) == points_before - 1  # debited once
    assert sum(_line(live, p)["balance_fen"] for p in shop["phones"]) == balance_before + 500
    assert _line(live, shop["phones"][0])["calls"].get("topup", 0) == topups_before + 1


def test_twenty_parallel_exchanges_of_one_subscriber_keep_the_limit(live: Live) -> None:
    from store.models import PointsHold

    shop = _mp_shop(live, 1, "LIM", per_subscriber_limit=1, points_price=1)
    points_before = _line(live, shop["phones"][0])["points"]

    def exchange(i: int) -> tuple[int, str]:
        resp = requests.post(
            f"{live.base}/api/mp/{shop['appid']}/points/exchange",
            json={"product_id": shop["product_id"], "client_key": f"race-limit-{i:04d}"},
            headers={"Authorization": f"Bearer {shop['tokens'][0]}"},
            timeout=60,
        )
        return resp.status_code, (resp.json().get("error") or {}).get("code", "")

    results = _at_once(20, exchange)
    assert [s for s, _ in results].count(202) == 1, results
    assert {c for s, c in results if s != 202} == {"limit_reached"}, results
    assert live.scalar(sa.select(sa.func.count()).select_from(PointsHold)) == 1
    assert _line(live, shop["phones"][0])["points"] == points_before - 1


def test_parallel_orders_and_payments_never_oversell(live: Live) -> None:
    from store.models import Order, Product

    shop = _mp_shop(live, 6, "OVS", stock=3)

    def buy(i: int) -> tuple[int, Any]:
        resp = requests.post(
            f"{live.base}/api/mp/{shop['appid']}/orders",
            json={"product_id": shop["product_id"], "client_key": f"race-order-{i:04d}"},
            headers={"Authorization": f"Bearer {shop['tokens'][i % 6]}"},
            timeout=60,
        )
        body = resp.json()
        return resp.status_code, body["order"]["out_trade_no"] if resp.status_code == 201 else body

    results = _at_once(24, buy)
    made = [n for s, n in results if s == 201]
    assert len(made) == 3, results
    assert {b["error"]["code"] for s, b in results if s != 201} == {"sold_out"}, results
    assert live.scalar(sa.select(Product.stock)) == 0
    paid = _at_once(
        3,
        lambda i: requests.post(
            f"{live.sim}/_sim/wechatpay/pay", json={"out_trade_no": made[i], "copies": 5, "concurrent": True},
            timeout=60,
        ).json()["statuses"],
    )  # fmt: skip
    assert all(set(s) == {204} for s in paid), paid
    live.wait_for(
        lambda: live.scalar(sa.select(sa.func.count()).where(Order.status == "fulfilled")) == 3,
        30,
        "three fulfilled orders",
    )
    assert live.scalar(sa.select(sa.func.count()).select_from(Order)) == 3


def _paid_order(live: Live, amount_fen: int) -> tuple[int, str]:
    """A v3 order paid through the simulator's notification to the live web process."""
    from accounts import services
    from accounts.subscribers import touch
    from payments import services as payments
    from store import catalogue, orders
    from store import services as store_services
    from store.models import Order
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain")

    def setup() -> tuple[int, str]:
        account = services.account_by_appid(fields["appid"])
        helpers.register_merchant(live.sim, account.id)
        product = catalogue.add_product(
            account_id=account.id, code="v", name="voucher", kind="voucher", price_fen=amount_fen
        )
        sub = touch(account.id, "oREFRACE000001", None)
        store_services.bind_phone(account.id, sub.id, "13800139401", method="sms")
        order = orders.create_order(account.id, sub.id, product.id, "refund-race-01", "wechatpay_v3")
        payments.prepay(order, "oREFRACE000001", product.name)
        db.session.commit()
        return order.id, order.out_trade_no

    order_id, out_trade_no = live.in_app(setup)
    requests.post(f"{live.sim}/_sim/wechatpay/pay", json={"out_trade_no": out_trade_no}, timeout=30)
    live.wait_for(
        lambda: live.scalar(sa.select(Order.status).where(Order.id == order_id)).value == "fulfilled",
        30,
        "the order to be fulfilled",
    )
    return order_id, out_trade_no


def _staff_session(live: Live, account_id: int, username: str) -> tuple[requests.Session, str]:
    """An account manager signed in through the real login form; (session, CSRF token)."""
    from accounts import staff as staff_services
    from tests.console_helpers import PASSWORD, page_token
    from wechat_service.extensions import db

    def create() -> None:
        user = staff_services.create_user(username, PASSWORD)
        staff_services.add_grant(user, "account_manager", account_id=account_id)
        db.session.commit()

    live.in_app(create)
    http = requests.Session()
    token = page_token(http.get(f"{live.base}/console/login", timeout=10).text)
    resp = http.post(
        f"{live.base}/console/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )
    assert resp.status_code == 302, resp.text[:300]
    return http, http.get(f"{live.base}/api/v1/session", timeout=10).json()["csrf_token"]


def test_parallel_partial_refunds_never_exceed_the_payment(live: Live) -> None:
    """Three account managers ask for 30.00 元 refunds of a 100.00 元 order through the staff API,
    twelve requests at once, four rounds: the provider's ledger and ours agree, each refund was
    made once, and the sum never goes beyond what was paid."""
    from payments.models import Refund, RefundStatus
    from store.models import Order
    from wechat_service.extensions import db

    order_id, out_trade_no = _paid_order(live, 10000)
    account_id = live.scalar(sa.select(Order.account_id).where(Order.id == order_id))
    staff = [_staff_session(live, account_id, f"refunder{i}") for i in range(3)]
    url = f"{live.base}/api/v1/accounts/{account_id}/orders/{order_id}/refund"

    def ask(i: int) -> tuple[int, str]:
        http, token = staff[i % 3]
        resp = http.post(
            url,
            json={"reason": f"goodwill {i}", "amount_fen": 3000},
            headers={"X-CSRFToken": token},
            timeout=60,
        )
        return resp.status_code, "" if resp.status_code == 200 else resp.json()["error"]["code"]

    outcomes = [o for _ in range(4) for o in _at_once(12, ask)]
    assert 200 in {s for s, _ in outcomes}, outcomes
    assert {s for s, _ in outcomes} <= {200, 400, 409}, outcomes  # never a 500
    ledger = requests.get(
        f"{live.sim}/_sim/wechatpay/refunds", params={"out_trade_no": out_trade_no}, timeout=5
    ).json()
    ours = live.in_app(
        lambda: [
            (r.out_refund_no, r.amount_fen, r.status)
            for r in db.session.scalars(sa.select(Refund).where(Refund.out_trade_no == out_trade_no))
        ]
    )
    assert len(ledger) == 3 and sum(r["amount"] for r in ledger) == 9000, ledger  # 3 × 30.00 ≤ 100.00
    assert sorted((r["out_refund_no"], r["amount"]) for r in ledger) == sorted((n, a) for n, a, _ in ours)
    assert all(s is RefundStatus.success for _, _, s in ours)
    assert live.scalar(sa.select(Order.refunded_fen).where(Order.id == order_id)) == 9000


def test_parallel_fund_pool_draws_never_overdraw(live: Live) -> None:
    from accounts import services
    from payments import funds
    from payments.models import FundPool, FundPoolEntry
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain")

    def setup() -> int:
        account = services.account_by_appid(fields["appid"])
        pool = funds.create_pool(account.id, name="gift", warning_fen=0, critical_fen=0)
        funds.top_up(pool.id, 10000, ref="transfer-1")
        db.session.commit()
        return pool.id

    pool_id = live.in_app(setup)

    def draw(i: int) -> bool:
        with live.app.app_context():
            try:
                ok = funds.draw(pool_id, 3000, f"draw-{i:02d}")
                db.session.commit()
                return ok
            finally:
                db.session.remove()

    results = _at_once(24, draw)
    assert results.count(True) == 3, results  # 3 × 30.00 of 100.00; the fourth would overdraw
    balance = live.scalar(sa.select(FundPool.balance_fen).where(FundPool.id == pool_id))
    ledger = live.in_app(
        lambda: list(
            db.session.scalars(sa.select(FundPoolEntry.amount_fen).where(FundPoolEntry.pool_id == pool_id))
        )
    )
    assert balance == sum(ledger) == 1000, (balance, ledger)


def test_parallel_sweeps_resolve_each_stranded_points_hold_once(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exchanges lose their BOSS answer and their follow-up query (one was debited, one was
    not); then twelve sweeps run at once, each in its own session: the debited hold gets exactly
    one fulfilment (carried out by the worker), the other is released with its unit of stock back
    once, and no points move twice."""
    from datetime import timedelta

    from store import jobs, points
    from store.boss import HttpBoss
    from store.models import Fulfilment, HoldStatus, PointsHold, Product
    from wechat_service.dbtypes import utcnow
    from wechat_service.errors import ServiceError
    from wechat_service.extensions import db

    shop = _mp_shop(live, 2, "STR", stock=2, points_price=1)
    cfg = live.app.config
    # The real client with a short write timeout, so an answer withheld past it fails fast.
    client = HttpBoss(cfg["BOSS_API_BASE"], cfg["BOSS_APP_ID"], cfg["BOSS_SECRET"], write_timeout=0.5)
    monkeypatch.setitem(live.app.extensions, "boss", client)
    before = [_line(live, p)["points"] for p in shop["phones"]]

    def fault(kind: str, operation: str, **extra: Any) -> None:
        requests.post(
            f"{live.sim}/_sim/boss/faults", json={"kind": kind, "operation": operation, **extra}, timeout=5
        ).raise_for_status()

    def exchange(i: int) -> str:
        from accounts import services
        from accounts.subscribers import touch

        account = services.account_by_appid(shop["appid"])
        sub = touch(account.id, f"oSTR{i:010d}", None)
        try:
            points.exchange(account.id, sub.id, shop["product_id"], f"stranded-{i:04d}")
        except ServiceError as exc:
            return exc.code
        return "ok"

    fault("timeout_after_accept", "points-debit", ms=1500)  # carried out, answered too late
    fault("busy", "requests/query")
    assert live.in_app(lambda: exchange(0)) == "boss_unavailable"
    fault("busy", "points-debit")  # refused before anything was done
    fault("busy", "requests/query")
    assert live.in_app(lambda: exchange(1)) == "boss_unavailable"
    assert [_line(live, p)["points"] for p in shop["phones"]] == [before[0] - 1, before[1]]
    assert live.scalar(sa.select(Product.stock).where(Product.id == shop["product_id"])) == 0

    def age() -> None:
        db.session.execute(sa.update(PointsHold).values(created_at=utcnow() - timedelta(hours=1)))
        db.session.commit()

    live.in_app(age)

    def sweep(_: int) -> dict[str, int]:
        return live.in_app(jobs.sweep_points_holds)

    results = _at_once(12, sweep)
    assert sum(r["fulfilled"] for r in results) == 1, results
    assert sum(r["released"] for r in results) == 1, results
    held = live.in_app(lambda: {h.client_key: h.status for h in db.session.scalars(sa.select(PointsHold))})
    assert held["stranded-0001"] is HoldStatus.released
    live.wait_for(
        lambda: (
            live.scalar(sa.select(PointsHold.status).where(PointsHold.client_key == "stranded-0000"))
            is HoldStatus.settled
        ),
        30,
        "the debited hold to be fulfilled by the worker",
    )
    assert live.scalar(sa.select(sa.func.count()).select_from(Fulfilment)) == 1
    assert live.scalar(sa.select(Product.stock).where(Product.id == shop["product_id"])) == 1
    assert [_line(live, p)["points"] for p in shop["phones"]] == [before[0] - 1, before[1]]
    assert _at_once(4, sweep) == [{"fulfilled": 0, "released": 0}] * 4  # nothing left to resolve
