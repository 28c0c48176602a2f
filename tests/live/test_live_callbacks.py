"""Callbacks through the real stack: the simulator drives subscribers against gunicorn."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from accounts import replies, services
from accounts.models import Subscriber, SubscriberEvent
from tests.live.conftest import Live
from wechat_service.extensions import db
from wechat_service.models import CallbackInbox


def _rules(live: Live, appid: str) -> int:
    def add() -> int:
        account = services.account_by_appid(appid)
        replies.add_rule(account.id, name="welcome", kind="welcome", reply={"content": "welcome aboard"})
        replies.add_rule(account.id, name="bal", keywords=["balance"], reply={"content": "your balance is 5"})
        replies.add_rule(account.id, name="default", kind="default", reply={"content": "say balance"})
        db.session.commit()
        return account.id

    return live.in_app(add)


def _count(live: Live, model: type, account_id: int) -> int:
    return live.scalar(sa.select(sa.func.count()).select_from(model).where(model.account_id == account_id))


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
def test_three_modes_end_to_end(live: Live, mode: str) -> None:
    fields, _ = live.create_account(mode)
    account_id = _rules(live, fields["appid"])
    follow = live.drive(fields["appid"], "follow", openid="oLIVE1")
    assert follow["status"] == 200 and follow["reply"]["Content"] == "welcome aboard"
    assert bool(follow["reply"].get("_encrypted")) == (mode != "plain")
    chat = live.drive(fields["appid"], "text", openid="oLIVE1", content="balance")
    assert chat["reply"]["Content"] == "your balance is 5"
    other = live.drive(fields["appid"], "text", openid="oLIVE1", content="??")
    assert other["reply"]["Content"] == "say balance"
    bye = live.drive(fields["appid"], "unfollow", openid="oLIVE1")
    assert bye["body"] == "success"
    kinds = live.in_app(
        lambda: [
            e.kind.value
            for e in db.session.scalars(
                sa.select(SubscriberEvent)
                .where(SubscriberEvent.account_id == account_id)
                .order_by(SubscriberEvent.id)
            )
        ]
    )
    assert kinds == ["follow", "message", "message", "unfollow"]
    following = live.scalar(sa.select(Subscriber.following).where(Subscriber.account_id == account_id))
    assert following is False


def test_slow_answer_is_resent_like_wechat_and_recorded_once(live: Live) -> None:
    """The first delivery is held up past WeChat's patience; the re-send gets the original's reply."""
    fields, _ = live.create_account("safe")
    account_id = _rules(live, fields["appid"])
    engine = live.in_app(lambda: db.engine)
    conn = engine.connect()
    trans = conn.begin()
    # Hold the ledger so the first delivery blocks at its commit for ~2.5 s.
    conn.execute(sa.text("LOCK TABLE subscriber_events IN EXCLUSIVE MODE"))
    release = threading.Timer(2.5, trans.rollback)
    release.start()
    try:
        result = live.drive(fields["appid"], "text", openid="oSLOW", content="balance", timeout=1.5)
    finally:
        release.join()
        conn.close()
    assert result["attempts"] >= 2, result
    assert result["reply"]["Content"] == "your balance is 5"
    assert _count(live, SubscriberEvent, account_id) == 1
    assert _count(live, CallbackInbox, account_id) == 1


def test_duplicate_copies_in_parallel_record_once(live: Live) -> None:
    fields, _ = live.create_account("plain")
    account_id = _rules(live, fields["appid"])
    result = live.drive(fields["appid"], "text", openid="oDUP", content="balance", repeat=4)
    assert [d["reply"]["Content"] for d in result["deliveries"]] == ["your balance is 5"] * 4
    assert _count(live, SubscriberEvent, account_id) == 1


def test_rule_change_reaches_every_web_process_at_once(live: Live) -> None:
    fields, _ = live.create_account("plain")
    account_id = _rules(live, fields["appid"])
    before = {
        live.drive(fields["appid"], "text", openid=f"oW{i}", content="balance")["reply"]["Content"]
        for i in range(8)
    }
    assert before == {"your balance is 5"}

    def change() -> None:
        rule = next(r for r in replies.list_rules(account_id) if r.name == "bal")
        rule.reply = {"content": "now 6"}
        services.bump_config(account_id)
        db.session.commit()

    live.in_app(change)
    after = {
        live.drive(fields["appid"], "text", openid=f"oW{i}", content="balance")["reply"]["Content"]
        for i in range(8)
    }
    assert after == {"now 6"}


def test_disabled_account_is_refused_by_every_process(live: Live) -> None:
    from accounts.models import AccountStatus

    fields, _ = live.create_account("plain")
    _rules(live, fields["appid"])
    assert live.drive(fields["appid"], "text", openid="oD", content="balance")["status"] == 200

    def disable() -> None:
        services.set_account_status(fields["appid"], AccountStatus.disabled)
        db.session.commit()

    live.in_app(disable)
    statuses = {
        live.drive(fields["appid"], "text", openid="oD", content="balance")["status"] for _ in range(6)
    }
    assert statuses == {403}


def test_template_delivery_report_comes_back_and_is_stored(live: Live) -> None:
    """The simulator posts TEMPLATESENDJOBFINISH after a send; the inbox keeps it for the campaign engine."""
    import requests

    fields, _ = live.create_account("safe")
    account_id = _rules(live, fields["appid"])
    live.drive(fields["appid"], "follow", openid="oTPL")
    requests.post(
        f"{live.sim}/_sim/accounts/{fields['appid']}/templates",
        json={"templates": [{"template_id": "TPL1", "title": "t", "content": "{{a.DATA}}"}]},
        timeout=5,
    )

    def send() -> int:
        client = services.api_client(account_id)
        return client.message.send_template("oTPL", "TPL1", {"a": {"value": "x"}})["msgid"]

    msgid = live.in_app(send)
    row = live.wait_for(
        lambda: live.scalar(
            sa.select(CallbackInbox).where(
                CallbackInbox.account_id == account_id, CallbackInbox.dedup_key == f"job:{msgid}"
            )
        ),
        20,
        "delivery report",
    )
    assert row.payload["Status"] == "success" and row.event == "templatesendjobfinish"
    time.sleep(0.1)
