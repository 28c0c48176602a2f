"""Role scoping of every metrics page and API route, exports, the monthly report, admin-only
contract management through the console and the API."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask

from accounts.models import Grant, OrgUnit, Subscriber, SubscriberEvent
from metrics import rollups
from tests.test_console_isolation import METHODS, _url, account_x  # noqa: F401 - the shared fixture
from wechat_service.extensions import db

PREFIXES = ("/console/metrics", "/api/v1/metrics")


def _metrics_rules(app: Flask) -> list[Any]:
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith(PREFIXES)]
    assert len(rules) >= 20
    return rules


@pytest.mark.parametrize("role", ["account_manager", "support", "analyst", "marketer", None])
def test_no_metrics_route_reveals_another_accounts_figures(
    role: str | None,
    app: Flask,
    account_x: dict[str, Any],  # noqa: F811 - the fixture imported above
    create_account: Any,
    create_staff: Any,
) -> None:
    own, _, _ = create_account("plain", name="Own account")
    walker = create_staff(role or "analyst", account_id=own.id)
    if role is None:
        db.session.query(Grant).filter(Grant.account_id == own.id).delete()
        db.session.commit()
    scoped = {"account_id", "unit_id", "contract_id", "period_id"}
    for rule in _metrics_rules(app):
        url = _url(rule, account_x["values"])
        for method in sorted(set(rule.methods or ()) & set(METHODS)):
            if rule.rule.startswith("/api/"):
                resp = walker.api(method, url, {})
            elif method == "GET":
                resp = walker.get(url)
            else:
                resp = walker.form(
                    url, {"name": "probe", "action": "close", "reason": "probe", "amount": "1"}
                )
            body = resp.get_data(as_text=True)
            for marker in account_x["markers"]:
                assert marker not in body, f"{method} {url} leaked {marker!r}"
            if rule.arguments & scoped:
                assert resp.status_code in (403, 404), f"{method} {url} -> {resp.status_code}"
            else:
                assert resp.status_code < 500, f"{method} {url} -> {resp.status_code}"
            for export in ("accounts", "rankings", "contracts", "manual"):
                if method == "GET" and not rule.arguments and not rule.rule.startswith("/api/"):
                    resp = walker.get(url, query_string={"export": export, "format": "csv"})
                    assert not any(m in resp.get_data(as_text=True) for m in account_x["markers"])


def _follows(account_id: int, n: int, at: str) -> None:
    when = datetime.fromisoformat(at).replace(tzinfo=UTC)
    for i in range(n):
        sub = Subscriber(account_id=account_id, openid=f"ocon{account_id}x{i}x{at[:10]}")
        db.session.add(sub)
        db.session.flush()
        db.session.add(
            SubscriberEvent(
                account_id=account_id,
                subscriber_id=sub.id,
                kind="follow",
                occurred_at=when,
                recorded_at=when,
                detail={},
            )
        )
    db.session.commit()


def test_analyst_reads_admin_manages(app: Flask, create_account: Any, create_staff: Any) -> None:
    province = OrgUnit(code="mprov", name="Mprovince", kind="province")
    db.session.add(province)
    db.session.flush()
    city = OrgUnit(code="mcity", name="Mcity", kind="city", parent_id=province.id)
    db.session.add(city)
    db.session.commit()
    a1, _, _ = create_account("plain", name="City account", org_unit_code="mcity")
    a2, _, _ = create_account("plain", name="Province account", org_unit_code="mprov")
    _follows(a1.id, 3, "2026-02-10T02:00:00")
    _follows(a2.id, 5, "2026-02-11T02:00:00")
    rollups.rebuild(date(2026, 2, 1), date(2026, 2, 28))
    db.session.commit()
    admin = create_staff(admin=True)
    city_analyst = create_staff("analyst", org_unit="mcity")
    province_analyst = create_staff("analyst", org_unit="mprov")
    support = create_staff("support", org_unit="mprov")

    # The admin creates a contract for the province and a target, through the API.
    resp = admin.api(
        "POST",
        "/api/v1/metrics/contracts",
        {
            "customer": "Operator",
            "name": "Province 2026",
            "org_unit_id": province.id,
            "starts_on": "2026-01-01",
            "ends_on": "2026-12-31",
            "price_fen": 4_000_000,
            "fixed_share": "0.6",
            "formula": "linear",
        },
    )
    assert resp.status_code == 201, resp.get_json()
    contract = resp.get_json()
    q1 = contract["periods"][0]
    resp = admin.api(
        "POST",
        f"/api/v1/metrics/contracts/{contract['id']}/targets",
        {
            "metric": "follows",
            "org_unit_id": province.id,
            "starts_on": "2026-02-01",
            "ends_on": "2026-02-28",
            "target_value": "10",
        },
    )
    assert resp.status_code == 201 and resp.get_json()["actual"] == "8"
    # Analysts read, never write.
    assert city_analyst.api("POST", "/api/v1/metrics/contracts", {}).status_code == 403
    assert (
        province_analyst.api(
            "POST", f"/api/v1/metrics/contracts/{contract['id']}/periods/{q1['id']}/close"
        ).status_code
        == 403
    )
    assert (
        province_analyst.form(
            f"/console/metrics/contracts/{contract['id']}",
            {"metric": "follows", "scope": f"unit:{province.id}"},
        ).status_code
        == 403
    )
    # The province analyst sees the whole province's contract and figures; the city analyst does not.
    period = province_analyst.api(
        "GET", f"/api/v1/metrics/contracts/{contract['id']}/periods/{q1['id']}"
    ).get_json()
    assert period["targets"][0]["attainment"] == "0.8000" and period["fee"]["lines"]
    assert city_analyst.api("GET", f"/api/v1/metrics/contracts/{contract['id']}").status_code == 404
    assert city_analyst.get(f"/console/metrics/org-units/{province.id}").status_code == 404
    assert city_analyst.get(f"/console/metrics/org-units/{city.id}").status_code == 200
    assert city_analyst.api("GET", f"/api/v1/metrics/accounts/{a2.id}/daily").status_code == 404
    summary = province_analyst.api(
        "GET", f"/api/v1/metrics/org-units/{province.id}/summary?from=2026-02-01&to=2026-02-28"
    )
    assert summary.get_json()["figures"]["follows"] == "8"
    ranks = city_analyst.api(
        "GET", "/api/v1/metrics/rankings?metric=follows&from=2026-02-01&to=2026-02-28"
    ).get_json()
    assert [r["name"] for r in ranks] == ["City account"]
    # Support has no metrics permission at all.
    assert support.get("/console/metrics").status_code == 403
    assert support.api("GET", f"/api/v1/metrics/accounts/{a1.id}/daily").status_code == 403
    # Pages render for the readers.
    for url in (
        "/console/metrics",
        f"/console/metrics/accounts/{a1.id}?from=2026-02-01&to=2026-02-28",
        "/console/metrics/report?month=2026-02",
        "/console/metrics/contracts",
        f"/console/metrics/contracts/{contract['id']}/periods/{q1['id']}",
        "/console/metrics/manual",
    ):
        resp = province_analyst.get(url)
        assert resp.status_code == 200, url
    report = province_analyst.get("/console/metrics/report?month=2026-02").get_data(as_text=True)
    assert "@media print" in report and "Province account" in report
    account_page = province_analyst.get(f"/console/metrics/accounts/{a1.id}?from=2026-02-01&to=2026-02-28")
    assert "<svg" in account_page.get_data(as_text=True)


def test_exports_csv_and_xlsx(app: Flask, create_account: Any, create_staff: Any) -> None:
    from openpyxl import load_workbook

    account, _, _ = create_account("plain", name="Export account")
    _follows(account.id, 2, "2026-02-10T02:00:00")
    rollups.rebuild(date(2026, 2, 1), date(2026, 2, 28))
    db.session.commit()
    analyst = create_staff("analyst", account_id=account.id)
    base = f"/console/metrics/accounts/{account.id}?from=2026-02-01&to=2026-02-28&export=daily"
    csv = analyst.get(base + "&format=csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.get_data(as_text=True).lstrip("\ufeff").splitlines()
    assert lines[0].startswith("day,follows") and "2026-02-10,2," in lines[10]
    xlsx = analyst.get(base + "&format=xlsx")
    sheet = load_workbook(io.BytesIO(xlsx.data)).active
    assert [c.value for c in sheet[1]][:2] == ["day", "follows"] and sheet.max_row == 29
    assert analyst.get(base.replace("export=daily", "export=nope") + "&format=csv").status_code == 404


def test_openapi_documents_every_metrics_route(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    doc = admin.get("/api/v1/openapi.json").get_json()
    documented = {p for p in doc["paths"] if p.startswith("/api/v1/metrics")}
    routes = {
        r.rule.replace("<int:", "{").replace(">", "}")
        for r in app.url_map.iter_rules()
        if r.rule.startswith("/api/v1/metrics")
    }
    assert routes and routes <= documented


def test_manual_figures_and_closing_through_the_console(
    app: Flask, create_account: Any, create_staff: Any
) -> None:
    from metrics.models import ContractPeriod

    account, _, _ = create_account("plain", name="Manual account")
    admin = create_staff(admin=True)
    resp = admin.form(
        "/console/metrics/contracts",
        {
            "customer": "Op",
            "name": "Console contract",
            "starts_on": "2025-01-01",
            "ends_on": "2025-12-31",
            "price": "12000.00",
            "fixed_share": "0.6",
            "formula": "tiered",
            "tiers": "1.0: 1.0\n0.9: 0.8",
        },
    )
    assert resp.status_code == 302
    contract_id = int(resp.headers["Location"].rstrip("/").split("/")[-1])
    period = db.session.query(ContractPeriod).filter_by(contract_id=contract_id, seq=1).one()
    resp = admin.form(
        "/console/metrics/manual",
        {
            "metric": "support_quality",
            "scope": f"account:{account.id}",
            "starts_on": "2025-01-01",
            "ends_on": "2025-03-31",
            "value": "95",
        },
    )
    assert resp.status_code == 302 and "95" in admin.get("/console/metrics/manual").get_data(as_text=True)
    admin.form(
        f"/console/metrics/contracts/{contract_id}",
        {
            "metric": "support_quality",
            "scope": f"account:{account.id}",
            "starts_on": "2025-01-01",
            "ends_on": "2025-03-31",
            "target_value": "100",
        },
    )
    resp = admin.form(f"/console/metrics/contracts/{contract_id}/periods/{period.id}", {"action": "close"})
    assert resp.status_code == 302
    db.session.expire_all()
    period = db.session.get(ContractPeriod, period.id)
    # 12,000.00 yuan: 7,200.00 fixed → 1,800.00 a quarter; 0.95 → tier 0.8 of 1,200.00 = 960.00.
    assert period.status.value == "closed" and period.fee_fen == 180_000 + 96_000
    page = admin.get(f"/console/metrics/contracts/{contract_id}/periods/{period.id}").get_data(as_text=True)
    assert "frozen" in page and "2,760.00" in page


def test_fee_pages_print_plain_numbers_and_every_derivation_amount_in_yuan(
    app: Flask, create_account: Any, create_staff: Any
) -> None:
    import re

    from metrics import contracts

    account, _, _ = create_account("plain", name="Fee page account")
    contract = contracts.create_contract(
        None,
        {
            "customer": "Operator",
            "name": "Plain numbers",
            "starts_on": date(2025, 1, 1),
            "ends_on": date(2025, 12, 31),
            "price_fen": 120_000_000,
            "fixed_share": "0.6",
            "formula": "linear",
        },
    )
    period = contracts.periods_of(contract.id)[0]
    for metric, value, weight in (("follows", "60", "10"), ("gmv_fen", "500000", "1")):
        contracts.add_target(
            None,
            contract,
            {
                "metric": metric,
                "account_id": account.id,
                "starts_on": date(2025, 1, 1),
                "ends_on": date(2025, 3, 31),
                "target_value": value,
                "weight": weight,
            },
        )
    db.session.commit()
    admin = create_staff(admin=True)
    contract_page = admin.get(f"/console/metrics/contracts/{contract.id}").get_data(as_text=True)
    period_page = admin.get(f"/console/metrics/contracts/{contract.id}/periods/{period.id}").get_data(
        as_text=True
    )
    for page in (contract_page, period_page):
        assert "E+" not in page
        assert re.search(r'<td class="num">60</td><td class="num">10</td>', page), "target 60, weight 10"
    # The derivation: amounts in 元 (1,200,000.00 元 = 120,000,000 fen), never the fen figures.
    assert "1200000.00 × 0.6" in period_page and "1200000.00 − 720000.00" in period_page
    assert "180000.00 + " in period_page
    for fen_figure in ("120000000", "72000000", "48000000", "18000000", "12000000", "500000 "):
        assert fen_figure not in period_page, fen_figure
    # A money target's line reads in 元 too: 5,000.00 元, not 500000.
    assert "0.00 元 / 5000.00 元" in period_page
