"""The BOSS contract against the simulator, phone binding by SMS code, and inquiries in chat —
answered inline, from the cache, or later by customer-service message when the BOSS is slow."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts.models import SubscriberEvent
from simulator.driver import event_fields, message_xml, open_reply, signed_request
from store import services
from store.boss import (
    BossError,
    BossUnavailableError,
    BossUnknownOutcomeError,
    HttpBoss,
    boss,
    normalise_phone,
    sign,
)
from store.models import Inquiry, PhoneBinding
from tests import factories, helpers
from wechat_service.extensions import db, get_queue

PHONE = "13800138123"


def test_signature_matches_the_contract() -> None:
    body = b'{"phone":"13800138000"}'
    message = b"POST\n/v1/balance\n1700000000\nabc123\n" + hashlib.sha256(body).hexdigest().encode()
    expected = hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()
    assert sign("s3cret", "POST", "/v1/balance", "1700000000", "abc123", body) == expected


@pytest.mark.parametrize(
    ("given", "phone"),
    [
        ("13800138000", "13800138000"),
        ("+86 138-0013-8000", "13800138000"),
        ("008613800138000", "13800138000"),
    ],
)
def test_phone_numbers_are_normalised(given: str, phone: str) -> None:
    assert normalise_phone(given) == phone


@pytest.mark.parametrize("bad", ["12345", "23800138000", "1380013800a", ""])
def test_bad_phone_numbers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalise_phone(bad)


def test_reads_and_idempotent_writes(app: Flask, simulator: str) -> None:
    client = boss()
    before = client.balance(PHONE)["balance_fen"]
    first = client.topup(PHONE, 1000, "order-1-topup")
    again = client.topup(PHONE, 1000, "order-1-topup")
    assert first["balance_fen"] == before + 1000 and again["replayed"] is True
    assert client.balance(PHONE)["balance_fen"] == before + 1000  # carried out once
    with pytest.raises(BossError) as exc:
        client.topup(PHONE, 2000, "order-1-topup")
    assert exc.value.code == "IDEMPOTENCY_MISMATCH"
    assert client.query_request("order-1-topup")["status"] == "succeeded"
    assert client.query_request("never-sent-key")["status"] == "unknown"


def test_wrong_secret_is_refused(app: Flask, simulator: str) -> None:
    wrong = HttpBoss(f"{simulator}/boss", "wechat-service-test", "not-the-secret")
    with pytest.raises(BossError) as exc:
        wrong.balance(PHONE)
    # The answer is signed with the simulator's secret for that app: ours does not verify it.
    assert exc.value.code in ("INVALID_SIGNATURE", "BAD_SIGNATURE")


def test_a_write_answered_too_late_has_an_unknown_outcome(app: Flask, simulator: str) -> None:
    requests.post(
        f"{simulator}/_sim/boss/faults",
        json={"kind": "timeout_after_accept", "operation": "topup", "ms": 2000},
        timeout=5,
    )
    slow = HttpBoss(f"{simulator}/boss", "wechat-service-test", helpers.BOSS_SECRET, write_timeout=0.5)
    with pytest.raises(BossUnknownOutcomeError):
        slow.topup("13800138124", 500, "order-2-topup")
    # The BOSS did it: asking, not resending, is how the caller learns it.
    assert boss().query_request("order-2-topup")["status"] == "succeeded"


def _text(app: Flask, target: Any, content: str, openid: str, msgid: int) -> dict[str, str] | None:
    xml = message_xml(target, openid, event_fields("text", {"content": content}, msgid))
    args, body = signed_request(target, xml)
    resp = app.test_client().post(f"/wechat/{target.appid}/callback", query_string=args, data=body)
    assert resp.status_code == 200
    return open_reply(target, resp.get_data(as_text=True))


def test_bind_then_inquire_in_chat(app: Flask, create_account: Any, simulator: str) -> None:
    account, _, target = create_account("safe")
    services.enable_store(account.id)
    db.session.commit()
    openid = "oSTORE000000000000000001"
    assert "请先绑定" in _text(app, target, "余额", openid, 9_000_001)["Content"]
    assert "验证码已发送至 138****8123" in _text(app, target, f"绑定 {PHONE}", openid, 9_000_002)["Content"]
    assert _text(app, target, "000000", openid, 9_000_003)["Content"] in ("验证码错误",)
    code = requests.get(f"{simulator}/_sim/boss/sms/{PHONE}", timeout=5).json()["code"]
    assert "绑定成功：138****8123" in _text(app, target, code, openid, 9_000_004)["Content"]

    line = requests.get(f"{simulator}/_sim/boss/lines/{PHONE}", timeout=5).json()
    answer = _text(app, target, "余额", openid, 9_000_005)["Content"]
    assert (
        answer
        == f"138****8123 当前话费余额 {line['balance_fen'] // 100}.{line['balance_fen'] % 100:02d} 元。"
    )
    assert _text(app, target, "余额", openid, 9_000_006)["Content"] == answer  # from the cache
    assert "剩余流量" in _text(app, target, "流量", openid, 9_000_007)["Content"]

    outcomes = db.session.scalars(sa.select(Inquiry.outcome).order_by(Inquiry.id)).all()
    assert [o.value for o in outcomes] == ["unbound", "answered", "cached", "answered"]
    # The number is encrypted at rest, found by its keyed hash.
    raw = db.session.execute(sa.text("SELECT phone, phone_hash FROM phone_bindings")).one()
    assert PHONE not in raw.phone and raw.phone_hash == services.phone_hash(PHONE)
    assert db.session.scalar(sa.select(PhoneBinding.phone)) == PHONE
    # The subscriber's history shows what the store answered.
    detail = db.session.scalars(sa.select(SubscriberEvent.detail).order_by(SubscriberEvent.id.desc())).first()
    assert detail["reply"].startswith("138****8123") and detail["by"].startswith("store.handlers")


def test_slow_boss_answers_later_by_customer_service_message(
    app: Flask, create_account: Any, simulator: str
) -> None:
    from store import jobs

    account, fields, target = create_account("plain")
    services.enable_store(account.id)
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/followers",
        json={"count": 1, "prefix": "oSLOW"},
        timeout=5,
    )
    openid = "oSLOW00000000"
    sub = factories.subscriber(account.id, openid, "13800138125")
    db.session.commit()
    requests.post(
        f"{simulator}/_sim/boss/faults",
        json={"kind": "latency", "operation": "balance", "ms": 2500},
        timeout=5,
    )
    app.config["INQUIRY_TIMEOUT"] = 0.3
    try:
        assert _text(app, target, "余额", openid, 9_100_001) is None  # `success`: WeChat shows nothing yet
    finally:
        app.config["INQUIRY_TIMEOUT"] = 1.5
    queued = [j for j in get_queue("high").jobs if j.func_name == "store.jobs.answer_inquiry"]
    assert [j.args for j in queued] == [(account.id, sub.id, "balance")]
    text = jobs.answer_inquiry(*queued[0].args)
    sent = requests.get(f"{simulator}/_sim/accounts/{fields['appid']}", timeout=5).json()["custom_messages"]
    assert sent[-1]["touser"] == openid and sent[-1]["text"]["content"] == text and "话费余额" in text
    assert db.session.scalar(sa.select(Inquiry.outcome)).value == "deferred"


def test_menu_click_inquiry(app: Flask, create_account: Any) -> None:
    account, _, target = create_account("compatible")
    services.enable_store(account.id)
    factories.subscriber(account.id, "oMENU000000000000001", "13800138126")
    db.session.commit()
    xml = message_xml(target, "oMENU000000000000001", event_fields("click", {"key": "INQUIRY_POINTS"}, 0))
    args, body = signed_request(target, xml)
    reply = open_reply(
        target,
        app.test_client()
        .post(f"/wechat/{target.appid}/callback", query_string=args, data=body)
        .get_data(as_text=True),
    )
    assert "当前积分" in reply["Content"]
    assert db.session.scalar(sa.select(Inquiry.source)) == "menu"


def test_accounts_without_the_store_keep_their_keyword_rules(app: Flask, create_account: Any) -> None:
    from accounts import replies

    account, _, target = create_account("plain")
    replies.add_rule(account.id, name="bal", keywords=["余额"], reply={"content": "keyword rule"})
    db.session.commit()
    assert _text(app, target, "余额", "oNOSTORE0000000000001", 9_200_001)["Content"] == "keyword rule"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Inquiry)) == 0


def test_unknown_numbers_and_send_limits(app: Flask, create_account: Any) -> None:
    account, _, target = create_account("plain")
    services.enable_store(account.id)
    db.session.commit()
    openid = "oLIMIT00000000000001"
    assert _text(app, target, "绑定 13800000000", openid, 9_300_001)["Content"] == "该号码不是本网用户"
    assert _text(app, target, "绑定 12345", openid, 9_300_002)["Content"] == "请输入 11 位手机号"
    replies = [
        _text(app, target, f"绑定 1380013{8200 + i}", openid, 9_300_010 + i)["Content"] for i in range(4)
    ]
    assert all("验证码已发送" in r for r in replies)
    assert "太频繁" in _text(app, target, "绑定 13800138300", openid, 9_300_020)["Content"]


def test_mini_program_binds_and_inquires(app: Flask, create_account: Any, simulator: str) -> None:
    account, fields, _ = create_account("plain", kind="mini_program")
    code = requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/js-codes", json={"openid": "oMP0000001"}, timeout=5
    ).json()["code"]
    client = app.test_client()
    token = client.post(f"/api/mp/{fields['appid']}/session", json={"code": code}).get_json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    resp = client.get(f"/api/mp/{fields['appid']}/inquiry/balance", headers=auth)
    assert resp.status_code == 409 and resp.get_json()["outcome"] == "unbound"
    assert client.post(
        f"/api/mp/{fields['appid']}/phone/sms", json={"phone": "13800138127"}, headers=auth
    ).get_json() == {"phone": "138****8127", "expires_in": 300}
    sms = requests.get(f"{simulator}/_sim/boss/sms/13800138127", timeout=5).json()["code"]
    assert (
        client.post(
            f"/api/mp/{fields['appid']}/phone/verify", json={"code": "12ab"}, headers=auth
        ).status_code
        == 400
    )
    assert (
        client.post(f"/api/mp/{fields['appid']}/phone/verify", json={"code": sms}, headers=auth).status_code
        == 201
    )
    assert client.get(f"/api/mp/{fields['appid']}/phone", headers=auth).get_json()["phone"] == "13800138127"
    body = client.get(f"/api/mp/{fields['appid']}/inquiry/bill", headers=auth).get_json()
    assert body["outcome"] == "answered" and body["data"]["amount_fen"] > 0
    assert client.get(f"/api/mp/{fields['appid']}/inquiry/bill").status_code == 401


def test_resends_do_not_repeat_side_effects(app: Flask, create_account: Any, simulator: str) -> None:
    """WeChat's copies of one message must not send a second SMS: the handlers run once."""
    account, _, target = create_account("plain")
    services.enable_store(account.id)
    db.session.commit()
    phone = "13800138131"
    replies = [_text(app, target, f"绑定 {phone}", "oRESEND0000000000001", 9_400_001) for _ in range(3)]
    assert len({r["Content"] for r in replies}) == 1 and "验证码已发送" in replies[0]["Content"]
    # One send counted, and one SMS at the BOSS: a second would have been refused (one a minute).
    counters = list(app.extensions["redis"].scan_iter("bind:sends:*"))  # subscriber, number, account
    assert len(counters) == 3 and {app.extensions["redis"].get(c) for c in counters} == {b"1"}


