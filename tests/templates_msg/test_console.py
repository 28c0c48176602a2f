"""The campaign console and its API: the deliveries CSV masks openids as the console does (a full
export is explicit and audited), the editor renders template content from WeChat inert, and the
campaign API reads a sent campaign and cancels a draft."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts.masking import mask_id
from accounts.models import AuditLog
from templates_msg import services
from templates_msg.models import Delivery
from tests import helpers
from tests.templates_msg.test_campaigns import _campaign, _run, _start
from wechat_service.extensions import db


@pytest.fixture
def sent(app: Flask, create_account: Any, simulator: str) -> dict[str, Any]:
    """An account with 12 followers and a campaign sent to all of them through the simulator."""
    account, fields, _ = create_account("plain")
    helpers.seed_campaign_account(simulator, account.id, fields["appid"], 12, "oCSV" + fields["appid"][-6:])
    campaign = _campaign(account.id)
    _start(campaign)
    _run(campaign.id)
    openids = sorted(
        db.session.scalars(sa.select(Delivery.openid).where(Delivery.campaign_id == campaign.id))
    )
    assert len(openids) == 12
    return {"account": account, "campaign_id": campaign.id, "openids": openids, "appid": fields["appid"]}


def _csv(resp: Any) -> list[dict[str, str]]:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))


def _export_audits() -> list[AuditLog]:
    return list(
        db.session.scalars(
            sa.select(AuditLog).where(AuditLog.action == "campaign.export_openids").order_by(AuditLog.id)
        )
    )


# -- #2: the deliveries CSV ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "shown", "may_export_full"),
    [
        ("analyst", "none", False),  # no subscriber access at all: no openids, not even masked
        ("marketer", "none", False),
        ("account_manager", "masked", False),  # sees subscribers masked, has no reveal right
        ("support", "masked", True),  # masked, and the audited reveal
        (None, "masked", True),  # the administrator: full openids only when asked, audited
    ],
)
def test_deliveries_csv_masks_openids_like_the_console(
    sent: dict[str, Any], create_staff: Any, role: str | None, shown: str, may_export_full: bool
) -> None:
    aid, cid, openids = sent["account"].id, sent["campaign_id"], sent["openids"]
    user = create_staff(role, account_id=aid) if role else create_staff(admin=True)
    url = f"/api/v1/campaigns/{cid}/deliveries.csv"

    resp = user.get(url)
    rows = _csv(resp)
    body = resp.get_data(as_text=True)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"sent"}
    assert not any(o in body for o in openids), "a full openid in the default export"
    got = sorted(r["openid"] for r in rows)
    assert got == (sorted(mask_id(o) for o in openids) if shown == "masked" else [""] * 12)
    assert _export_audits() == []

    # A full export is asked for explicitly (a POST: a link cannot trigger it), with a reason,
    # and goes in the audit log. The GET takes no such parameter.
    sneaky = user.get(url, query_string={"openids": "full", "reason": "complaint #4711"})
    assert not any(o in sneaky.get_data(as_text=True) for o in openids)
    refused = user.api("POST", url, json={})
    assert refused.status_code == 400
    assert "reason" in refused.get_json()["error"]["fields"]
    resp = user.api("POST", url, json={"reason": "complaint #4711"})
    if not may_export_full:
        assert resp.status_code == 403 and resp.get_json()["error"]["code"]
        assert _export_audits() == []
        return
    assert sorted(r["openid"] for r in _csv(resp)) == openids
    (entry,) = _export_audits()
    assert entry.account_id == aid and entry.after["reason"] == "complaint #4711"
    assert entry.target.startswith(f"campaign {cid} ")
    # The console's form posts with its CSRF token; without it nothing is exported or audited.
    page = f"/console/campaigns/{cid}/deliveries.csv"
    assert user.client.post(page, data={"reason": "complaint #4712"}).status_code == 400
    assert len(_export_audits()) == 1
    resp = user.form(page, {"reason": "complaint #4712"})
    assert sorted(r["openid"] for r in _csv(resp)) == openids
    assert len(_export_audits()) == 2


def test_deliveries_csv_of_a_stranger_campaign_is_not_found(
    sent: dict[str, Any], create_staff: Any, create_account: Any
) -> None:
    other, _, _ = create_account("plain")
    stranger = create_staff("support", account_id=other.id)
    url = f"/api/v1/campaigns/{sent['campaign_id']}/deliveries.csv"
    assert stranger.get(url).status_code == 404
    assert stranger.api("POST", url, json={"reason": "just looking"}).status_code == 404
    assert _export_audits() == []


# -- #4: template content from WeChat in the editor ------------------------------------------------


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._open, self._text = dict(attrs), []
        for name, _ in attrs:
            assert not name.startswith("on"), f"inline handler {name} on <{tag}>"

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._open is not None:
            self.scripts.append((self._open, "".join(self._text)))
            self._open = None


def test_template_content_from_wechat_renders_inert_in_the_editor(
    app: Flask, create_account: Any, simulator: str, create_staff: Any
) -> None:
    account, fields, _ = create_account("plain")
    evil = "{{first.DATA}}</script><script>alert(1)</script>\n套餐：{{keyword1.DATA}} <!-- & ' \""
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/templates",
        json={"templates": [{"template_id": "TPL_EVIL", "title": "恶意", "content": evil, "example": ""}]},
        timeout=10,
    ).raise_for_status()
    services.sync_templates(account.id)
    db.session.commit()
    marketer = create_staff("marketer", account_id=account.id)
    resp = marketer.get("/console/campaigns/new")
    assert resp.status_code == 200
    parser = _Scripts()
    parser.feed(resp.get_data(as_text=True))
    parser.close()
    data = [text for attrs, text in parser.scripts if attrs.get("id") == "tpl-data"]
    assert len(data) == 1 and "<" not in data[0]
    assert json.loads(data[0])["TPL_EVIL"]["content"] == evil  # the data survives intact
    # No script runs but the editor's own file: every other script is the JSON data.
    for attrs, text in parser.scripts:
        if attrs.get("type") == "application/json":
            continue
        assert attrs.get("src") and not text.strip(), f"inline script: {text[:80]!r}"
    src = next(a["src"] for a, _ in parser.scripts if a.get("src"))
    with marketer.get(src) as js:
        assert js.status_code == 200 and b"tpl-data" in js.get_data()


# -- #16: the campaign API after a send, and cancel ------------------------------------------------


def test_a_sent_campaign_reads_and_a_cancel_answers(sent: dict[str, Any], create_staff: Any) -> None:
    aid, cid = sent["account"].id, sent["campaign_id"]
    admin = create_staff(admin=True)
    resp = admin.get(f"/api/v1/campaigns/{cid}")
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    body = resp.get_json()
    assert body["state"] == "completed" and body["started_at"] and body["finished_at"]
    assert body["account_ids"] == [aid]
    listed = admin.get("/api/v1/campaigns").get_json()["items"]
    assert [c for c in listed if c["id"] == cid] == [body]

    marketer = create_staff("marketer", account_id=aid)
    draft = marketer.api(
        "POST",
        "/api/v1/campaigns",
        {"name": "to cancel", "account_ids": [aid], "template_id": "TPL_PROMO", "data": {"first": "x"}},
    ).get_json()
    resp = marketer.api("POST", f"/api/v1/campaigns/{draft['id']}/cancel", {"reason": "not needed"})
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.get_json()["state"] == "cancelled" and resp.get_json()["finished_at"]
    assert resp.get_json()["state_reason"] == "not needed"
