"""Input validation at the API's door (review #24–#28): control characters, dates and months,
bounded ranges, outside systems' failures, and an OpenAPI document that says what is enforced."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from accounts import qrcodes, services, staff
from metrics.registry import REGISTRY
from tests import helpers


def _invalid(resp: Any, field: str) -> dict[str, Any]:
    assert resp.status_code == 400, (resp.status_code, resp.get_data(as_text=True)[:300])
    body = resp.get_json()["error"]
    assert body["code"] == "invalid_input" and field in body["fields"], body
    return body


# -- #24 control characters ------------------------------------------------------------------------


def test_nul_in_a_query_argument_is_a_400_naming_it(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    _invalid(admin.get("/api/v1/audit?action=login%00x"), "action")
    _invalid(admin.get("/api/v1/audit?action=%1b[31m"), "action")
    assert admin.get("/api/v1/audit?action=login").status_code == 200


def test_control_characters_in_bodies_are_refused_tab_and_newline_kept_where_multiline(
    app: Flask, create_account: Any, create_staff: Any
) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    rules = f"/api/v1/accounts/{account.id}/rules"
    reply = {"content": "hello"}
    _invalid(admin.api("POST", rules, {"name": "a\x00b", "keywords": ["hi"], "reply": reply}), "name")
    _invalid(admin.api("POST", rules, {"name": "ok", "keywords": ["h\x00i"], "reply": reply}), "keywords")
    _invalid(
        admin.api("POST", rules, {"name": "ok", "keywords": ["hi"], "reply": {"content": "x\x00"}}), "reply"
    )
    made = admin.api(
        "POST", rules, {"name": "ok", "keywords": ["hi"], "reply": {"content": "line 1\n\tline 2"}}
    )
    assert made.status_code == 201, made.get_json()
    _invalid(admin.api("PATCH", f"/api/v1/accounts/{account.id}", {"name": "new\nname"}), "name")


def test_nul_in_the_mini_program_api_is_a_400(app: Flask, create_account: Any) -> None:
    _, fields, _ = create_account("plain", kind="mini_program")
    resp = app.test_client().post(f"/api/mp/{fields['appid']}/session", json={"code": "abc\x00"})
    _invalid(resp, "code")


def test_a_body_that_is_not_an_object_is_a_400_in_the_error_shape(app: Flask, create_staff: Any) -> None:
    # Found by schemathesis: the error's "fields" was a list, not an object.
    admin = create_staff(admin=True)
    for body in (["x"], "text", 3):
        resp = admin.api("POST", "/api/v1/staff", body)
        assert resp.status_code == 400
        error = resp.get_json()["error"]
        assert error["code"] == "invalid_input" and list(error["fields"]) == ["_schema"], error


def test_ids_beyond_the_columns_range_are_400(app: Flask, create_staff: Any) -> None:
    # Found by schemathesis: account_ids of 2**31 reached PostgreSQL (integer out of range).
    admin = create_staff(admin=True)
    resp = admin.api("POST", "/api/v1/campaigns/audience", {"account_ids": [2**31]})
    _invalid(resp, "account_ids")
    _invalid(admin.get(f"/api/v1/audit?account={2**31}"), "account")


# -- #25 dates and months --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("month=8865-40", "month"),
        ("month=2026-13", "month"),
        ("month=2026-2", "month"),
    ],
)
def test_bad_months_are_400(app: Flask, create_staff: Any, query: str, field: str) -> None:
    admin = create_staff(admin=True)
    _invalid(admin.get(f"/api/v1/metrics/report?{query}"), field)


def test_bad_dates_are_400_everywhere(app: Flask, create_account: Any, create_staff: Any) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    daily = f"/api/v1/metrics/accounts/{account.id}/daily"
    _invalid(admin.get(f"{daily}?from=2026-02-30"), "from")
    _invalid(admin.get(f"{daily}?to=9999-12-31"), "to")
    contract = {
        "customer": "c",
        "name": "n",
        "starts_on": "0001-01-01",
        "ends_on": "2026-12-31",
        "price_fen": 100,
        "fixed_share": "0.5",
        "formula": "linear",
    }
    _invalid(admin.api("POST", "/api/v1/metrics/contracts", contract), "starts_on")
    segment = {"account_ids": [account.id], "segment": {"followed_after": "1670-01-01"}}
    _invalid(admin.api("POST", "/api/v1/campaigns/audience", segment), "segment")


# -- #27 bounded ranges ----------------------------------------------------------------------------


def test_unbounded_ranges_are_400_at_once(app: Flask, create_account: Any, create_staff: Any) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    started = time.monotonic()
    for path in ("daily", "summary", "reconciliation"):
        url = f"/api/v1/metrics/accounts/{account.id}/{path}"
        _invalid(admin.get(f"{url}?from=1670-02-28"), "from")
        _invalid(admin.get(f"{url}?from=2020-01-01&to=2026-01-01"), "from")
        _invalid(admin.get(f"{url}?from=2026-02-01&to=2026-01-01"), "from")
    _invalid(admin.get("/api/v1/metrics/rankings?from=2001-01-01"), "from")
    assert time.monotonic() - started < 5
    ok = admin.get(
        f"/api/v1/metrics/accounts/{account.id}/daily?from=2025-01-01&to=2026-12-31&metric=follows"
    )
    assert ok.status_code == 200 and len(ok.get_json()) == 730
    _invalid(admin.get("/api/v1/accounts?per_page=100000"), "per_page")


# -- #26 outside systems ---------------------------------------------------------------------------


def test_wechat_unreachable_is_a_503_in_the_error_shape(
    app: Flask, create_account: Any, create_staff: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    closed = f"http://127.0.0.1:{helpers.free_port()}/wechat"  # nothing listens there
    monkeypatch.setitem(app.config, "WECHAT_API_BASE", closed)
    monkeypatch.delitem(app.extensions, "wechat_tokens", raising=False)  # rebuilt on the closed port
    resp = admin.api("POST", f"/api/v1/accounts/{account.id}/templates/sync")
    assert resp.status_code == 503, resp.get_data(as_text=True)[:300]
    assert resp.get_json() == {
        "error": {
            "code": "upstream_unavailable",
            "message": "WeChat is unavailable; try again later",
            "fields": {},
        }
    }
    assert resp.headers["Retry-After"]
    assert "127.0.0.1" not in resp.get_data(as_text=True)


def test_outside_systems_map_to_502_or_503(app: Flask) -> None:
    from payments.providers.base import PaymentProviderError
    from store.boss import BossError, BossUnavailableError
    from wechat_service.errors import upstream_error
    from wechat_service.gateway import BadTemplateError, BusyError

    assert upstream_error(BossUnavailableError("TIMEOUT"))[0] == 503  # type: ignore[index]
    assert upstream_error(BossError("REFUSED"))[0] == 502  # type: ignore[index]
    assert upstream_error(BusyError(-1, "busy"))[0] == 503  # type: ignore[index]
    assert upstream_error(BadTemplateError(40037, "bad"))[0] == 502  # type: ignore[index]
    assert upstream_error(PaymentProviderError("WeChat Pay unreachable: ConnectTimeout"))[0] == 503  # type: ignore[index]
    assert upstream_error(ValueError("ours")) is None


# -- #28 the document says what is enforced --------------------------------------------------------


def _doc(app: Flask) -> dict[str, Any]:
    return app.test_client().get("/api/v1/openapi.json").get_json()


def _body(doc: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[-1]
    return doc["components"]["schemas"][name]


def _prop(doc: dict[str, Any], schema: dict[str, Any], name: str) -> dict[str, Any]:
    prop = schema["properties"][name]
    if "$ref" in prop:
        return doc["components"]["schemas"][prop["$ref"].rsplit("/", 1)[-1]]
    return prop


def test_openapi_states_the_services_rules(app: Flask) -> None:
    doc = _doc(app)
    account = _body(doc, "/api/v1/accounts")
    assert _prop(doc, account, "appid")["pattern"] == services.APPID_RE.pattern
    assert _prop(doc, account, "original_id")["pattern"] == services.ORIGINAL_ID_RE.pattern
    assert _prop(doc, account, "token")["pattern"] == services.TOKEN_RE.pattern
    assert "Asia/Shanghai" in _prop(doc, account, "timezone")["enum"]
    assert _prop(doc, account, "aes_key")["pattern"] == "^[A-Za-z0-9]{43}$"
    qr = _body(doc, "/api/v1/accounts/{account_id}/qrcodes")
    assert _prop(doc, qr, "scene")["pattern"] == qrcodes.SCENE_RE.pattern
    assert _prop(doc, qr, "expire_seconds")["maximum"] == qrcodes.MAX_TEMPORARY_SECONDS
    rule = _body(doc, "/api/v1/accounts/{account_id}/rules")
    assert _prop(doc, rule, "keywords")["maxItems"] == 50
    assert {"content", "media_id", "articles"} <= set(_prop(doc, rule, "reply")["properties"])
    menu = _body(doc, "/api/v1/accounts/{account_id}/menu", "put")
    buttons = _prop(doc, menu, "button")
    assert buttons["maxItems"] == 3 and buttons["minItems"] == 1
    button = doc["components"]["schemas"][buttons["items"]["$ref"].rsplit("/", 1)[-1]]
    assert _prop(doc, button, "type")["enum"] == ["click", "view", "miniprogram"]
    person = _body(doc, "/api/v1/staff")
    assert _prop(doc, person, "username")["pattern"] == staff.USERNAME_RE.pattern
    assert _prop(doc, person, "password")["minLength"] == staff.MIN_PASSWORD
    campaign = _body(doc, "/api/v1/campaigns")
    assert _prop(doc, campaign, "template_id")["maxLength"] == 128
    assert _prop(doc, campaign, "data")["maxProperties"] == 50
    contract = _body(doc, "/api/v1/metrics/contracts")
    assert {"floor", "tiers"} <= set(_prop(doc, contract, "formula_params")["properties"])
    assert _prop(doc, contract, "fixed_share")["maximum"] == 1
    manual = _body(doc, "/api/v1/metrics/manual")
    assert _prop(doc, manual, "metric")["enum"] == [k for k, m in REGISTRY.items() if m.manual]
    session = _body(doc, "/api/mp/{appid}/session")
    assert _prop(doc, session, "code")["maxLength"] == 128


# -- malformed console input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "probe",
    [
        (
            "form",
            "/console/accounts/{a}/menu",
            {"0-top": "x", "0-sub": "", "0-name": "A", "0-type": "click", "0-value": "K"},
        ),
        ("api", "/api/v1/accounts/{a}/menu", {"button": [{"type": ["click"], "name": "A", "key": "K"}]}),
        ("api", "/api/v1/accounts/{a}", {"timezone": "America"}),
        (
            "api",
            "/api/v1/accounts/{a}/rules",
            {"name": "r" * 200, "keywords": ["k"], "reply": {"content": "c"}},
        ),
        (
            "api",
            "/api/v1/accounts/{a}/rules",
            {"name": "r", "priority": 10**12, "keywords": ["k"], "reply": {"content": "c"}},
        ),
        ("get", "/console/accounts/{a}/subscribers?page=2&endpoint=x&_method=POST", None),
        ("get", "/api/v1/accounts?page=100000000000000000000", None),
        ("get", "/console/accounts/99999999999999", None),
        ("get", "/api/v1/accounts/99999999999999", None),
    ],
)
def test_malformed_console_input_is_a_4xx_not_a_500(
    probe: tuple[str, str, Any], create_staff: Any, create_account: Any
) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    kind, url, body = probe
    url = url.format(a=account.id)
    if kind == "form":
        resp = admin.form(url, body)
    elif kind == "api":
        method = "PUT" if url.endswith("/menu") else "POST" if url.endswith("/rules") else "PATCH"
        resp = admin.api(method, url, body)
    else:
        resp = admin.get(url)
    assert resp.status_code < 500, resp.get_data(as_text=True)[:300]
    if kind == "form":  # the form comes back with the problem shown
        assert resp.status_code == 200 and "invalid slot" in resp.get_data(as_text=True)
    elif kind == "api" or "999999" in url:
        assert 400 <= resp.status_code < 500