def test_parallel_code_guesses_cannot_exceed_the_attempt_limit(app: Flask, create_account: Any) -> None:
    """Twenty wrong codes at once: five reach the BOSS, the others are throttled (the counter is
    an atomic INCR, not a read-modify-write that parallel requests all read as zero)."""
    import threading

    from accounts.subscribers import touch
    from store.services import VERIFY_ATTEMPTS, ThrottledError, confirm_binding, start_binding
    from wechat_service.errors import ServiceError

    account, _, _ = create_account("plain")
    sub = touch(account.id, "oGUESS00000001", None)
    db.session.commit()
    start_binding(account.id, sub.id, "13800139209")
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def guess(i: int) -> None:
        with app.app_context():
            barrier.wait()
            try:
                confirm_binding(account.id, sub.id, f"{i:06d}")
                outcomes.append("bound")
            except ThrottledError:
                outcomes.append("throttled")
            except ServiceError as exc:  # the BOSS said wrong, or the pending code is already gone
                outcomes.append("gone" if exc.fields.get("code") == ["no pending"] else "wrong")

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("wrong") + outcomes.count("bound") <= VERIFY_ATTEMPTS
    assert outcomes.count("throttled") >= 1 and "bound" not in outcomes


def test_rate_limits_from_the_boss_are_retryable(app: Flask) -> None:
    boss().send_sms("13800139702")
    with pytest.raises(BossUnavailableError) as exc:
        boss().send_sms("13800139702")  # one a minute
    assert exc.value.code == "RATE_LIMITED" and exc.value.retryable


