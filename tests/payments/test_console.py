"""The payments console: partial refunds on the order page, reconciliation reports with their CSV,
fund pools with top-ups — each behind FINANCE/REFUND, each change audited, other accounts 404."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import requests
import sqlalchemy as sa
from flask import Flask

from accounts.models import AuditLog
from payments import services as payments
from payments.models import FundPool, Refund
from payments.reconciliation import CHINA
from store import catalogue, jobs
from store.models import Order
from tests import factories, helpers
from wechat_service.extensions import db

OPENID = "oCONSOLEPAY001"


def _fulfilled(app: Flask, simulator: str) -> tuple[Any, Order]:
    shop = factories.shop(
        simulator,
        refund_status="PROCESSING",
        product={"code": "c30", "price_fen": 2990, "face_value_fen": 3000},
        openid=OPENID,
        phone="13800139205",
    )
    account = shop["account"]
    order = factories.order(shop["sub"], shop["product"], "console-pay-0001")
    payments.prepay(order, OPENID, "30 元话费")
    db.session.commit()
    note = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False},
        timeout=10,
    ).json()
    resp = app.test_client().post(
        f"/payments/wechatpay/v3/{shop['merchant'].id}/notify",
        headers=note["headers"],
        data=note["body"].encode(),
    )
    assert resp.status_code == 204
    db.session.expire_all()
    jobs.fulfil(db.session.get(Order, order.id).fulfilment_id)
    db.session.expire_all()
    return account, db.session.get(Order, order.id)


def test_partial_refund_from_the_order_page(app: Flask, simulator: str, create_staff: Any) -> None:
    account, order = _fulfilled(app, simulator)
    url = f"/console/accounts/{account.id}/orders/{order.id}"
    support = create_staff("support", account_id=account.id)
    assert support.form(url, {"reason": "goodwill", "amount": "5.00"}).status_code in (302, 403)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Refund)) == 0
    manager = create_staff("account_manager", account_id=account.id)
    manager.form(url, {"reason": "goodwill", "amount": "5.5a"})  # not an amount: refused
    manager.form(url, {"reason": "goodwill", "amount": "30.00"})  # more than was paid: refused
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Refund)) == 0
    manager.form(url, {"reason": "late top-up", "amount": "5.50"})
    refund = db.session.scalars(sa.select(Refund)).one()
    assert refund.amount_fen == 550 and refund.out_refund_no.startswith("RP")
    page = manager.get(url).get_data(as_text=True)
    assert "late top-up" in page and "5.50" in page and "24.40" in page  # what is left to refund
    entry = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "order.refund")).one()
    assert entry.after["amount_fen"] == 550 and entry.before["refunded_fen"] == 0
    manager.form(url, {"reason": "the rest"})  # empty amount: everything left
    db.session.expire_all()
    assert db.session.get(Order, order.id).refunded_fen == 2990
    assert sorted(r.amount_fen for r in db.session.scalars(sa.select(Refund))) == [550, 2440]


def test_reconciliation_pages_and_csv(
    app: Flask, create_account: Any, simulator: str, create_staff: Any
) -> None:
    account, order = _fulfilled(app, simulator)
    other, _, _ = create_account("plain")
    manager = create_staff("account_manager", account_id=account.id)
    base = f"/console/accounts/{account.id}/reconciliation"
    today = datetime.now(CHINA).date().isoformat()
    assert manager.get(f"/console/accounts/{other.id}/reconciliation").status_code == 404
    manager.form(base, {"bill_date": "yesterday"})  # refused: not a date
    manager.form(base, {"bill_date": today})
    page = manager.get(base).get_data(as_text=True)
    assert today in page and "matched" in page
    run_id = db.session.execute(sa.text("SELECT id FROM reconciliation_runs")).scalar_one()
    csv_resp = manager.get(f"{base}/{run_id}.csv")
    assert csv_resp.status_code == 200 and csv_resp.mimetype == "text/csv"
    assert csv_resp.get_data(as_text=True).lstrip("\ufeff").splitlines() == [
        "bill_date,provider,kind,txn_kind,provider_txn_id,out_trade_no,ledger_fen,statement_fen"
    ]
    assert "Every line matches" in manager.get(f"{base}/{run_id}").get_data(as_text=True)
    analyst = create_staff("analyst", account_id=account.id)
    assert analyst.get(base).status_code == 403
    assert db.session.scalars(sa.select(AuditLog.action).where(AuditLog.action == "reconciliation.run")).all()


def test_fund_pool_pages(app: Flask, create_account: Any, create_staff: Any) -> None:
    account, _, _ = create_account("plain")
    manager = create_staff("account_manager", account_id=account.id)
    base = f"/console/accounts/{account.id}/fund-pools"
    manager.form(base, {"name": "礼包预算", "warning": "100", "critical": "200"})  # critical above warning
    assert db.session.scalar(sa.select(sa.func.count()).select_from(FundPool)) == 0
    manager.form(base, {"name": "礼包预算", "warning": "100.00", "critical": "20"})
    pool = db.session.scalars(sa.select(FundPool)).one()
    assert (pool.warning_fen, pool.critical_fen) == (10000, 2000)
    manager.form(f"{base}/{pool.id}", {"amount": "150.25", "ref": "TRANSFER-1", "note": "Q4 budget"})
    manager.form(f"{base}/{pool.id}", {"amount": "150.25", "ref": "TRANSFER-1"})  # the same transfer again
    manager.form(f"{base}/{pool.id}", {"amount": "500", "ref": "TRANSFER-1"})  # another one, reused ref
    db.session.expire_all()
    assert db.session.get(FundPool, pool.id).balance_fen == 15025
    page = manager.get(f"{base}/{pool.id}").get_data(as_text=True)
    assert "150.25" in page and "TRANSFER-1" in page and ">ok<" in page
    actions = db.session.scalars(sa.select(AuditLog.action).where(AuditLog.action.like("fund_pool.%"))).all()
    assert sorted(actions) == ["fund_pool.create", "fund_pool.top_up"]  # only what changed the balance
    assert "already recorded" in page and "give this transfer its own" in page  # flashed
    assert create_staff("support", account_id=account.id).get(base).status_code == 403


def test_a_refund_asked_while_wechat_pay_is_unreachable_is_audited_and_finished_later(
    app: Flask, simulator: str, create_staff: Any, monkeypatch: Any
) -> None:
    from datetime import timedelta

    from payments import refunds
    from payments.models import RefundStatus
    from wechat_service.dbtypes import utcnow

    account, order = _fulfilled(app, simulator)
    manager = create_staff("account_manager", account_id=account.id)
    monkeypatch.setitem(app.config, "WECHATPAY_API_BASE", f"http://127.0.0.1:{helpers.free_port()}/wechatpay")
    resp = manager.form(
        f"/console/accounts/{account.id}/orders/{order.id}", {"reason": "late", "amount": "3"}
    )
    assert resp.status_code == 302  # not a 500: the refund is on record, the provider is asked later
    refund = db.session.scalars(sa.select(Refund)).one()
    assert refund.status is RefundStatus.processing and refund.attempts == 1
    entry = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "order.refund")).one()
    from accounts.models import StaffUser

    assert entry.after["amount_fen"] == 300
    assert db.session.get(StaffUser, entry.user_id).username == manager.username
    monkeypatch.undo()
    db.session.execute(sa.update(Refund).values(created_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    assert refunds.sweep() == {"processing": 1}  # it never reached WeChat Pay: asked now
    requests.post(
        f"{simulator}/_sim/wechatpay/refunds/{refund.out_refund_no}/finish",
        json={"status": "SUCCESS"},
        timeout=5,
    )
    assert refunds.sweep() == {"success": 1}
    db.session.expire_all()
    assert db.session.get(Order, order.id).refunded_fen == 300


def test_fund_a_product_from_a_pool_page(app: Flask, create_account: Any, create_staff: Any) -> None:
    account, _, _ = create_account("plain")
    other, _, _ = create_account("plain")
    gift = catalogue.add_product(
        account_id=account.id,
        code="gift1g",
        name="1GB",
        kind="data_package",
        price_fen=600,
        package_code="D1",
    )
    foreign = catalogue.add_product(
        account_id=other.id, code="gift2g", name="2GB", kind="data_package", price_fen=900, package_code="D2"
    )
    from payments import funds

    pool = funds.create_pool(account.id, name="合作方", warning_fen=0, critical_fen=0)
    db.session.commit()
    manager = create_staff("account_manager", account_id=account.id)
    url = f"/console/accounts/{account.id}/fund-pools/{pool.id}/products"
    manager.form(url, {"product_id": str(foreign.id), "funded": "1"})  # another account's: refused
    manager.form(url, {"product_id": str(gift.id), "funded": "1"})
    db.session.expire_all()
    assert db.session.get(type(gift), gift.id).fund_pool_id == pool.id
    assert db.session.get(type(foreign), foreign.id).fund_pool_id is None
    page = manager.get(f"/console/accounts/{account.id}/fund-pools/{pool.id}").get_data(as_text=True)
    assert "gift1g" in page and "gift2g" not in page
    manager.form(url, {"product_id": str(gift.id), "funded": "0"})
    db.session.expire_all()
    assert db.session.get(type(gift), gift.id).fund_pool_id is None
    actions = db.session.scalars(
        sa.select(AuditLog.action).where(AuditLog.action.like("fund_pool.%fund%"))
    ).all()
    assert sorted(actions) == ["fund_pool.fund_product", "fund_pool.unfund_product"]
