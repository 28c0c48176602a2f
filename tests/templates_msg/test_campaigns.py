"""Campaigns in-process: templates, the state machine, approval (four eyes also when the approver
edited the draft), segments, dispatch against the simulator over HTTP (real PostgreSQL, Redis),
error classification, reports, clicks, attribution."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts.models import Subscriber
from simulator.driver import event_fields, message_xml, signed_request
from templates_msg import reports, services, tracking
from templates_msg.models import Campaign, CampaignAccount, CampaignState, Delivery, OptOut
from templates_msg.sending import budget, planning, recovery, sender
from tests import helpers
from wechat_service.extensions import db

S = CampaignState


def test_fields_are_parsed_with_their_labels_and_previewed() -> None:
    fields = services.parse_fields(helpers.CAMPAIGN_TEMPLATE["content"])
    assert fields == [
        {"name": "first", "label": "first"},
        {"name": "keyword1", "label": "套餐名称"},
        {"name": "keyword2", "label": "优惠价格"},
        {"name": "remark", "label": "remark"},
    ]
    text = services.preview(
        helpers.CAMPAIGN_TEMPLATE["content"], {"first": "您好 {{account_name}}", "keyword1": "10G"}
    )
    assert text.startswith("您好 示例账号\n套餐名称：10G\n优惠价格：[keyword2]")


ALL = list(CampaignState)


@pytest.mark.parametrize("source", ALL)
@pytest.mark.parametrize("target", ALL)
def test_state_machine_truth_table(source: CampaignState, target: CampaignState) -> None:
    allowed = {
        (S.draft, S.pending_approval),
        (S.draft, S.cancelled),
        (S.pending_approval, S.scheduled),
        (S.pending_approval, S.draft),
        (S.pending_approval, S.cancelled),
        (S.scheduled, S.sending),
        (S.scheduled, S.cancelled),
        (S.scheduled, S.draft),
        (S.sending, S.paused),
        (S.sending, S.completed),
        (S.sending, S.cancelled),
        (S.sending, S.failed),
        (S.paused, S.sending),
        (S.paused, S.cancelled),
        (S.paused, S.failed),
    }
    assert (target in services.ALLOWED.get(source, set())) == ((source, target) in allowed)


@pytest.fixture
def promo(app: Flask, create_account: Any, simulator: str) -> dict[str, Any]:
    account, fields, target = create_account("plain")
    ids = helpers.seed_campaign_account(
        simulator, account.id, fields["appid"], 300, "oP" + fields["appid"][-6:]
    )
    return {"account": account, "appid": fields["appid"], "target": target, "subscriber_ids": ids}


def _campaign(account_id: int, **fields: Any) -> Campaign:
    data = {"first": "你好", "keyword1": "10G 流量包", "keyword2": "9.9 元", "remark": "{{account_name}}"}
    campaign = services.create_campaign(
        None, [account_id], "TPL_PROMO", {"name": "promo", "data": data, "rate": 0, **fields}
    )
    db.session.commit()
    return campaign


def _start(campaign: Campaign) -> None:
    services.transition(campaign.id, S.draft, S.pending_approval)
    services.transition(campaign.id, S.pending_approval, S.scheduled)
    db.session.commit()
    assert recovery.start(campaign.id)


def _run(campaign_id: int) -> None:
    """What the workers would do, in this process: plan, then every batch."""
    planning.plan(campaign_id)
    for account_id, batch in db.session.execute(
        sa.select(Delivery.account_id, Delivery.batch_no)
        .where(Delivery.campaign_id == campaign_id)
        .distinct()
    ).all():
        sender.send_batch(campaign_id, account_id, batch)


def _statuses(campaign_id: int) -> dict[str, int]:
    return {
        s.value: n
        for s, n in db.session.execute(
            sa.select(Delivery.status, sa.func.count())
            .where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.status)
        )
    }


def test_approval_needs_the_right_and_another_user(
    app: Flask, promo: dict[str, Any], create_staff: Any, create_account: Any
) -> None:
    create_account_fixture_holder = {"factory": create_account}
    aid = promo["account"].id
    marketer = create_staff("marketer", account_id=aid)
    approver = create_staff("marketer", account_id=aid, can_approve=True)
    resp = marketer.api(
        "POST",
        "/api/v1/campaigns",
        {
            "name": "spring",
            "account_ids": [aid],
            "template_id": "TPL_PROMO",
            "data": {"first": "hi"},
            "segment": {},
        },
    )
    assert resp.status_code == 201, resp.get_json()
    cid = resp.get_json()["id"]
    assert marketer.api("POST", f"/api/v1/campaigns/{cid}/approve", {}).status_code == 403  # no approve right
    assert (
        marketer.api("POST", f"/api/v1/campaigns/{cid}/submit", {}).get_json()["state"] == "pending_approval"
    )
    assert marketer.api("POST", f"/api/v1/campaigns/{cid}/pause", {}).status_code == 409
    resp = approver.api("POST", f"/api/v1/campaigns/{cid}/approve", {})
    assert resp.status_code == 200 and resp.get_json()["state"] == "scheduled"
    events = [(e.from_state, e.to_state) for e in services.history(cid)]
    assert events == [(None, "draft"), ("draft", "pending_approval"), ("pending_approval", "scheduled")]
    # The approver cannot approve what they prepared themselves.
    resp = approver.api(
        "POST",
        "/api/v1/campaigns",
        {"name": "own", "account_ids": [aid], "template_id": "TPL_PROMO", "data": {"first": "x"}},
    )
    own = resp.get_json()["id"]
    approver.api("POST", f"/api/v1/campaigns/{own}/submit", {})
    assert (
        approver.api("POST", f"/api/v1/campaigns/{own}/approve", {}).get_json()["error"]["code"]
        == "four_eyes"
    )
    # Someone granted on another account only does not see the campaign at all.
    other_account, _, _ = create_account_fixture_holder["factory"]("plain")
    stranger = create_staff("marketer", account_id=other_account.id, can_approve=True)
    assert stranger.api("POST", f"/api/v1/campaigns/{cid}/pause", {}).status_code == 404
    assert stranger.get(f"/console/campaigns/{cid}").status_code == 404
    assert marketer.get(f"/console/campaigns/{cid}").status_code == 200
    audit = db.session.scalars(
        sa.text("select action from audit_log where action like 'campaign.%' order by id")
    ).all()
    assert audit[:3] == ["campaign.create", "campaign.submit", "campaign.approve"]


# -- four eyes when the approver edited the draft --------------------------------------------------


@pytest.fixture
def team(app: Flask, create_account: Any, simulator: str, create_staff: Any) -> dict[str, Any]:
    account, fields, _ = create_account("plain")
    helpers.seed_campaign_account(simulator, account.id, fields["appid"], 3, "o4E" + fields["appid"][-6:])
    aid = account.id
    return {
        "account_id": aid,
        "marketer": create_staff("marketer", account_id=aid),
        "editor": create_staff("marketer", account_id=aid, can_approve=True),
        "third": create_staff("marketer", account_id=aid, can_approve=True),
    }


def _user_id(staff: Any) -> int:
    from accounts.models import StaffUser

    return db.session.scalar(sa.select(StaffUser.id).where(StaffUser.username == staff.username))


def _draft_edited_by_the_approver(team: dict[str, Any]) -> int:
    """The review's scenario: a marketer drafts, a user with the approve right changes the text
    and the link, the marketer submits."""
    marketer, editor = team["marketer"], team["editor"]
    resp = marketer.api(
        "POST",
        "/api/v1/campaigns",
        {
            "name": "autumn",
            "account_ids": [team["account_id"]],
            "template_id": "TPL_PROMO",
            "data": {"first": "秋季流量包", "keyword1": "10G"},
        },
    )
    assert resp.status_code == 201, resp.get_json()
    cid, version = resp.get_json()["id"], resp.get_json()["version"]
    resp = editor.api(
        "PATCH",
        f"/api/v1/campaigns/{cid}",
        {
            "version": version,
            "data": {"first": "点击领取大奖", "keyword1": "10G"},
            "link_url": "https://evil.example/win",
        },
    )
    assert resp.status_code == 200, resp.get_json()
    resp = marketer.api("POST", f"/api/v1/campaigns/{cid}/submit", {})
    assert resp.get_json()["state"] == "pending_approval"
    return cid


def test_who_edited_the_draft_cannot_approve_it_through_the_api(team: dict[str, Any]) -> None:
    cid = _draft_edited_by_the_approver(team)
    resp = team["editor"].api("POST", f"/api/v1/campaigns/{cid}/approve", {})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "four_eyes"
    assert db.session.get(Campaign, cid, populate_existing=True).state is S.pending_approval
    # The history names the editor and each changed field, before → after.
    edits = [e for e in services.history(cid) if e.changes]
    assert len(edits) == 1
    assert edits[0].actor_id == _user_id(team["editor"]) and edits[0].at is not None
    assert edits[0].changes == {
        "data": [{"first": "秋季流量包", "keyword1": "10G"}, {"first": "点击领取大奖", "keyword1": "10G"}],
        "link_url": [None, "https://evil.example/win"],
    }
    # A third user with the right approves: the legitimate path.
    resp = team["third"].api("POST", f"/api/v1/campaigns/{cid}/approve", {})
    assert resp.status_code == 200 and resp.get_json()["state"] == "scheduled"
    assert resp.get_json()["approved_by"] == _user_id(team["third"])


def test_who_edited_the_draft_cannot_approve_it_in_the_console(team: dict[str, Any]) -> None:
    cid = _draft_edited_by_the_approver(team)
    editor, third = team["editor"], team["third"]
    page = editor.get(f"/console/campaigns/{cid}").get_data(as_text=True)
    assert f"/console/campaigns/{cid}/approve" not in page and 'id="four-eyes"' in page
    # The edit is in the history with its fields, before → after.
    page = html.unescape(page)
    assert '<li class="change" data-field="data"><code>data</code>: {"first": "秋季流量包"' in page
    assert (
        '<li class="change" data-field="link_url"><code>link_url</code>: null → https://evil.example/win'
        in page
    )
    resp = editor.form(f"/console/campaigns/{cid}/approve")
    assert resp.status_code == 302
    assert db.session.get(Campaign, cid, populate_existing=True).state is S.pending_approval
    assert 'class="flash error"' in editor.get(f"/console/campaigns/{cid}").get_data(as_text=True)
    page = third.get(f"/console/campaigns/{cid}").get_data(as_text=True)
    assert f"/console/campaigns/{cid}/approve" in page
    third.form(f"/console/campaigns/{cid}/approve")
    assert db.session.get(Campaign, cid, populate_existing=True).state is S.scheduled


def test_an_edit_after_sending_back_bars_the_editor_from_the_next_approval(team: dict[str, Any]) -> None:
    """Sent back to draft, edited by the approver who sent it back: that version needs other eyes;
    an approver who only read it (or who edited an earlier, approved version) may approve."""
    marketer, editor, third = team["marketer"], team["editor"], team["third"]
    cid = marketer.api(
        "POST",
        "/api/v1/campaigns",
        {
            "name": "x",
            "account_ids": [team["account_id"]],
            "template_id": "TPL_PROMO",
            "data": {"first": "a"},
        },
    ).get_json()["id"]
    marketer.api("POST", f"/api/v1/campaigns/{cid}/submit", {})
    assert editor.api("POST", f"/api/v1/campaigns/{cid}/reject", {"reason": "wording"}).status_code == 200
    version = db.session.get(Campaign, cid, populate_existing=True).version
    resp = editor.api("PATCH", f"/api/v1/campaigns/{cid}", {"version": version, "data": {"first": "b"}})
    assert resp.status_code == 200
    # Saving the same values again changes nothing and is no edit.
    resp = third.api(
        "PATCH", f"/api/v1/campaigns/{cid}", {"version": resp.get_json()["version"], "data": {"first": "b"}}
    )
    assert resp.status_code == 200
    assert [e.actor_id for e in services.history(cid) if e.changes] == [_user_id(editor)]
    marketer.api("POST", f"/api/v1/campaigns/{cid}/submit", {})
    assert (
        editor.api("POST", f"/api/v1/campaigns/{cid}/approve", {}).get_json()["error"]["code"] == "four_eyes"
    )
    assert third.api("POST", f"/api/v1/campaigns/{cid}/approve", {}).get_json()["state"] == "scheduled"


def test_audience_counts_follow_the_segment(app: Flask, promo: dict[str, Any], create_staff: Any) -> None:
    aid = promo["account"].id
    assert services.audience([aid], {})["matching"] == 300
    assert services.audience([aid], {"active_within_days": 10})["matching"] == 300 * 10 // 60
    assert services.audience([aid], {"bound_phone": True})["matching"] == 0
    db.session.add(OptOut(account_id=aid, openid=f"oP{promo['appid'][-6:]}00000000"))
    db.session.commit()
    assert services.audience([aid], {}, sample_pct=50, control_pct=10) == {
        "matching": 299,
        "sampled": 149,
        "control": 14,
        "recipients": 135,
    }
    staff = create_staff("marketer", account_id=aid)
    resp = staff.api(
        "POST", "/api/v1/campaigns/audience", {"account_ids": [aid], "segment": {"frequency_cap_days": 3}}
    )
    assert resp.get_json()["matching"] == 299


def test_dispatch_sends_everyone_once_with_control_group(
    app: Flask, promo: dict[str, Any], simulator: str
) -> None:
    campaign = _campaign(promo["account"].id, control_pct=20, link_url="https://shop.example/promo")
    _start(campaign)
    _run(campaign.id)
    _run(campaign.id)  # a second run (duplicate jobs) sends nothing more
    counts = _statuses(campaign.id)
    assert counts["sent"] + counts["skipped"] == 300 and counts["skipped"] >= 40
    sent = helpers_sim(simulator, promo["appid"])["template_messages"]
    assert len(sent) == counts["sent"] and len({m["touser"] for m in sent}) == len(sent)
    assert sent[0]["data"]["remark"]["value"] == promo["account"].name  # per-recipient variable
    assert sent[0]["url"].startswith("http://service.test/t/")
    assert db.session.get(Campaign, campaign.id).state is S.completed


def helpers_sim(simulator: str, appid: str) -> dict[str, Any]:
    return requests.get(f"{simulator}/_sim/accounts/{appid}", timeout=10).json()


@pytest.mark.parametrize(
    ("errcode", "status", "campaign_state"),
    [
        (43004, "skipped", S.completed),
        (43101, "skipped", S.completed),
        (40003, "skipped", S.completed),
        (47003, "failed", S.failed),
        (40037, "failed", S.failed),
    ],
)
def test_error_classification(
    app: Flask,
    promo: dict[str, Any],
    simulator: str,
    errcode: int,
    status: str,
    campaign_state: CampaignState,
) -> None:
    campaign = _campaign(promo["account"].id)
    _start(campaign)
    requests.post(
        f"{simulator}/_sim/accounts/{promo['appid']}/faults",
        json={"kind": "errcode", "errcode": errcode, "count": 1},
        timeout=5,
    )
    _run(campaign.id)
    first = db.session.scalar(
        sa.select(Delivery).where(Delivery.campaign_id == campaign.id).order_by(Delivery.id).limit(1)
    )
    assert first.status.value == status and first.errcode == errcode
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.state is campaign_state
    if status == "skipped":
        assert (
            db.session.scalar(sa.select(OptOut.reason).where(OptOut.openid == first.openid))
            == f"errcode {errcode}"
        )
        assert _statuses(campaign.id)["sent"] == 299
    else:
        assert str(errcode) in campaign.state_reason and _statuses(campaign.id).get("sent", 0) == 0


def test_busy_is_retried_and_timeout_after_acceptance_is_unknown(
    app: Flask, promo: dict[str, Any], simulator: str
) -> None:
    app.config["CAMPAIGN_HTTP_TIMEOUT"] = 0.5
    try:
        campaign = _campaign(promo["account"].id)
        _start(campaign)
        requests.post(
            f"{simulator}/_sim/accounts/{promo['appid']}/faults", json={"kind": "busy", "count": 2}, timeout=5
        )
        helpers.set_messaging(simulator, promo["appid"], timeout_after_accept=1, timeout_ms=1500)
        _run(campaign.id)
    finally:
        app.config.pop("CAMPAIGN_HTTP_TIMEOUT")
    counts = _statuses(campaign.id)
    assert counts == {"sent": 299, "unknown": 1}
    accepted = requests.get(f"{simulator}/_sim/accounts/{promo['appid']}/messaging", timeout=5).json()[
        "accepted"
    ]
    assert accepted == 300  # the timed-out one reached WeChat, and was not sent again


def test_45009_pauses_the_account_until_midnight(app: Flask, promo: dict[str, Any], simulator: str) -> None:
    campaign = _campaign(promo["account"].id)
    _start(campaign)
    helpers.set_messaging(simulator, promo["appid"], daily_quota=100, reset_counters=True)
    _run(campaign.id)
    counts = _statuses(campaign.id)
    assert counts == {"sent": 100, "pending": 200}
    ca = db.session.scalar(sa.select(CampaignAccount).where(CampaignAccount.campaign_id == campaign.id))
    assert ca.pause_reason.startswith("45009") and ca.paused_until > datetime.now(UTC) + timedelta(minutes=1)
    assert db.session.get(Campaign, campaign.id).state is S.sending


def test_quiet_hours_hold_sending(app: Flask, promo: dict[str, Any]) -> None:
    from zoneinfo import ZoneInfo

    hour = datetime.now(ZoneInfo(promo["account"].timezone)).hour
    campaign = _campaign(promo["account"].id, quiet_start=hour, quiet_end=(hour + 2) % 24)
    _start(campaign)
    _run(campaign.id)
    assert _statuses(campaign.id) == {"pending": 300}
    ca = db.session.scalar(sa.select(CampaignAccount).where(CampaignAccount.campaign_id == campaign.id))
    assert ca.pause_reason == "quiet hours"


def _report(client: Any, target: Any, openid: str, msgid: int, status: str) -> None:
    xml = message_xml(
        target, openid, event_fields("template_finish", {"msgid": msgid, "status": status}, msgid)
    )
    args, body = signed_request(target, xml)
    assert (
        client.post(f"/wechat/{target.appid}/callback", query_string=args, data=body).get_data() == b"success"
    )


def test_reports_correlate_by_msgid_including_early_ones(app: Flask, promo: dict[str, Any]) -> None:
    client = app.test_client()
    campaign = _campaign(promo["account"].id)
    _start(campaign)
    _run(campaign.id)
    rows = db.session.scalars(
        sa.select(Delivery).where(Delivery.campaign_id == campaign.id).order_by(Delivery.id).limit(4)
    ).all()
    statuses = ["success", "failed:user block", "failed: system failed", "failed:freq limit"]
    for row, status in zip(rows, statuses, strict=True):
        _report(client, promo["target"], row.openid, row.msgid, status)
    _report(client, promo["target"], rows[0].openid, rows[0].msgid, "success")  # WeChat's re-send: once
    got = [
        (r.report.value, r.report_raw)
        for r in db.session.scalars(
            sa.select(Delivery)
            .where(Delivery.id.in_([r.id for r in rows]))
            .order_by(Delivery.id)
            .execution_options(populate_existing=True)
        )
    ]
    assert got == [
        ("delivered", "success"),
        ("user_block", "failed:user block"),
        ("system_failed", "failed: system failed"),
        ("other", "failed:freq limit"),
    ]
    # A report ahead of its send result is parked, then applied when the result lands.
    _report(client, promo["target"], "oEARLY", 99_000_000_001, "success")
    row = rows[0]
    db.session.execute(
        sa.update(Delivery).where(Delivery.id == row.id).values(msgid=99_000_000_001, report=None)
    )
    db.session.commit()
    assert reports.sweep_early_reports() == 1
    assert db.session.get(Delivery, row.id, populate_existing=True).report.value == "delivered"
    stats = reports.stats(campaign.id)
    assert (
        stats["delivered"] == 1
        and stats["user_block"] == 1
        and stats["system_failed"] == 1
        and stats["report_other"] == 1
    )


def test_click_redirect_attribution_and_uplift(app: Flask, promo: dict[str, Any]) -> None:
    from store.models import Order, OrderStatus, Product

    campaign = _campaign(
        promo["account"].id, control_pct=50, link_url="https://shop.example/p", attribution_days=7
    )
    _start(campaign)
    _run(campaign.id)
    treated = db.session.scalars(
        sa.select(Delivery)
        .where(Delivery.campaign_id == campaign.id, Delivery.control.is_(False))
        .order_by(Delivery.id)
    ).all()
    held = db.session.scalars(
        sa.select(Delivery)
        .where(Delivery.campaign_id == campaign.id, Delivery.control.is_(True))
        .order_by(Delivery.id)
    ).all()
    client = app.test_client()
    resp = client.get(f"/t/{tracking.token_for(treated[0].id)}")
    assert resp.status_code == 302 and resp.headers["Location"] == "https://shop.example/p"
    assert client.get(f"/t/{treated[0].id:x}.forged").status_code == 404
    product = Product(
        account_id=promo["account"].id, code="P1", name="10G", kind="data_package", price_fen=990
    )
    db.session.add(product)
    db.session.flush()
    later = datetime.now(UTC) + timedelta(hours=1)
    buyers = treated[:30] + held[:10]  # 30 of the treated, 10 of the control group buy
    for i, d in enumerate(buyers):
        db.session.add(
            Order(
                account_id=d.account_id,
                subscriber_id=d.subscriber_id,
                product_id=product.id,
                client_key=f"k{i}",
                out_trade_no=f"T{campaign.id}x{i}",
                amount_fen=990,
                phone="13800000000",
                provider="wechatpay",
                status=OrderStatus.fulfilled,
                created_at=later,
            )
        )
    # An order after the window does not count.
    d = treated[40]
    db.session.add(
        Order(
            account_id=d.account_id,
            subscriber_id=d.subscriber_id,
            product_id=product.id,
            client_key="late",
            out_trade_no=f"T{campaign.id}late",
            amount_fen=990,
            phone="13800000000",
            provider="wechatpay",
            status=OrderStatus.fulfilled,
            created_at=datetime.now(UTC) + timedelta(days=9),
        )
    )
    db.session.commit()
    stats = reports.stats(campaign.id)
    assert stats["clicks"] == 1 and stats["conversions"] == 30 and stats["revenue_fen"] == 30 * 990
    assert stats["conversion_rate"] == round(30 / len(treated), 4)
    assert stats["control_conversion_rate"] == round(10 / len(held), 4)
    assert (
        stats["uplift"] == round(round(30 / len(treated), 4) - round(10 / len(held), 4), 4)
        or abs(stats["uplift"] - (30 / len(treated) - 10 / len(held))) < 1e-3
    )
    csv_text = "".join(reports.export_csv(campaign.id))
    assert csv_text.count("\n") == 301 and "control_group" not in csv_text.splitlines()[0]


def test_token_bucket_holds_the_rate(app: Flask) -> None:
    import time

    start = time.monotonic()
    for _ in range(30):
        budget.acquire("t", 1, 20)
    elapsed = time.monotonic() - start
    assert elapsed >= (30 - 20) / 20 * 0.9  # a full bucket (one second's worth), then 20/s


def test_subscribe_messages_spend_one_time_authorisations(
    app: Flask, create_account: Any, simulator: str
) -> None:
    account, fields, target = create_account("plain", kind="mini_program")
    appid = fields["appid"]
    requests.post(
        f"{simulator}/_sim/accounts/{appid}/templates",
        json={"templates": [{"template_id": "SUB1", "title": "到账提醒", "content": "{{thing1.DATA}}"}]},
        timeout=5,
    )
    services.sync_templates(account.id)
    for openid in ("oMP1", "oMP2"):
        db.session.add(Subscriber(account_id=account.id, openid=openid, following=True))
    db.session.commit()
    client = app.test_client()
    # The popup event, as the mini-program's XML message push delivers it to our callback.
    xml = (
        f"<xml><ToUserName><![CDATA[{target.original_id}]]></ToUserName><FromUserName><![CDATA[oMP1]]></FromUserName>"
        f"<CreateTime>{int(datetime.now().timestamp())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[subscribe_msg_popup_event]]></Event><SubscribeMsgPopupEvent><List><TemplateId><![CDATA[SUB1]]></TemplateId>"
        "<SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString><PopupScene>0</PopupScene></List></SubscribeMsgPopupEvent></xml>"
    )
    args, body = signed_request(target, xml)
    assert client.post(f"/wechat/{appid}/callback", query_string=args, data=body).status_code == 200
    assert reports.authorisations(account.id, "oMP1") == {"SUB1": 1}
    requests.post(
        f"{simulator}/_sim/accounts/{appid}/subscribe-popup",
        json={"openid": "oMP1", "template_ids": ["SUB1"]},
        timeout=90,
    )
    campaign = services.create_campaign(
        None, [account.id], "SUB1", {"name": "mp", "data": {"thing1": "到账"}, "rate": 0}
    )
    db.session.commit()
    _start(campaign)
    _run(campaign.id)
    got = {
        d.openid: d.status.value
        for d in db.session.scalars(sa.select(Delivery).where(Delivery.campaign_id == campaign.id))
    }
    assert got == {"oMP1": "sent", "oMP2": "skipped"}
    assert reports.authorisations(account.id, "oMP1") == {"SUB1": 0}


def test_a_popup_with_several_templates_authorises_each_accepted_one(app: Flask, create_account: Any) -> None:
    """WeChat sends one <List> per template in the popup: every accepted one counts, not the first."""
    account, fields, target = create_account("plain", kind="mini_program")
    lists = "".join(
        f"<List><TemplateId><![CDATA[{tid}]]></TemplateId><SubscribeStatusString><![CDATA[{status}]]>"
        "</SubscribeStatusString><PopupScene>0</PopupScene></List>"
        for tid, status in (("SUB1", "accept"), ("SUB2", "accept"), ("SUB3", "reject"))
    )
    xml = (
        f"<xml><ToUserName><![CDATA[{target.original_id}]]></ToUserName><FromUserName><![CDATA[oMPX]]>"
        f"</FromUserName><CreateTime>{int(datetime.now().timestamp())}</CreateTime><MsgType><![CDATA[event]]>"
        "</MsgType><Event><![CDATA[subscribe_msg_popup_event]]></Event>"
        f"<SubscribeMsgPopupEvent>{lists}</SubscribeMsgPopupEvent></xml>"
    )
    args, body = signed_request(target, xml)
    resp = app.test_client().post(f"/wechat/{fields['appid']}/callback", query_string=args, data=body)
    assert resp.status_code == 200
    assert reports.authorisations(account.id, "oMPX") == {"SUB1": 1, "SUB2": 1}