def test_idempotency_keys_belong_to_their_client(app: Flask, simulator: str) -> None:
    """Two deployments sharing one BOSS number their keys alike (redeem-1-1…): the contract scopes a
    key to the calling client, so the second one's top-up is carried out, not replayed."""
    import secrets

    other_id, other_secret = f"staging-{secrets.token_hex(4)}", secrets.token_hex(16)
    requests.post(
        f"{simulator}/_sim/boss/clients", json={"app_id": other_id, "secret": other_secret}, timeout=5
    ).raise_for_status()
    ours = HttpBoss(f"{simulator}/boss", "wechat-service-test", helpers.BOSS_SECRET)
    theirs = HttpBoss(f"{simulator}/boss", other_id, other_secret)
    phone, key = "13800139207", f"redeem-{secrets.token_hex(4)}-1"
    before = requests.get(f"{simulator}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    assert not ours.topup(phone, 500, key).get("replayed")
    assert not theirs.topup(phone, 500, key).get("replayed")  # another client: carried out
    assert ours.topup(phone, 500, key).get("replayed")  # the same client again: replayed
    assert theirs.query_request(key)["status"] == "succeeded"
    after = requests.get(f"{simulator}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    assert after == before + 1000


@pytest.mark.parametrize(
    ("boss_code", "code", "status"),
    [
        ("UNKNOWN_NUMBER", "boss_unknown_number", 400),
        ("INVALID_CODE", "boss_invalid_code", 400),
        ("CODE_EXPIRED", "boss_code_expired", 400),
        ("TOO_MANY_ATTEMPTS", "boss_too_many_attempts", 429),
        ("RATE_LIMITED", "boss_rate_limited", 429),
        ("BUSY", "boss_unavailable", 503),
        ("UNREACHABLE", "boss_unavailable", 503),
        ("SOMETHING_NEW", "boss_unavailable", 503),
    ],
)
def test_boss_refusals_become_our_codes(boss_code: str, code: str, status: int) -> None:
    """The refusals a subscriber can act on keep their own code; any other BOSS failure is one code
    (no longer boss_<whatever the BOSS said>: a code is a member of StoreErrorCode)."""
    problem = services._boss_problem(BossError(boss_code))
    assert (problem.code, problem.status) == (code, status)
