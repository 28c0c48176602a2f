"""Console sign-in hardening (review #6, #7, #8, #13, #23): sessions revocable on the server,
single-use TOTP codes that only the password and the current authenticator can replace, the
client IP behind a configured number of proxies, H5 and console sessions in separate cookies,
the OpenAPI document behind sign-in in production, and secrets' tails only for account managers."""

from __future__ import annotations

import json
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa
from flask import Flask, request

from accounts import services, staff
from accounts.front_doors.console import client_ip
from accounts.models import AuditLog, StaffUser
from tests import helpers
from tests.console_helpers import PASSWORD, Staff, page_token
from tests.store.test_h5 import H5
from wechat_service.extensions import db

NEW_PASSWORD = "another good pass 2"


def _login_post(client: Any, username: str, password: str, code: str | None = None) -> Any:
    token = page_token(client.get("/console/login").get_data(as_text=True))
    data = {"username": username, "password": password, "csrf_token": token}
    if code:
        data["code"] = code
    return client.post("/console/login", data=data)


def _replay(app: Flask, cookie: str) -> Any:
    """A fresh browser holding a copy of a console cookie saved earlier."""
    client = app.test_client()
    client.set_cookie("ws_console", cookie)
    return client


def _signed_out(client: Any) -> bool:
    resp = client.get("/console/")
    return resp.status_code == 302 and "/console/login" in resp.headers["Location"]


# -- #7 sessions end on the server -----------------------------------------------------------------


