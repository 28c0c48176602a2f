"""Defects found in review, each with the test that would have caught it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts import replies, services
from accounts.models import ReplyRule, Subscriber, SubscriberEvent
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError
from wechat_service.extensions import db


def test_account_managers_cannot_move_accounts_between_org_units(
    create_staff: Any, create_account: Any
) -> None:
    services.add_org_unit("hz-a", "A", "province")
    services.add_org_unit("hz-b", "B", "province")
    db.session.commit()
    account, _, _ = create_account("plain", org_unit_code="hz-a")
    manager = create_staff("account_manager", account_id=account.id)
    resp = manager.api("PATCH", f"/api/v1/accounts/{account.id}", {"org_unit": "hz-b"})
    assert resp.status_code == 403
    page = manager.get(f"/console/accounts/{account.id}").get_data(as_text=True)
    assert 'name="org_unit"' not in page
    db.session.expire_all()
    assert services.account_by_appid(account.appid).org_unit.code == "hz-a"


def test_a_catastrophic_regex_gives_up_instead_of_hanging(create_account: Any) -> None:
    account, _, _ = create_account("plain")
    with pytest.raises(InvalidInputError):  # refused when saved …
        replies.add_rule(
            account.id, name="evil", keywords=["^(a+)+$"], match_mode="regex", reply={"content": "x"}
        )
    # … and one saved before that check gives up when matched.
    db.session.add(
        ReplyRule(
            account_id=account.id,
            name="evil",
            keywords=["^(a+)+$"],
            match_mode="regex",
            reply_type="text",
            reply={"content": "x"},
        )
    )
    replies.add_rule(account.id, name="fallback", kind="default", reply={"content": "default"})
    db.session.commit()
    started = time.monotonic()
    rule = replies.match_text(
        account.id, services.account_by_appid(account.appid).config_version, "a" * 60 + "!"
    )
    # Backtracking would take longer than the universe has left; the timeout makes it a non-match.
    assert rule.name == "fallback" and time.monotonic() - started < 60


def test_a_new_aes_key_never_travels_in_the_session_cookie(
    app: Flask, create_staff: Any, create_account: Any
) -> None:
    account, _, _ = create_account("safe")
    admin = create_staff(admin=True)
    resp = admin.form(f"/console/accounts/{account.id}/rotate-aes-key")
    db.session.expire_all()
    new_key = services.account_by_appid(account.appid).aes_key
    assert resp.status_code == 200 and new_key in resp.get_data(as_text=True)
    serializer = app.session_interface.get_signing_serializer(app)
    cookie = admin.client.get_cookie("ws_console")
    assert new_key not in str(serializer.loads(cookie.value))


def test_unreachable_wechat_errors_carry_no_access_token(app: Flask, create_account: Any) -> None:
    from wechat_service.gateway import GatewayClient, UnreachableError, token_manager

    account, fields, _ = create_account("plain")
    app.extensions["redis"].hset(
        f"wx:token:{fields['appid']}", mapping={"token": "SECRET_TOKEN_abc", "expires_at": time.time() + 7200}
    )
    client = GatewayClient(
        fields["appid"],
        fields["app_secret"],
        api_base="http://127.0.0.1:9",
        tokens=token_manager(),
        timeout=1,
        busy_retries=0,
    )
    with pytest.raises(UnreachableError) as exc:
        client.menu.get()
    assert "SECRET_TOKEN_abc" not in str(exc.value) and "access_token" not in str(exc.value)


def test_masked_roles_see_no_free_text_digits_and_search_exactly(
    create_staff: Any, create_account: Any
) -> None:
    account, _, _ = create_account("plain")
    sub = Subscriber(account_id=account.id, openid="oMASKsearch000000000001", following=True)
    db.session.add(sub)
    db.session.flush()
    db.session.add(
        SubscriberEvent(
            account_id=account.id,
            subscriber_id=sub.id,
            kind="message",
            occurred_at=utcnow(),
            detail={"type": "voice", "Recognition": "我的手机号13800138000"},
        )
    )
    db.session.commit()
    support = create_staff("support", account_id=account.id)
    events = support.api("GET", f"/api/v1/accounts/{account.id}/subscribers/{sub.id}/events").get_json()[
        "items"
    ]
    assert "13800138000" not in str(events) and "138****8000" in events[0]["detail"]["Recognition"]
    prefix = support.api("GET", f"/api/v1/accounts/{account.id}/subscribers?q=oMASK").get_json()
    assert prefix["total"] == 0  # no recovering ids a character at a time
    exact = support.api(
        "GET", f"/api/v1/accounts/{account.id}/subscribers?q=oMASKsearch000000000001"
    ).get_json()
    assert exact["total"] == 1


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


def test_revoking_a_grant_with_a_bad_id(create_staff: Any) -> None:
    admin = create_staff(admin=True)
    user_id = admin.api(
        "POST", "/api/v1/staff", {"username": "revokee", "password": "revokee password 1"}
    ).get_json()["id"]
    resp = admin.form(f"/console/staff/{user_id}", {"action": "revoke", "grant_id": "abc"})
    assert resp.status_code == 200 and "no such grant" in resp.get_data(as_text=True)


def test_reveal_needs_a_reason(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    sub = Subscriber(account_id=account.id, openid="oREASON0000000000001", following=True)
    db.session.add(sub)
    db.session.commit()
    support = create_staff("support", account_id=account.id)
    resp = support.form(f"/console/accounts/{account.id}/subscribers/{sub.id}/reveal", {"reason": " "})
    assert resp.status_code == 400 and "oREASON0000000000001" not in resp.get_data(as_text=True)


def test_follower_sync_never_undoes_a_newer_unfollow(app: Flask, create_account: Any, simulator: str) -> None:
    from datetime import timedelta

    from accounts import subscribers, sync
    from accounts.subscribers import touch

    account, fields, _ = create_account("plain")
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/followers",
        json={"count": 1, "prefix": "oSYNC"},
        timeout=5,
    )  # WeChat's snapshot: subscribed a day ago
    sub = touch(account.id, "oSYNC00000000", None)
    subscribers.follow(sub, utcnow() - timedelta(days=2), scene="store-1", channel_id=None)
    subscribers.unfollow(touch(account.id, "oSYNC00000000", None), utcnow() - timedelta(minutes=1))
    run = sync.start_sync(account.id)
    db.session.commit()
    sync.run_sync(run.id)
    db.session.expire_all()
    row = db.session.scalar(sa.select(Subscriber).where(Subscriber.openid == "oSYNC00000000"))
    assert row.following is False  # the unfollow callback is newer than the snapshot's follow
    assert row.first_followed_at < row.last_followed_at  # the snapshot's later follow time is kept
