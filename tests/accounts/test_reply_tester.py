"""The auto-reply page's "try a message": the callback router in dry-run mode, so it answers as a
real callback does (the store's keywords included) and leaves nothing behind."""

from __future__ import annotations

import re
from typing import Any

import requests
import sqlalchemy as sa
from flask import Flask

from accounts import replies
from accounts.models import Subscriber, SubscriberEvent
from simulator.driver import event_fields, message_xml, open_reply, signed_request
from store import services as store_services
from store.models import Inquiry
from wechat_service.extensions import db, get_queue
from wechat_service.models import CallbackInbox

PHONE = "13800138777"


def _callback(app: Flask, target: Any, content: str, msgid: int) -> dict[str, str]:
    xml = message_xml(target, "oTESTER00000000000000001", event_fields("text", {"content": content}, msgid))
    args, body = signed_request(target, xml)
    resp = app.test_client().post(f"/wechat/{target.appid}/callback", query_string=args, data=body)
    assert resp.status_code == 200
    reply = open_reply(target, resp.get_data(as_text=True))
    assert reply is not None
    return reply


def _written(simulator: str) -> dict[str, Any]:
    """Everything a callback could leave behind: rows, jobs, an SMS through the BOSS."""
    count = lambda model: db.session.scalar(sa.select(sa.func.count()).select_from(model))  # noqa: E731
    sms = requests.get(f"{simulator}/_sim/boss/sms/{PHONE}", timeout=5).status_code
    return {
        "subscribers": count(Subscriber),
        "ledger": count(SubscriberEvent),
        "inbox": count(CallbackInbox),
        "inquiries": count(Inquiry),
        "jobs": sum(get_queue(q).count for q in ("high", "default", "low")),
        "sms": sms,
    }


def test_the_tester_answers_a_store_keyword_as_the_callback_does_and_writes_nothing(
    app: Flask, simulator: str, create_account: Any, create_staff: Any
) -> None:
    account, _, target = create_account("plain")
    store_services.enable_store(account.id)
    replies.add_rule(account.id, name="fallback", kind="default", reply={"content": "默认回复"})
    db.session.commit()
    manager = create_staff("account_manager", account_id=account.id)
    url = f"/api/v1/accounts/{account.id}/rules/try"

    before = _written(simulator)
    tried = manager.api("POST", url, {"text": "流量"}).get_json()
    page = manager.get(f"/console/accounts/{account.id}/replies?try=流量").get_data(as_text=True)
    bind = manager.api("POST", url, {"text": f"绑定 {PHONE}"}).get_json()
    db.session.rollback()  # read what the requests committed
    assert _written(simulator) == before  # no ledger or inbox row, no job, no SMS, no inquiry

    # The store's data inquiry answers, not the default rule, and the BOSS is described, not called.
    assert tried["rule"] is None and tried["handled_by"] == "store.handlers.on_text"
    assert tried["actions"] == ["run the data inquiry with the BOSS"]
    answer = re.search(r'<p class="tried">(.*?)</p>', page, re.S)
    assert answer and 'class="handled-by">store.handlers.on_text<' in answer.group(1)
    assert "默认回复" not in answer.group(1) and "<li>Would run the data inquiry with the BOSS</li>" in page
    assert bind["handled_by"] == "store.handlers.on_text"
    assert bind["actions"] == ["send an SMS code to the number through the BOSS"]

    # A real callback for the same text: the store answers it, with a reply of the same type.
    real = _callback(app, target, "流量", 9_100_001)
    assert real["MsgType"] == tried["reply_type"] == "text"
    assert real["Content"] != "默认回复" and "绑定" in real["Content"]  # the store's bind-first prompt

    # A text no handler claims: tester and callback both fall back to the default rule.
    other = manager.api("POST", url, {"text": "你好"}).get_json()
    assert other["rule"] == "fallback" and other["actions"] == []
    assert other["reply"] == {"content": "默认回复"}
    assert _callback(app, target, "你好", 9_100_002)["Content"] == "默认回复"


def test_the_tester_without_a_store_reports_the_matching_rule(
    app: Flask, create_account: Any, create_staff: Any
) -> None:
    account, _, target = create_account("plain")
    replies.add_rule(account.id, name="data", keywords=["流量"], reply={"content": "剩余流量请点菜单"})
    db.session.commit()
    manager = create_staff("account_manager", account_id=account.id)
    tried = manager.api("POST", f"/api/v1/accounts/{account.id}/rules/try", {"text": "流量"}).get_json()
    assert tried["rule"] == "data" and tried["handled_by"] == "accounts.handlers.on_text"
    assert _callback(app, target, "流量", 9_100_003)["Content"] == tried["reply"]["content"]