def test_a_cookie_saved_before_logout_is_signed_out_afterwards(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    saved = admin.client.get_cookie("ws_console").value
    assert not _signed_out(_replay(app, saved))  # the copy works while the session lives
    assert admin.form("/console/logout").status_code == 302
    replayed = _replay(app, saved)
    assert _signed_out(replayed)
    assert replayed.get("/api/v1/session").status_code == 401


def test_password_change_signs_out_every_other_session(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    before = admin.client.get_cookie("ws_console").value
    other_device = Staff(app, admin.username)
    resp = admin.form("/console/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert resp.status_code == 302
    assert not _signed_out(admin.client)  # this browser got a new session
    assert _signed_out(other_device.client)
    assert _signed_out(_replay(app, before))


def test_admin_signs_a_user_out_everywhere_from_the_staff_page_and_the_api(
    app: Flask, create_staff: Any
) -> None:
    admin = create_staff(admin=True)
    victim = create_staff(login=False)
    laptop, phone = Staff(app, victim.username), Staff(app, victim.username)
    saved = laptop.client.get_cookie("ws_console").value
    page = admin.get(f"/console/staff/{victim.id}").get_data(as_text=True)
    assert 'value="sign_out_everywhere"' in page
    resp = admin.form(f"/console/staff/{victim.id}", {"action": "sign_out_everywhere"})
    assert resp.status_code == 302
    assert _signed_out(laptop.client) and _signed_out(phone.client) and _signed_out(_replay(app, saved))
    assert not _signed_out(admin.client)
    # And through the API, for a session signed in afterwards.
    tablet = Staff(app, victim.username)
    assert not _signed_out(tablet.client)
    resp = admin.api("POST", f"/api/v1/staff/{victim.id}/sign-out-everywhere")
    assert resp.status_code == 204, resp.get_data(as_text=True)
    assert _signed_out(tablet.client)
    actions = db.session.scalars(
        sa.select(AuditLog.action).where(AuditLog.target == victim.username).order_by(AuditLog.id)
    ).all()
    assert actions.count("staff.sign_out_everywhere") == 2
    # Only administrators may do it.
    admin_id = db.session.scalar(sa.select(StaffUser.id).where(StaffUser.username == admin.username))
    resp = Staff(app, victim.username).api("POST", f"/api/v1/staff/{admin_id}/sign-out-everywhere")
    assert resp.status_code == 403
    assert not _signed_out(admin.client)


# -- #8 TOTP ---------------------------------------------------------------------------------------


def _secret_on(page: str) -> str:
    return page.split('name="secret" value="')[1].split('"')[0]


def _enable_totp(admin: Staff) -> pyotp.TOTP:
    secret = _secret_on(admin.get("/console/totp").get_data(as_text=True))
    totp = pyotp.TOTP(secret)
    resp = admin.form("/console/totp", {"secret": secret, "code": totp.now(), "password": PASSWORD})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    return totp


def _next_code(totp: pyotp.TOTP) -> str:
    """The code of the next time step (accepted one step early): the one that set TOTP up (the
    current step) is spent, and a test cannot wait 30 s for a fresh one."""
    import time

    return totp.at(time.time() + 30)


def test_replacing_totp_needs_the_password_and_a_code_from_the_current_authenticator(
    create_staff: Any,
) -> None:
    admin = create_staff(admin=True)
    first = _enable_totp(admin)
    user = db.session.scalar(sa.select(StaffUser).where(StaffUser.username == admin.username))
    old_secret = user.totp_secret
    page = admin.get("/console/totp").get_data(as_text=True)
    new = pyotp.TOTP(_secret_on(page))
    assert 'name="current_code"' in page and 'name="password"' in page
    # A session alone (no password, no current code) cannot swap the authenticator.
    for data in (
        {},
        {"password": PASSWORD},
        {"current_code": _next_code(first)},
        {"password": "wrong password!!", "current_code": _next_code(first)},
        {"password": PASSWORD, "current_code": "000000"},
    ):
        resp = admin.form("/console/totp", {"secret": new.secret, "code": new.now(), **data})
        assert resp.status_code == 200, data
        db.session.expire_all()
        assert db.session.get(StaffUser, user.id).totp_secret == old_secret, data
    resp = admin.form(
        "/console/totp",
        {
            "secret": new.secret,
            "code": new.now(),
            "password": PASSWORD,
            "current_code": _next_code(first),
        },
    )
    assert resp.status_code == 302
    db.session.expire_all()
    assert db.session.get(StaffUser, user.id).totp_secret == new.secret


def test_disabling_totp_needs_the_password_and_a_current_code(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    totp = _enable_totp(admin)
    assert admin.form("/console/totp/disable", {"password": PASSWORD}).status_code == 200
    assert admin.form("/console/totp/disable", {"code": _next_code(totp)}).status_code == 200
    db.session.expire_all()
    assert db.session.scalar(sa.select(StaffUser.totp_secret).where(StaffUser.username == admin.username))
    resp = admin.form("/console/totp/disable", {"password": PASSWORD, "code": _next_code(totp)})
    assert resp.status_code == 302
    db.session.expire_all()
    assert not db.session.scalar(sa.select(StaffUser.totp_secret).where(StaffUser.username == admin.username))
    assert _login_post(app.test_client(), admin.username, PASSWORD).status_code == 302


def test_a_totp_code_signs_in_once(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    totp = _enable_totp(admin)
    code = _next_code(totp)  # not the step used to switch it on
    assert _login_post(app.test_client(), admin.username, PASSWORD, code).status_code == 302
    replay = _login_post(app.test_client(), admin.username, PASSWORD, code)
    assert replay.status_code == 401 and "wrong username, password or code" in replay.get_data(as_text=True)
    # A step older than the one accepted is refused too, though still inside the clock window.
    assert _login_post(app.test_client(), admin.username, PASSWORD, totp.now()).status_code == 401


def test_the_code_that_switched_totp_on_cannot_sign_in(app: Flask, create_staff: Any) -> None:
    admin = create_staff(admin=True)
    secret = _secret_on(admin.get("/console/totp").get_data(as_text=True))
    code = pyotp.TOTP(secret).now()
    resp = admin.form("/console/totp", {"secret": secret, "code": code, "password": PASSWORD})
    assert resp.status_code == 302
    assert _login_post(app.test_client(), admin.username, PASSWORD, code).status_code == 401


# -- #6 client IP behind proxies -------------------------------------------------------------------


def _ip_app(tmp_path: Any, **config: Any) -> Flask:
    from wechat_service.app import create_app

    probe = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path),
            "DATABASE_URL": "postgresql://127.0.0.1/unused",
            "REDIS_URL": f"{helpers.REDIS}/{helpers.REDIS_DB}",
            "SECRET_KEY": helpers.SECRET_KEY,
            "MASTER_KEY": helpers.MASTER_KEY,
            **config,
        }
    )
    # A probe route on this throwaway app shows what the console would count per IP.
    probe.add_url_rule("/_probe_ip", "probe_ip", lambda: {"ip": client_ip(), "scheme": request.scheme})
    return probe


def test_forwarded_for_is_ignored_unless_proxies_are_trusted(tmp_path: Any) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    environ = {"REMOTE_ADDR": "10.0.0.5"}
    default = _ip_app(tmp_path / "a").test_client().get("/_probe_ip", headers=headers, environ_base=environ)
    assert default.get_json() == {"ip": "10.0.0.5", "scheme": "http"}
    one = _ip_app(tmp_path / "b", TRUSTED_PROXIES="1").test_client()
    assert one.get("/_probe_ip", headers=headers, environ_base=environ).get_json() == {
        "ip": "203.0.113.9",
        "scheme": "https",
    }
    # With one trusted hop, a client-supplied entry in front of the proxy's is not believed.
    spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
    assert one.get("/_probe_ip", headers=spoofed, environ_base=environ).get_json()["ip"] == "203.0.113.9"


def test_trusted_proxies_must_be_a_count(tmp_path: Any) -> None:
    from wechat_service.config import ConfigError

    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        _ip_app(tmp_path, TRUSTED_PROXIES="yes")


def test_failed_password_checks_are_audited(app: Flask) -> None:
    staff.create_user("target", PASSWORD)
    db.session.commit()
    for _ in range(staff.USER_FAILURES + 3):
        _login_post(app.test_client(), "target", "wrong password!!")
    failed = db.session.scalars(
        sa.select(AuditLog).where(AuditLog.action == "login.failed", AuditLog.target == "target")
    ).all()
    assert len(failed) == staff.USER_FAILURES  # throttled attempts never reach the password check


# -- #13 separate H5 cookie, OpenAPI behind sign-in ------------------------------------------------


def test_console_sign_in_and_out_leave_the_h5_session_alone(
    app: Flask, create_account: Any, create_staff: Any, simulator: str
) -> None:
    account, fields, _ = create_account("plain", kind="service")
    h5 = H5(app, simulator, fields["appid"])
    assert h5.login("oCOOKIE000000001").status_code == 200
    assert h5.client.get_cookie("ws_h5", path="/h5/") is not None
    staff.create_user("browser-user", PASSWORD, is_admin=True)
    db.session.commit()
    # The same browser signs in to the console and out again.
    assert _login_post(h5.client, "browser-user", PASSWORD).status_code == 302
    assert h5.get(f"/h5/{fields['appid']}/").status_code == 200
    token = page_token(h5.get("/console/").get_data(as_text=True))
    assert h5.client.post("/console/logout", data={"csrf_token": token}).status_code == 302
    assert _signed_out(h5.client)
    page = h5.get(f"/h5/{fields['appid']}/")
    assert page.status_code == 200, "the H5 session went with the console's"
    # And the console cookie never carries the subscriber's session.
    serializer = app.session_interface.get_signing_serializer(app)
    h5_cookie = serializer.loads(h5.client.get_cookie("ws_h5", path="/h5/").value)
    assert f"h5:{fields['appid']}" in h5_cookie and "uid" not in h5_cookie


def test_openapi_document_needs_sign_in_unless_public(app: Flask, create_staff: Any) -> None:
    app.config["OPENAPI_PUBLIC"] = False
    try:
        resp = app.test_client().get("/api/v1/openapi.json")
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"
        analyst = create_staff(login=False)
        doc = Staff(app, analyst.username).get("/api/v1/openapi.json")
        assert doc.status_code == 200 and "/api/v1/accounts" in doc.get_json()["paths"]
    finally:
        app.config["OPENAPI_PUBLIC"] = True


def test_openapi_is_public_by_default_only_in_development(tmp_path: Any) -> None:
    from wechat_service.config import load_config

    dev, prod = Flask("dev", instance_path=str(tmp_path)), Flask("prod")
    load_config(dev, {"SECRET_KEY": "x" * 40, "MASTER_KEY": helpers.MASTER_KEY})
    prod_settings = {
        "ENV": "production",
        "SECRET_KEY": "x" * 40,
        "MASTER_KEY": helpers.MASTER_KEY,
        "DATABASE_URL": "postgresql://db/x",
        "REDIS_URL": "redis://r/0",
    }
    load_config(prod, prod_settings)
    assert dev.config["OPENAPI_PUBLIC"] is True and prod.config["OPENAPI_PUBLIC"] is False
    opened = Flask("opened")
    load_config(opened, {**prod_settings, "OPENAPI_PUBLIC": "1"})
    assert opened.config["OPENAPI_PUBLIC"] is True


# -- #23 secrets' tails only for those who manage the account --------------------------------------


@pytest.mark.parametrize(
    ("role", "tails"),
    [("account_manager", True), ("marketer", False), ("analyst", False), ("support", False), (None, True)],
)
def test_secret_tails_only_for_roles_that_manage_settings(
    role: str | None, tails: bool, create_staff: Any, create_account: Any
) -> None:
    account, fields, _ = create_account("safe")
    user = create_staff(role, account_id=account.id) if role else create_staff(admin=True)
    answer = user.api("GET", f"/api/v1/accounts/{account.id}").get_json()
    page = user.get(f"/console/accounts/{account.id}").get_data(as_text=True)
    listed = user.api("GET", "/api/v1/accounts").get_json()["items"][0]
    for name in ("app_secret", "token", "aes_key"):
        tail = fields[name][-4:]
        if tails:
            assert answer[name].endswith(tail) and listed[name].endswith(tail)
        else:
            assert answer[name] == "set" and listed[name] == "set", name
            assert tail not in json.dumps(answer) and f"*{tail}" not in page
    assert answer["previous_aes_key"] == ""


# -- the session cookie carries no secret ---------------------------------------------------------


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
