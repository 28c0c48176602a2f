"""Content-Security-Policy (review #4): on every console and H5 page, on API answers, and every
inline script or style in every template carrying this response's nonce (nothing inline runs
without it: no event-handler attributes, no javascript: URLs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.helpers import ROOT
from tests.store.test_h5 import H5

TEMPLATES = sorted(
    p for p in ROOT.glob("*/templates/**/*.html") if ".venv" not in p.parts and "tests" not in p.parts
)
TAG_RE = re.compile(r"<(script|style)\b([^>]*)>", re.I)
HANDLER_RE = re.compile(r"<[a-z][^>]*\s(on[a-z]+)\s*=", re.I)
NONCE_ATTR = 'nonce="{{ csp_nonce() }}"'


def _directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_the_templates_are_found() -> None:
    names = {p.name for p in TEMPLATES}
    assert {"base.html", "pay.html", "editor.html", "campaign.html", "_m.html"} <= names


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_inline_code_without_the_nonce(path: Path) -> None:
    text = path.read_text()
    for tag, attrs in TAG_RE.findall(text):
        if "src=" in attrs or 'type="application/json"' in attrs:
            continue  # a file from an allowed origin, or data the browser never runs
        assert NONCE_ATTR in attrs, f"<{tag}{attrs}> in {path.name} has no CSP nonce"
    assert not HANDLER_RE.search(text), f"an inline event handler in {path.name}"
    assert "javascript:" not in text.lower(), path.name


def _inline_nonces(body: str) -> list[str]:
    found = []
    for tag, attrs in TAG_RE.findall(body):
        if "src=" in attrs or 'type="application/json"' in attrs:
            continue
        match = re.search(r'nonce="([^"]+)"', attrs)
        found.append(match.group(1) if match else f"<{tag}> without a nonce")
    return found


def _check_page(resp: Any, *, h5: bool) -> dict[str, list[str]]:
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    policy = _directives(resp.headers["Content-Security-Policy"])
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    scripts = policy["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    assert ("https://res.wx.qq.com" in scripts) is h5
    nonces = _inline_nonces(resp.get_data(as_text=True))
    for nonce in nonces:
        assert f"'nonce-{nonce}'" in scripts, nonce
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    return {"nonces": nonces, **policy}


def test_console_pages_carry_the_policy_and_their_scripts_its_nonce(
    app: Flask, create_staff: Any, create_account: Any
) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    login = _check_page(app.test_client().get("/console/login"), h5=False)
    assert login["form-action"] == ["'self'"]
    assert _check_page(admin.get("/console/"), h5=False)
    editor = _check_page(admin.get("/console/campaigns/new"), h5=False)
    # The editor's code is a static file (no inline script to trust); its data is inert JSON.
    assert editor["nonces"] == []
    assert 'src="/console/static/campaigns/editor.js"' in admin.get("/console/campaigns/new").get_data(True)
    metrics = _check_page(admin.get(f"/console/metrics/accounts/{account.id}"), h5=False)
    assert len(metrics["nonces"]) == 1  # the charts' stylesheet
    # A fresh nonce per response.
    again = _check_page(admin.get(f"/console/metrics/accounts/{account.id}"), h5=False)
    assert again["nonces"] != metrics["nonces"]


def test_h5_pages_allow_the_jssdk_host_and_carry_the_nonce(
    app: Flask, create_account: Any, simulator: str
) -> None:
    _, fields, _ = create_account("plain", kind="service")
    h5 = H5(app, simulator, fields["appid"])
    page = _check_page(h5.login("oCSP000000000001"), h5=True)
    assert 'id="wx-config"' in h5.get(f"/h5/{fields['appid']}/").get_data(as_text=True)
    assert len(page["nonces"]) == 1  # wx.config's call
    assert "res2.wx.qq.com" in " ".join(page["script-src"])


def test_api_answers_may_not_run_or_be_framed(app: Flask, create_staff: Any) -> None:
    for resp in (app.test_client().get("/api/v1/accounts"), create_staff(admin=True).get("/api/v1/session")):
        assert resp.mimetype == "application/json"
        policy = _directives(resp.headers["Content-Security-Policy"])
        assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]


def test_server_drawn_charts_escape_every_text() -> None:
    from metrics import charts

    evil = '"><script>alert(1)</script>'
    svg = str(charts.line_chart([(evil, [(evil, 1), ("b", 2)])], title=evil)) + str(charts.gauge("0.5", evil))
    assert "<script" not in svg and evil not in svg and "&#34;&gt;&lt;script&gt;" in svg
