"""The operator console in-process: sign-in, throttling, TOTP, CSRF, roles × actions, masking
and audited reveal, audit entries in the change's transaction, the JSON API and its OpenAPI."""

from __future__ import annotations

import time
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa
from flask import Flask

from accounts import services, staff
from accounts.models import AuditLog, StaffUser, Subscriber, SubscriberEvent
from tests.console_helpers import PASSWORD, Staff, page_token
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db


def _login_post(
    client: Any, username: str, password: str, code: str | None = None, ip: str = "10.0.0.1"
) -> Any:
    token = page_token(client.get("/console/login").get_data(as_text=True))
    data = {"username": username, "password": password, "csrf_token": token}
    if code:
        data["code"] = code
    return client.post("/console/login", data=data, environ_base={"REMOTE_ADDR": ip})


def test_pages_need_a_signed_in_user(app: Flask) -> None:
    client = app.test_client()
    resp = client.get("/console/")
    assert resp.status_code == 302 and "/console/login" in resp.headers["Location"]
    resp = client.get("/api/v1/accounts")
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"


def test_sign_in_and_out(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    assert admin.get("/console/").status_code == 200
    assert admin.form("/console/logout").status_code == 302
    assert admin.get("/console/").status_code == 302
    entries = db.session.scalars(sa.select(AuditLog.action).order_by(AuditLog.id)).all()
    assert entries[-2:] == ["login", "logout"]


def _signed_out(client: Any) -> bool:
    resp = client.get("/console/")
    return resp.status_code == 302 and "/console/login" in resp.headers["Location"]


def test_wrong_password_and_throttling_per_user(app: Flask, create_staff: Any) -> None:
    staff.create_user("victim", PASSWORD)
    db.session.commit()
    client = app.test_client()
    for _ in range(staff.USER_FAILURES):
        resp = _login_post(client, "victim", "wrong password!!")
        assert resp.status_code == 401
        assert "wrong username, password or code" in resp.get_data(as_text=True)
        assert _signed_out(client)
    # Locked now, even with the right password; another user from another IP is unaffected.
    assert _login_post(client, "victim", PASSWORD).status_code == 429
    staff.create_user("other", PASSWORD)
    db.session.commit()
    assert _login_post(app.test_client(), "other", PASSWORD, ip="10.0.0.2").status_code == 302


def test_throttling_per_ip(app: Flask) -> None:
    staff.create_user("someone", PASSWORD)
    db.session.commit()
    client = app.test_client()
    for i in range(staff.IP_FAILURES):
        assert _login_post(client, f"nobody{i}", "x" * 12, ip="10.9.9.9").status_code == 401
    assert _login_post(client, "someone", PASSWORD, ip="10.9.9.9").status_code == 429
    assert _login_post(client, "someone", PASSWORD, ip="10.9.9.8").status_code == 302


def test_totp_second_factor(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    page = admin.get("/console/totp").get_data(as_text=True)
    secret = page.split('name="secret" value="')[1].split('"')[0]
    wrong = admin.form("/console/totp", {"secret": secret, "code": "000000", "password": PASSWORD})
    assert wrong.status_code == 200 and "that code does not match" in wrong.get_data(as_text=True)
    db.session.expire_all()
    assert not db.session.scalar(sa.select(StaffUser.totp_secret).where(StaffUser.username == admin.username))
    totp = pyotp.TOTP(secret)
    assert (
        admin.form("/console/totp", {"secret": secret, "code": totp.now(), "password": PASSWORD}).status_code
        == 302
    )
    client = app.test_client()
    resp = _login_post(client, admin.username, PASSWORD)
    assert resp.status_code == 401 and "enter the code from your authenticator app" in resp.get_data(
        as_text=True
    )
    assert _signed_out(client)
    resp = _login_post(client, admin.username, PASSWORD, code="123456")
    assert resp.status_code == 401 and "wrong username, password or code" in resp.get_data(as_text=True)
    assert _signed_out(client)
    # The code that switched TOTP on is spent; the next one (one step early) signs in.
    next_code = totp.at(time.time() + 30)
    assert _login_post(client, admin.username, PASSWORD, code=next_code).status_code == 302
    assert not _signed_out(client)


def test_idle_timeout_signs_out(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    app.config["CONSOLE_IDLE_TIMEOUT"] = 1
    try:
        time.sleep(1.2)
        assert admin.get("/console/").status_code == 302
    finally:
        app.config.pop("CONSOLE_IDLE_TIMEOUT")


def test_password_change_ends_other_sessions(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    other_device = Staff(app, admin.username)
    resp = admin.form(
        "/console/password", {"current_password": PASSWORD, "new_password": "another good pass 2"}
    )
    assert resp.status_code == 302
    assert admin.get("/console/").status_code == 200  # this session was renewed
    assert other_device.get("/console/").status_code == 302  # the other one is gone
    admin.refresh_token()
    assert (
        admin.form("/console/password", {"current_password": "wrong", "new_password": "x" * 12}).status_code
        == 200
    )


def test_session_cookie_flags(app: Flask, create_staff: Any) -> None:
    client = app.test_client()
    resp = _login_post(client, create_staff(admin=True, login=False).username, PASSWORD)
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_csrf_is_required_on_forms_and_api(app: Flask, create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    resp = admin.client.post(f"/console/accounts/{account.id}/status", data={"status": "disabled"})
    assert resp.status_code == 400
    resp = admin.client.post(f"/api/v1/accounts/{account.id}/status", json={"active": False})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_request"
    db.session.refresh(account)
    assert account.status.value == "active"
    assert admin.api("POST", f"/api/v1/accounts/{account.id}/status", {"active": False}).status_code == 200


ROLE_ACTIONS = {
    # action: (method, url template, body, roles allowed)
    "view": ("GET", "/api/v1/accounts/{a}", None, {"account_manager", "marketer", "analyst", "support"}),
    "edit": ("PATCH", "/api/v1/accounts/{a}", {"name": "Renamed"}, {"account_manager"}),
    "add_rule": (
        "POST",
        "/api/v1/accounts/{a}/rules",
        {"name": "r", "keywords": ["k"], "reply": {"content": "c"}},
        {"account_manager"},
    ),
    "menu": (
        "PUT",
        "/api/v1/accounts/{a}/menu",
        {"button": [{"type": "click", "name": "A", "key": "K"}]},
        {"account_manager"},
    ),
    "subscribers": ("GET", "/api/v1/accounts/{a}/subscribers", None, {"account_manager", "support"}),
    "reveal": (
        "POST",
        "/api/v1/accounts/{a}/subscribers/{s}/reveal",
        {"reason": "customer call"},
        {"support"},
    ),
    "staff": ("GET", "/api/v1/staff", None, set()),
    "audit": ("GET", "/api/v1/audit", None, set()),
}


@pytest.mark.parametrize("role", ["account_manager", "marketer", "analyst", "support"])
@pytest.mark.parametrize("action", sorted(ROLE_ACTIONS))
def test_role_action_matrix(role: str, action: str, create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    sub = Subscriber(account_id=account.id, openid="oMATRIX000000000001", following=True)
    db.session.add(sub)
    db.session.commit()
    user = create_staff(role, account_id=account.id)
    method, url, body, allowed = ROLE_ACTIONS[action]
    resp = user.api(method, url.format(a=account.id, s=sub.id), body)
    if role in allowed:
        assert resp.status_code in (200, 201), resp.get_json()
    else:
        assert resp.status_code == 403, resp.get_json()
        assert resp.get_json()["error"]["code"] == "forbidden"


def test_admin_can_do_everything(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    for method, url, body, _ in ROLE_ACTIONS.values():
        if "{s}" in url:
            continue
        assert admin.api(method, url.format(a=account.id), body).status_code in (200, 201)


def test_org_unit_grant_covers_accounts_below(create_staff: Any, create_account: Any) -> None:
    services.add_org_unit("g1", "Group", "group")
    services.add_org_unit("p1", "Province", "province", "g1")
    services.add_org_unit("c1", "City", "city", "p1")
    services.add_org_unit("p2", "Other province", "province", "g1")
    db.session.commit()
    inside, _, _ = create_account("plain", org_unit_code="c1")
    outside, _, _ = create_account("plain", org_unit_code="p2")
    user = create_staff("analyst", org_unit="p1")
    ids = {a["id"] for a in user.api("GET", "/api/v1/accounts").get_json()["items"]}
    assert inside.id in ids and outside.id not in ids
    assert user.api("GET", f"/api/v1/accounts/{outside.id}").status_code == 404
    overview = user.get("/console/").get_data(as_text=True)
    assert inside.name in overview and outside.appid not in overview


def test_support_sees_masked_data_and_reveal_is_audited(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    sub = Subscriber(
        account_id=account.id,
        openid="oREVEALabcdefghijkl1234",
        unionid="uREVEALzyxwvutsrq9876",
        following=True,
    )
    db.session.add(sub)
    db.session.commit()
    support = create_staff("support", account_id=account.id)
    listing = support.api("GET", f"/api/v1/accounts/{account.id}/subscribers").get_json()["items"]
    assert listing[0]["openid"] == "oREV****1234" and listing[0]["masked"] is True
    page = support.get(f"/console/accounts/{account.id}/subscribers/{sub.id}").get_data(as_text=True)
    assert "oREVEALabcdefghijkl1234" not in page and "oREV****1234" in page
    revealed = support.form(f"/console/accounts/{account.id}/subscribers/{sub.id}/reveal", {"reason": "call"})
    assert "oREVEALabcdefghijkl1234" in revealed.get_data(as_text=True)
    entry = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "subscriber.reveal")).one()
    assert entry.account_id == account.id and entry.after == {"reason": "call"}
    admin = create_staff(admin=True)
    full = admin.api("GET", f"/api/v1/accounts/{account.id}/subscribers").get_json()["items"]
    assert full[0]["openid"] == "oREVEALabcdefghijkl1234"


def test_audit_entry_commits_with_the_change_and_redacts_secrets(
    create_staff: Any, create_account: Any
) -> None:
    account, fields, _ = create_account("plain")
    admin = create_staff(admin=True)
    before = db.session.scalar(sa.select(sa.func.count()).select_from(AuditLog))
    bad = admin.api("PATCH", f"/api/v1/accounts/{account.id}", {"aes_key": "short"})
    assert bad.status_code == 400 and "aes_key" in bad.get_json()["error"]["fields"]
    assert (
        db.session.scalar(sa.select(sa.func.count()).select_from(AuditLog)) == before
    )  # nothing half-written
    ok = admin.api("PATCH", f"/api/v1/accounts/{account.id}", {"name": "New name", "app_secret": "n3wsecret"})
    assert (
        ok.status_code == 200
        and ok.get_json()["app_secret"].endswith("cret")
        and "n3w" not in ok.get_json()["app_secret"]
    )
    entry = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "account.update")).one()
    assert entry.before["name"] == "Test plain" and entry.after["name"] == "New name"
    assert entry.after["app_secret"] == "[redacted]"
    assert fields["app_secret"] not in str(entry.before) + str(entry.after)


def test_audit_page_filters(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    admin.api("POST", f"/api/v1/accounts/{account.id}/status", {"active": False})
    page = admin.get(f"/console/audit?action=account.disable&account={account.id}").get_data(as_text=True)
    assert "account.disable" in page and "login" not in page.split("<tbody>")[1]
    api = admin.api("GET", "/api/v1/audit?action=account.disable").get_json()
    assert api["total"] == 1 and api["items"][0]["after"] == {"status": "disabled"}


def test_forms_keep_input_and_show_field_errors(create_staff: Any) -> None:
    admin = create_staff(admin=True)
    resp = admin.form(
        "/console/accounts/new", {"name": "Keep me", "appid": "not-an-appid", "app_secret": "s"}
    )
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'value="Keep me"' in body and "must look like wx" in body


def test_try_a_message_shows_which_rule_answers(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    manager = create_staff("account_manager", account_id=account.id)
    resp = manager.form(
        f"/console/accounts/{account.id}/replies",
        {
            "name": "balance",
            "kind": "keyword",
            "keywords": "余额, balance",
            "match_mode": "exact",
            "priority": "5",
            "reply_type": "text",
            "content": "您的余额为 10 元",
        },
    )
    assert resp.status_code == 302
    page = manager.get(f"/console/accounts/{account.id}/replies?try=余额").get_data(as_text=True)
    assert 'class="rule-name">balance<' in page and "您的余额为 10 元" in page
    api = manager.api("POST", f"/api/v1/accounts/{account.id}/rules/try", {"text": "nothing"}).get_json()
    assert api["rule"] is None


def test_menu_editor_enforces_limits_and_publishes(
    create_staff: Any, create_account: Any, simulator: str
) -> None:
    import requests

    account, fields, _ = create_account("plain")
    manager = create_staff("account_manager", account_id=account.id)
    grid = {"0-top": "0", "0-sub": "", "0-name": "这个名字太长了超过限制", "0-type": "click", "0-value": "K"}
    resp = manager.form(f"/console/accounts/{account.id}/menu", grid)
    assert resp.status_code == 200 and "button[0].name" in resp.get_data(as_text=True)
    grid["0-name"] = "查余额"
    assert manager.form(f"/console/accounts/{account.id}/menu", grid).status_code == 302
    assert manager.form(f"/console/accounts/{account.id}/menu/publish").status_code == 302
    published = requests.get(f"{simulator}/_sim/accounts/{fields['appid']}", timeout=5).json()["menu"]
    assert published == {"button": [{"name": "查余额", "type": "click", "key": "K"}]}


def test_qrcode_png_download(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    manager = create_staff("account_manager", account_id=account.id)
    assert (
        manager.form(
            f"/console/accounts/{account.id}/qrcodes",
            {"name": "Store 1", "scene": "store-1", "channel_type": "store", "permanent": "1"},
        ).status_code
        == 302
    )
    codes = manager.api("GET", f"/api/v1/accounts/{account.id}/qrcodes").get_json()
    resp = manager.get(f"/console/accounts/{account.id}/qrcodes/{codes[0]['id']}.png?download=1")
    assert (
        resp.status_code == 200
        and resp.data.startswith(b"\x89PNG")
        and "attachment" in resp.headers["Content-Disposition"]
    )


def test_openapi_document_lists_the_console_api(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/v1/accounts",
        "/api/v1/accounts/{account_id}/rules",
        "/api/v1/audit",
        "/api/v1/overview",
    ):
        assert path in doc["paths"]
    assert "AccountCreate" in doc["components"]["schemas"]


def test_api_validation_errors_use_the_one_error_shape(create_staff: Any) -> None:
    admin = create_staff(admin=True)
    resp = admin.api("POST", "/api/v1/accounts", {"name": "x", "unknown_field": 1})
    body = resp.get_json()
    assert resp.status_code == 400 and body["error"]["code"] == "invalid_input"
    assert "appid" in body["error"]["fields"] and "unknown_field" in body["error"]["fields"]


def test_staff_and_grants_through_the_pages(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    admin = create_staff(admin=True)
    resp = admin.form(
        "/console/staff", {"username": "newbie", "password": "newbie password 1", "is_admin": "0"}
    )
    assert resp.status_code == 302
    user_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    resp = admin.form(
        f"/console/staff/{user_id}", {"action": "grant", "role": "analyst", "scope": f"a:{account.id}"}
    )
    assert resp.status_code == 302
    newbie = Staff(admin.client.application, "newbie", "newbie password 1")
    assert newbie.api("GET", f"/api/v1/accounts/{account.id}").status_code == 200
    assert newbie.get("/console/staff").status_code == 403


# -- found in review: who may do what, masking, reveal, grants -------------------------------------


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


def test_the_services_front_page_leads_to_the_console(app: Any) -> None:
    resp = app.test_client().get("/")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/console/")
    follow = app.test_client().get("/", follow_redirects=True)
    assert follow.status_code == 200 and "/console/login" in follow.request.path
