"""Daily reconciliation against statements the simulator writes in each provider's own format,
with discrepancies injected on the provider's side: each one is found, and nothing else is."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from payments import reconciliation, refunds
from payments import services as payments
from payments.models import ReconciliationRun, ReconItemKind, ReconStatus
from payments.reconciliation import CHINA, parse_alipay, parse_wechat
from store import jobs
from store.models import Order
from tests import factories
from wechat_service.extensions import db

OPENID = "oRECON00000001"


def _today() -> Any:
    return datetime.now(CHINA).date()


def _shop(simulator: str, provider: str) -> dict[str, Any]:
    shop = factories.shop(
        simulator,
        pay=[provider],
        product={"code": "rc", "price_fen": 990, "face_value_fen": 1000},
        openid=OPENID,
        phone="13800139203",
    )
    if provider == "alipay":
        shop["merchant"], shop["key"] = shop["alipay_merchant"], shop["alipay_app_id"]
    else:
        shop["key"] = shop["mchid"]
    return {**shop, "provider": provider}


def _pay(app: Flask, shop: dict[str, Any], simulator: str, n: int, notify: bool = True) -> Order:
    order = factories.order(shop["sub"], shop["product"], f"recon-{n:08d}", shop["provider"])
    pay = payments.prepay(order, OPENID, "10 元话费")
    db.session.commit()
    if shop["provider"] == "alipay":
        requests.get(pay["url"], timeout=10).raise_for_status()  # the buyer opens the wap pay page
    client, merchant_id = app.test_client(), shop["merchant"].id
    if shop["provider"] == "wechatpay_v3":
        note = requests.post(
            f"{simulator}/_sim/wechatpay/pay",
            json={"out_trade_no": order.out_trade_no, "deliver": False},
            timeout=10,
        ).json()
        if notify:
            resp = client.post(
                f"/payments/wechatpay/v3/{merchant_id}/notify",
                headers=note["headers"],
                data=note["body"].encode(),
            )
            assert resp.status_code == 204
    elif shop["provider"] == "wechatpay_v2":
        body = requests.post(
            f"{simulator}/_sim/wechatpay/v2/pay",
            json={"out_trade_no": order.out_trade_no, "deliver": False},
            timeout=10,
        ).json()["body"]
        if notify:
            assert (
                client.post(f"/payments/wechatpay/v2/{merchant_id}/notify", data=body.encode()).status_code
                == 200
            )
    else:
        form = requests.post(
            f"{simulator}/_sim/alipay/pay",
            json={"out_trade_no": order.out_trade_no, "deliver": False},
            timeout=10,
        ).json()["form"]
        if notify:
            assert (
                client.post(f"/payments/alipay/{merchant_id}/notify", data=form).get_data(as_text=True)
                == "success"
            )
    db.session.expire_all()
    return db.session.get(Order, order.id)


def _faults(simulator: str, shop: dict[str, Any], **faults: Any) -> None:
    requests.post(
        f"{simulator}/_sim/statement-faults", json={"merchant": shop["key"], **faults}, timeout=5
    ).raise_for_status()


@pytest.mark.parametrize("provider", ["wechatpay_v3", "wechatpay_v2", "alipay"])
def test_a_clean_day_matches_every_line(app: Flask, simulator: str, provider: str) -> None:
    shop = _shop(simulator, provider)
    paid = [_pay(app, shop, simulator, i) for i in range(3)]
    jobs.fulfil(paid[0].fulfilment_id)
    refunded = db.session.get(Order, paid[0].id)
    refunds.partial(refunded, 300, "goodwill", staff_user_id=None)  # type: ignore[arg-type]
    if provider == "wechatpay_v2":  # v2 says "accepted"; the query finishes it
        db.session.execute(sa.text("UPDATE refunds SET created_at = created_at - interval '5 minutes'"))
        db.session.commit()
        refunds.sweep()
    run = reconciliation.reconcile(shop["merchant"].id, _today())
    assert run.status is ReconStatus.matched, reconciliation.items_of(run.id)
    assert (run.statement_rows, run.ledger_rows, run.matched) == (4, 4, 4)
    assert run.statement_net_fen == run.ledger_net_fen == 3 * 990 - 300


@pytest.mark.parametrize("provider", ["wechatpay_v3", "wechatpay_v2", "alipay"])
def test_injected_discrepancies_are_each_found(app: Flask, simulator: str, provider: str) -> None:
    shop = _shop(simulator, provider)
    matched = _pay(app, shop, simulator, 1)
    dropped = _pay(app, shop, simulator, 2)
    altered = _pay(app, shop, simulator, 3)
    lost = _pay(app, shop, simulator, 4, notify=False)  # paid at the provider, never told to us
    _faults(simulator, shop, drop=[dropped.out_trade_no], amount={altered.out_trade_no: 980})
    run = reconciliation.reconcile(shop["merchant"].id, _today())
    assert run.status is ReconStatus.discrepancies
    found = {(i.kind, i.out_trade_no, i.ledger_fen, i.statement_fen) for i in reconciliation.items_of(run.id)}
    assert found == {
        (ReconItemKind.missing_in_statement, dropped.out_trade_no, 990, None),
        (ReconItemKind.amount_mismatch, altered.out_trade_no, 990, 980),
        (ReconItemKind.missing_in_ledger, lost.out_trade_no, None, 990),
    }
    assert matched.out_trade_no not in {f[1] for f in found}
    text = reconciliation.items_csv(run)
    assert text.splitlines()[0].startswith("bill_date,provider,kind") and len(text.splitlines()) == 4
    # Re-running the day replaces its report instead of adding a second one.
    reconciliation.reconcile(shop["merchant"].id, _today())
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ReconciliationRun)) == 1


def test_a_day_without_a_statement_and_an_unreadable_one(app: Flask, simulator: str) -> None:
    shop = _shop(simulator, "wechatpay_v3")
    run = reconciliation.reconcile(shop["merchant"].id, _today())
    assert run.status is ReconStatus.matched and run.statement_rows == 0
    with pytest.raises(ValueError):
        parse_wechat("<html>maintenance</html>")
    with pytest.raises(ValueError):
        parse_alipay("#nothing\n")


def test_the_statement_formats_parse_exactly() -> None:
    wechat = (
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
        "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,"
        "商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n"
        "`2026-11-21 10:00:00,`wx1,`1900000109,`0,`,`4200001,`WX1,`o1,`JSAPI,`SUCCESS,"
        "`OTHERS,`CNY,`19.99,`0.00,"
        "`0,`0,`0.00,`0.00,`,`,`t,`,`0.12,`0.60%,`19.99,`0.00,`\r\n"
        "`2026-11-21 11:00:00,`wx1,`1900000109,`0,`,`4200001,`WX1,`o1,`JSAPI,`REFUND,"
        "`OTHERS,`CNY,`0.00,`0.00,"
        "`5000001,`RF1,`0.10,`0.00,`ORIGINAL,`SUCCESS,`t,`,`0.00,`0.60%,`19.99,`0.10,`\r\n"
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n"
        "`2,`19.99,`0.10,`0.00,`0.12,`19.99,`0.10\r\n"
    )
    assert [(ln.kind.value, ln.txn_id, ln.amount_fen) for ln in parse_wechat(wechat)] == [
        ("payment", "4200001", 1999),
        ("refund", "5000001", 10),
    ]


def test_a_payment_recorded_after_midnight_belongs_to_the_day_it_was_paid(app: Flask, simulator: str) -> None:
    from datetime import UTC, date, timedelta

    from payments.models import PaymentTransaction, Provider, TxnKind
    from payments.reconciliation import _ledger, day_window, provider_time

    shop = _shop(simulator, "wechatpay_v3")
    d = date(2026, 3, 9)
    start, end = day_window(d)
    rows = {
        # v3: RFC 3339 success_time 23:59:58 Beijing, recorded five seconds later (the next day)
        "v3": ({"success_time": "2026-03-09T23:59:58+08:00"}, end + timedelta(seconds=5)),
        # v2: time_end in Beijing wall-clock
        "v2": ({"time_end": "20260309235959"}, end + timedelta(seconds=9)),
        # a refund finished by the sweep two days later
        "late": ({"success_time": "2026-03-09T12:00:00+08:00"}, end + timedelta(days=2)),
        # nothing from the provider: when we recorded it
        "plain": ({}, start + timedelta(hours=1)),
    }
    for name, (raw, created) in rows.items():
        db.session.add(
            PaymentTransaction(
                account_id=shop["account"].id, provider=Provider.wechatpay_v3, kind=TxnKind.payment,
                provider_txn_id=name, amount_fen=1, status="SUCCESS", raw=raw, created_at=created,
            )
        )  # fmt: skip
    db.session.flush()
    assert {k[1] for k in _ledger(shop["merchant"], start, end)} == {"v3", "v2", "late", "plain"}
    assert not _ledger(shop["merchant"], end, end + timedelta(days=1))
    row = db.session.scalars(
        sa.select(PaymentTransaction).where(PaymentTransaction.provider_txn_id == "v2")
    ).one()
    assert provider_time(row) == datetime(2026, 3, 9, 15, 59, 59, tzinfo=UTC)


def test_no_statement_while_money_moved_is_a_failed_run_retried_hourly(app: Flask, simulator: str) -> None:
    from datetime import UTC, timedelta

    shop = _shop(simulator, "wechatpay_v3")
    paid = _pay(app, shop, simulator, 1)
    _faults(simulator, shop, drop=[paid.out_trade_no])  # the statement is not there yet
    run = reconciliation.reconcile(shop["merchant"].id, _today())
    assert run.status is ReconStatus.failed and "no statement" in run.error
    # The hourly cron does nothing before 10:30 Beijing time, then yesterday's unfinished merchants.
    early = datetime.now(CHINA).replace(hour=9, minute=0).astimezone(UTC)
    assert reconciliation.reconcile_day(now=early) == {}
    tomorrow_noon = (datetime.now(CHINA) + timedelta(days=1)).replace(hour=12).astimezone(UTC)
    clean = _shop(simulator, "wechatpay_v2")
    _pay(app, clean, simulator, 2)
    assert reconciliation.reconcile(clean["merchant"].id, _today()).status is ReconStatus.matched
    # Tomorrow: the unpublished one is tried again, the finished one is left alone.
    assert reconciliation.reconcile_day(now=tomorrow_noon) == {"failed": 1}


def test_a_statement_that_does_not_match_its_hash_is_refused(app: Flask, simulator: str) -> None:
    """WeChat Pay v3 announces the bill's SHA-1 (hash_value): a damaged download fails the run with
    the reason, and nothing read from it is recorded."""
    from payments.models import ReconciliationItem

    shop = _shop(simulator, "wechatpay_v3")
    _pay(app, shop, simulator, 1)
    _faults(simulator, shop, corrupt=True)
    run = reconciliation.reconcile(shop["merchant"].id, _today())
    assert run.status is ReconStatus.failed
    assert run.error == "statement does not match its announced SHA-1"
    assert (run.statement_rows, run.matched) == (0, 0)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ReconciliationItem)) == 0
