"""Callbacks through the real stack: the simulator drives subscribers against gunicorn."""

from __future__ import annotations

import threading
import time

import pytest
import requests
import sqlalchemy as sa
from defusedxml.ElementTree import fromstring
from wechatpy.crypto import WeChatCrypto

from accounts import replies, services
from accounts.models import Subscriber, SubscriberEvent
from simulator.driver import Target, deliver, event_fields, message_xml, signed_request
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


def _wechatpy_open(fields: dict, body: str) -> dict[str, str]:
    """The encrypted reply read by wechatpy, as WeChat (not our own crypto) would read it."""
    outer = {c.tag: c.text or "" for c in fromstring(body.encode(), forbid_dtd=True)}
    crypto = WeChatCrypto(fields["token"], fields["aes_key"], fields["appid"])
    inner = crypto.decrypt_message(body, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
    return {c.tag: c.text or "" for c in fromstring(inner.encode(), forbid_dtd=True)}


MSGIDS = iter(range(9_100_000_000, 9_200_000_000))


def _text(target: Target, openid: str, content: str, msgid: int | None = None) -> str:
    return message_xml(target, openid, event_fields("text", {"content": content}, msgid or next(MSGIDS)))


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
def test_three_modes_end_to_end(live: Live, mode: str) -> None:
    fields, _ = live.create_account(mode)
    account_id = _rules(live, fields["appid"])
    follow = live.drive(fields["appid"], "follow", openid="oLIVE1")
    assert follow["status"] == 200 and follow["reply"]["Content"] == "welcome aboard"
    assert bool(follow["reply"].get("_encrypted")) == (mode != "plain")
    if mode != "plain":
        assert _wechatpy_open(fields, follow["body"])["Content"] == "welcome aboard"
    chat = live.drive(fields["appid"], "text", openid="oLIVE1", content="balance")
    assert chat["reply"]["Content"] == "your balance is 5"
    if mode != "plain":
        theirs = _wechatpy_open(fields, chat["body"])
        assert theirs["Content"] == "your balance is 5" and theirs["ToUserName"] == "oLIVE1"
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
    """Copies of one message released together (a barrier) into a threaded server: one is
    handled, every copy gets its reply."""
    fields, target = live.create_account("plain")
    account_id = _rules(live, fields["appid"])
    xml = _text(target, "oDUP", "balance")
    copies = 12
    barrier = threading.Barrier(copies)
    results: list[object] = [None] * copies

    def send(i: int) -> None:
        args, body = signed_request(target, xml)
        with requests.Session() as http:  # connect first, so the barrier releases the requests
            http.get(f"{live.base}/healthz", timeout=10)
            barrier.wait(timeout=30)
            results[i] = http.post(target.callback_url, params=args, data=body, timeout=10)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None and r.status_code == 200 for r in results), results
    assert {r.text.count("your balance is 5") for r in results} == {1}  # type: ignore[union-attr]
    assert _count(live, SubscriberEvent, account_id) == 1
    assert _count(live, CallbackInbox, account_id) == 1


def test_callback_blocked_by_a_row_lock_answers_in_time_and_the_resend_is_handled_once(
    live: Live,
) -> None:
    """Another transaction holds the subscriber row the callback must update: the callback gives
    up inside WeChat's 5 s (a retryable error, nothing stored, its dedup key dropped) and the
    copy sent once the lock is gone is handled, once."""
    fields, target = live.create_account("plain")
    account_id = _rules(live, fields["appid"])
    assert live.drive(fields["appid"], "text", openid="oLOCK", content="hi")["status"] == 200
    engine = live.in_app(lambda: db.engine)
    xml = _text(target, "oLOCK", "balance")
    with engine.connect() as conn:
        trans = conn.begin()
        conn.execute(
            sa.select(Subscriber.id)
            .where(Subscriber.account_id == account_id, Subscriber.openid == "oLOCK")
            .with_for_update()
        ).one()
        first = deliver(target, xml, "oLOCK", timeout=30, attempts=1)
        trans.rollback()
    assert first.status is not None and first.elapsed < 5.0, first
    assert first.status >= 500 and first.reply is None
    assert _count(live, SubscriberEvent, account_id) == 1  # only the first message's
    again = deliver(target, xml, "oLOCK", attempts=1)
    assert again.status == 200 and again.reply["Content"] == "your balance is 5", again
    once_more = deliver(target, xml, "oLOCK", attempts=1)
    assert once_more.reply["Content"] == "your balance is 5"
    assert _count(live, SubscriberEvent, account_id) == 2
    assert _count(live, CallbackInbox, account_id) == 2


def test_access_log_keeps_signatures_out(live: Live) -> None:
    fields, target = live.create_account("safe")
    _rules(live, fields["appid"])
    args, body = signed_request(target, _text(target, "oLOG", "balance"))
    assert requests.post(target.callback_url, params=args, data=body, timeout=10).status_code == 200
    plain = Target(**{**target.__dict__, "mode": "plain"})
    check, _ = signed_request(plain, "")
    echo = requests.get(target.callback_url, params={**check, "echostr": "ECHO4711"}, timeout=10)
    assert echo.text == "ECHO4711"
    path = f"/wechat/{fields['appid']}/callback"

    def logged() -> list[str]:
        lines = (live.logs / "web.log").read_text(errors="replace").splitlines()
        return [line for line in lines if path in line]

    lines = live.wait_for(lambda: len(logged()) >= 2 and logged(), 10, "the access log lines")
    assert any('"POST ' + path in line and " 200 " in line for line in lines), lines
    text = (live.logs / "web.log").read_text(errors="replace")
    for secret in (args["signature"], args["msg_signature"], check["signature"], "ECHO4711"):
        assert secret not in text


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
