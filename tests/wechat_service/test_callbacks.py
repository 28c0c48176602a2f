"""The callback endpoint in-process: every mode, every rejection (with nothing written),
dedup of re-sends and replays, key rotation and tenant separation."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from defusedxml.ElementTree import fromstring
from flask import Flask
from wechatpy.crypto import WeChatCrypto

from accounts import replies, services
from accounts.models import AccountStatus, Subscriber, SubscriberEvent
from simulator.driver import Target, event_fields, message_xml, open_reply, signed_request
from wechat_service import wxcrypto
from wechat_service.extensions import db
from wechat_service.models import CallbackInbox

MSGID = iter(range(7_000_000_000, 8_000_000_000))


def counts() -> tuple[int, int, int]:
    return (
        db.session.scalar(sa.select(sa.func.count()).select_from(CallbackInbox)),
        db.session.scalar(sa.select(sa.func.count()).select_from(SubscriberEvent)),
        db.session.scalar(sa.select(sa.func.count()).select_from(Subscriber)),
    )


def post(
    client: Any,
    target: Target,
    xml: str,
    *,
    args: dict[str, str] | None = None,
    body: bytes | None = None,
    appid: str | None = None,
) -> Any:
    signed_args, signed_body = signed_request(target, xml)
    return client.post(
        f"/wechat/{appid or target.appid}/callback",
        query_string=args or signed_args,
        data=signed_body if body is None else body,
        content_type="text/xml",
    )


def text(target: Target, content: str, openid: str = "oUSER1", msgid: int | None = None) -> str:
    return message_xml(target, openid, event_fields("text", {"content": content}, msgid or next(MSGID)))


def wechatpy_open(target: Target, body: str) -> dict[str, str]:
    """The encrypted reply opened by wechatpy (WeChat's side, as another implementation reads it):
    the signature checked and the ciphertext decrypted for this appid."""
    outer = {child.tag: child.text or "" for child in fromstring(body.encode(), forbid_dtd=True)}
    crypto = WeChatCrypto(target.token, target.aes_key, target.appid)
    inner = crypto.decrypt_message(body, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
    return {child.tag: child.text or "" for child in fromstring(inner.encode(), forbid_dtd=True)}


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
def test_each_mode_answers_keyword_and_records_once(mode: str, client: Any, create_account: Any) -> None:
    account, _, target = create_account(mode)
    replies.add_rule(account.id, name="bal", keywords=["余额"], reply={"content": "余额 10 元"})
    db.session.commit()
    resp = post(client, target, text(target, "余额"))
    assert resp.status_code == 200
    reply = open_reply(target, resp.get_data(as_text=True))
    assert reply["Content"] == "余额 10 元"
    assert reply["ToUserName"] == "oUSER1" and reply["FromUserName"] == target.original_id
    assert ("_encrypted" in reply) == (mode != "plain")
    if mode != "plain":
        theirs = wechatpy_open(target, resp.get_data(as_text=True))
        assert theirs["Content"] == "余额 10 元" and theirs["ToUserName"] == "oUSER1"
        assert theirs["FromUserName"] == target.original_id
    assert counts() == (1, 1, 1)


def test_get_echoes_echostr_with_a_valid_signature(client: Any, create_account: Any) -> None:
    _, fields, target = create_account("safe")
    args, _ = signed_request(Target(**{**target.__dict__, "mode": "plain"}), "")
    resp = client.get(f"/wechat/{fields['appid']}/callback", query_string={**args, "echostr": "12345abc"})
    assert resp.status_code == 200 and resp.get_data(as_text=True) == "12345abc"
    resp = client.get(
        f"/wechat/{fields['appid']}/callback", query_string={**args, "signature": "0" * 40, "echostr": "x"}
    )
    assert resp.status_code == 403


def test_follow_replies_welcome_and_updates_subscriber(client: Any, create_account: Any) -> None:
    account, _, target = create_account("plain")
    replies.add_rule(account.id, name="w", kind="welcome", reply={"content": "welcome!"})
    db.session.commit()
    resp = post(client, target, message_xml(target, "oNEW", event_fields("follow", {}, 0)))
    assert open_reply(target, resp.get_data(as_text=True))["Content"] == "welcome!"
    sub = db.session.scalar(sa.select(Subscriber).where(Subscriber.openid == "oNEW"))
    assert sub.following and sub.first_followed_at is not None
    resp = post(
        client,
        target,
        message_xml(target, "oNEW", event_fields("unfollow", {"create_time": int(time.time()) + 1}, 0)),
    )
    assert resp.get_data(as_text=True) == "success"
    db.session.refresh(sub)
    assert not sub.following and sub.last_unfollowed_at is not None


def test_resends_get_the_same_reply_and_one_ledger_entry(client: Any, create_account: Any) -> None:
    account, _, target = create_account("safe")
    replies.add_rule(account.id, name="bal", keywords=["hi"], reply={"content": "hello there"})
    db.session.commit()
    xml = text(target, "hi", msgid=424242)
    bodies = []
    for _ in range(3):  # WeChat's first delivery and its re-sends: new timestamp and nonce each time
        resp = post(client, target, xml)
        assert resp.status_code == 200
        bodies.append(open_reply(target, resp.get_data(as_text=True))["Content"])
    assert bodies == ["hello there"] * 3
    assert counts() == (1, 1, 1)


def test_a_replayed_request_has_no_second_effect(client: Any, create_account: Any) -> None:
    account, _, target = create_account("plain")
    args, body = signed_request(target, message_xml(target, "oR", event_fields("click", {"key": "K"}, 0)))
    for _ in range(2):
        resp = client.post(f"/wechat/{target.appid}/callback", query_string=args, data=body)
        assert resp.status_code == 200
    assert counts() == (1, 1, 1)


def test_resend_found_in_the_database_when_redis_forgot(
    client: Any, create_account: Any, redis_conn: Any
) -> None:
    account, _, target = create_account("plain")
    replies.add_rule(account.id, name="r", keywords=["x"], reply={"content": "first answer"})
    db.session.commit()
    xml = text(target, "x", msgid=5151)
    assert open_reply(target, post(client, target, xml).get_data(as_text=True))["Content"] == "first answer"
    redis_conn.flushdb()  # the unique key in the database is the real guard
    assert open_reply(target, post(client, target, xml).get_data(as_text=True))["Content"] == "first answer"
    assert counts() == (1, 1, 1)


@pytest.mark.parametrize(
    ("mode", "forged"), [("plain", "signature"), ("safe", "signature"), ("safe", "msg_signature")]
)
def test_forged_signatures_rejected_with_nothing_written(
    mode: str, forged: str, client: Any, create_account: Any
) -> None:
    _, _, target = create_account(mode)
    args, body = signed_request(target, text(target, "hi"))
    resp = client.post(f"/wechat/{target.appid}/callback", query_string={**args, forged: "f" * 40}, data=body)
    assert resp.status_code == 403
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize("skew", [-3600, 3600])
def test_stale_or_future_timestamp_rejected(skew: int, client: Any, create_account: Any) -> None:
    _, _, target = create_account("plain")
    from simulator.driver import signed_request as sign

    args, body = sign(target, text(target, "hi"), timestamp=int(time.time()) + skew)
    resp = client.post(f"/wechat/{target.appid}/callback", query_string=args, data=body)
    assert resp.status_code == 403 and "timestamp" in resp.get_data(as_text=True)
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize("mode", ["safe", "compatible"])
def test_ciphertext_for_another_appid_rejected(mode: str, client: Any, create_account: Any) -> None:
    """Correctly signed, decryptable with our key, but naming another appid: 400 in every mode —
    compatible mode does not fall back on the plaintext fields beside it."""
    _, fields, target = create_account(mode)
    other = Target(**{**target.__dict__, "appid": "wx00000000000000ff"})  # same keys, another appid inside
    args, body = signed_request(other, text(target, "hi"))
    resp = client.post(f"/wechat/{target.appid}/callback", query_string=args, data=body)
    assert resp.status_code == 400 and "another appid" in resp.get_data(as_text=True)
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize(
    "payload",
    [
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaa">]><xml><MsgType>text</MsgType></xml>',
        b'<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><Content>&x;</Content></xml>',
        b"<xml><unclosed></xml>",
        b"not xml at all",
        b"<notxml/>",
    ],
)
def test_hostile_or_malformed_xml_is_400(payload: bytes, client: Any, create_account: Any) -> None:
    _, _, target = create_account("plain")
    args, _ = signed_request(target, "")
    resp = client.post(f"/wechat/{target.appid}/callback", query_string=args, data=payload)
    assert resp.status_code == 400
    assert counts() == (0, 0, 0)


def test_oversized_body_is_413(client: Any, create_account: Any) -> None:
    _, _, target = create_account("plain")
    big = text(target, "x" * (70 * 1024))
    resp = post(client, target, big)
    assert resp.status_code == 413
    assert counts() == (0, 0, 0)


def test_unknown_account_is_404(client: Any, create_account: Any) -> None:
    _, _, target = create_account("plain")
    resp = post(client, target, text(target, "hi"), appid="wx1111111111111111")
    assert resp.status_code == 404
    assert counts() == (0, 0, 0)


def test_disabled_account_is_403_and_enabled_again_works(client: Any, create_account: Any) -> None:
    _, fields, target = create_account("plain")
    services.set_account_status(fields["appid"], AccountStatus.disabled)
    db.session.commit()
    assert post(client, target, text(target, "hi")).status_code == 403
    assert counts() == (0, 0, 0)
    services.set_account_status(fields["appid"], AccountStatus.active)
    db.session.commit()
    assert post(client, target, text(target, "hi")).status_code == 200


def test_safe_mode_refuses_plaintext(client: Any, create_account: Any) -> None:
    _, _, target = create_account("safe")
    plain = Target(**{**target.__dict__, "mode": "plain"})
    resp = post(client, plain, text(plain, "hi"))
    assert resp.status_code == 400 and "safe mode" in resp.get_data(as_text=True)
    assert counts() == (0, 0, 0)


def test_key_rotation_accepts_both_keys_and_answers_in_the_key_used(client: Any, create_account: Any) -> None:
    account, fields, target = create_account("safe")
    replies.add_rule(account.id, name="r", keywords=["k"], reply={"content": "ok"})
    services.rotate_aes_key(fields["appid"])
    db.session.commit()
    new_key = services.account_by_appid(fields["appid"]).aes_key
    old_target, new_target = target, Target(**{**target.__dict__, "aes_key": new_key})
    # Until the operator pastes the new key, WeChat encrypts with the old one, and can only read
    # replies encrypted with it: the reply goes back under the key that opened the message.
    resp = post(client, old_target, text(old_target, "k"))
    assert resp.status_code == 200
    assert open_reply(old_target, resp.get_data(as_text=True))["Content"] == "ok"
    assert wechatpy_open(old_target, resp.get_data(as_text=True))["Content"] == "ok"
    resp = post(client, new_target, text(new_target, "k"))
    assert open_reply(new_target, resp.get_data(as_text=True))["Content"] == "ok"
    assert wechatpy_open(new_target, resp.get_data(as_text=True))["Content"] == "ok"
    # After the next rotation the first key is gone.
    services.rotate_aes_key(fields["appid"])
    db.session.commit()
    assert post(client, old_target, text(old_target, "k")).status_code == 400


def test_compatible_mode_without_a_key_reads_the_plaintext(client: Any, create_account: Any) -> None:
    """The operator switched WeChat to compatible mode before giving us the key."""
    account, fields, target = create_account("plain", aes_key=None)
    replies.add_rule(account.id, name="r", keywords=["k"], reply={"content": "plain ok"})
    db.session.commit()
    wechat_side = Target(**{**target.__dict__, "mode": "compatible", "aes_key": wxcrypto.generate_aes_key()})
    resp = post(client, wechat_side, text(wechat_side, "k"))
    assert (
        resp.status_code == 200 and open_reply(target, resp.get_data(as_text=True))["Content"] == "plain ok"
    )


def test_compatible_mode_under_a_key_we_do_not_have_reads_the_plaintext(
    client: Any, create_account: Any
) -> None:
    """Neither of our keys opens the <Encrypt> (WeChat already has a key we were not given): the
    signed plaintext fields beside it are read; the reply goes back in plaintext."""
    account, _, target = create_account("compatible")
    replies.add_rule(account.id, name="r", keywords=["k"], reply={"content": "plain ok"})
    db.session.commit()
    wechat_side = Target(**{**target.__dict__, "aes_key": wxcrypto.generate_aes_key()})
    resp = post(client, wechat_side, text(wechat_side, "k"))
    assert resp.status_code == 200
    reply = open_reply(target, resp.get_data(as_text=True))
    assert reply["Content"] == "plain ok" and "_encrypted" not in reply


@pytest.mark.parametrize("field", ["FromUserName", "MsgType", "CreateTime"])
def test_oversized_or_malformed_fields_are_400(field: str, client: Any, create_account: Any) -> None:
    _, _, target = create_account("plain")
    fields = {"CreateTime": 1_900_000_000, "MsgType": "text", "Content": "x", "MsgId": 5}
    openid = "oFIELD"
    if field == "FromUserName":
        openid = "o" * 100
    elif field == "MsgType":
        fields["MsgType"] = "t" * 40
    else:
        fields["CreateTime"] = "99999999999999999999"
    resp = post(client, target, message_xml(target, openid, fields))
    assert resp.status_code == 400
    assert counts() == (0, 0, 0)


def test_generated_aes_keys_are_what_the_wechat_admin_accepts() -> None:
    keys = [wxcrypto.generate_aes_key() for _ in range(200)]
    assert all(len(k) == 43 and k.isalnum() and k.isascii() for k in keys)
    with pytest.raises(ValueError):
        wxcrypto.check_aes_key("a" * 42 + "+")


def test_one_accounts_keys_never_accept_another_accounts_callbacks(client: Any, create_account: Any) -> None:
    _, _, a = create_account("safe")
    _, _, b = create_account("safe")
    args, body = signed_request(a, text(a, "hi"))
    resp = client.post(f"/wechat/{b.appid}/callback", query_string=args, data=body)
    assert resp.status_code == 403
    # Even with B's token, a message addressed to A's original id is refused at B's URL.
    _, _, c = create_account("plain")
    spoof = Target(**{**c.__dict__, "original_id": a.original_id})
    resp = post(client, c, text(spoof, "hi"))
    assert resp.status_code == 400 and "another account" in resp.get_data(as_text=True)
    assert counts() == (0, 0, 0)


def test_unhandled_types_are_stored_for_later_handlers(client: Any, create_account: Any) -> None:
    account, _, target = create_account("plain")
    # A WeChat store-location review result: no domain handles it (yet), so it is kept, once.
    fields = {"CreateTime": 1_790_000_000, "MsgType": "event", "Event": "poi_check_notify",
              "UniqId": "poi-1", "PoiId": "9988", "Result": "succ", "Msg": ""}  # fmt: skip
    xml = message_xml(target, "oT", fields)
    assert post(client, target, xml).get_data(as_text=True) == "success"
    assert post(client, target, xml).get_data(as_text=True) == "success"
    row = db.session.scalar(sa.select(CallbackInbox).where(CallbackInbox.account_id == account.id))
    assert row.state.value == "stored" and row.event == "poi_check_notify"
    assert row.payload["PoiId"] == "9988"
    assert counts() == (1, 0, 0)


def test_qr_follow_and_scan_are_attributed_to_the_channel(client: Any, create_account: Any) -> None:
    from accounts import qrcodes

    account, _, target = create_account("compatible")
    code = qrcodes.create_channel_qrcode(account.id, name="Store 9", scene="store-9", channel_type="store")
    db.session.commit()
    post(client, target, message_xml(target, "oQR", event_fields("follow", {"scene": "store-9"}, 0)))
    post(
        client,
        target,
        message_xml(
            target, "oQR", event_fields("scan", {"scene": "store-9", "create_time": int(time.time()) + 1}, 0)
        ),
    )
    events = db.session.scalars(sa.select(SubscriberEvent).order_by(SubscriberEvent.id)).all()
    assert [(e.kind.value, e.channel_id) for e in events] == [("follow", code.id), ("scan", code.id)]
    assert events[0].detail["scene"] == "store-9"
    sub = db.session.scalar(sa.select(Subscriber).where(Subscriber.openid == "oQR"))
    assert sub.channel_id == code.id and sub.qr_scene == "store-9"


def test_rule_change_is_seen_by_the_next_callback(client: Any, create_account: Any) -> None:
    account, _, target = create_account("plain")
    rule = replies.add_rule(account.id, name="r", keywords=["q"], reply={"content": "v1"})
    db.session.commit()
    assert (
        open_reply(target, post(client, target, text(target, "q")).get_data(as_text=True))["Content"] == "v1"
    )
    replies.set_rule_enabled(account.id, rule.id, False)
    replies.add_rule(account.id, name="r2", keywords=["q"], reply={"content": "v2"})
    db.session.commit()
    assert (
        open_reply(target, post(client, target, text(target, "q")).get_data(as_text=True))["Content"] == "v2"
    )


def test_access_log_redaction_keeps_the_path_and_other_parameters() -> None:
    from wechat_service.accesslog import redact_query, redact_uri

    uri = "/wechat/wx1/callback?signature=abc&timestamp=1&nonce=2&openid=o1&encrypt_type=aes&msg_signature=d"
    assert redact_uri(uri) == "/wechat/wx1/callback?encrypt_type=aes"
    assert redact_uri("/h5/oauth?code=SECRET&state=s&next=%2Fh5") == "/h5/oauth?state=s&next=%2Fh5"
    assert redact_query("echostr=E&page=2") == "page=2"
    assert redact_uri("/console/accounts") == "/console/accounts"
