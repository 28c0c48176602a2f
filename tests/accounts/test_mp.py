"""Mini-program sessions through the JSON API: wx.login code → jscode2session (the simulator) →
our signed token; codes are single-use, persons are linked by unionid, the session key is sealed."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts import services
from accounts.models import AccountStatus, Subscriber
from wechat_service.extensions import db
from wechat_service.models import MpSession


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def mini_program(create_account: Any) -> Any:
    account, fields, _ = create_account("plain", kind="mini_program")
    return account, fields["appid"]


def js_code(simulator: str, appid: str, openid: str | None = None, unionid: str | None = None) -> str:
    resp = requests.post(
        f"{simulator}/_sim/accounts/{appid}/js-codes", json={"openid": openid, "unionid": unionid}, timeout=10
    )
    resp.raise_for_status()
    return resp.json()["code"]


def login(client: Any, appid: str, code: str) -> Any:
    return client.post(f"/api/mp/{appid}/session", json={"code": code})


def sessions() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(MpSession)) or 0


def test_login_creates_a_session(client: Any, simulator: str, mini_program: Any) -> None:
    account, appid = mini_program
    resp = login(client, appid, js_code(simulator, appid, "oMP1", "uMP1"))
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["openid"] == "oMP1" and body["unionid"] == "uMP1"
    assert isinstance(body["person_id"], int) and body["token"]
    assert body["expires_in"] == 7 * 24 * 3600
    sub = db.session.scalar(sa.select(Subscriber).where(Subscriber.account_id == account.id))
    assert sub is not None and sub.openid == "oMP1" and sub.person_id == body["person_id"]
    assert sub.last_interaction_at is not None
    assert sessions() == 1


def test_login_without_unionid(client: Any, simulator: str, mini_program: Any) -> None:
    _, appid = mini_program
    body = login(client, appid, js_code(simulator, appid, "oNoUnion")).get_json()
    assert body["openid"] == "oNoUnion" and body["unionid"] is None and body["person_id"] is None


def test_a_code_is_single_use(client: Any, simulator: str, mini_program: Any) -> None:
    _, appid = mini_program
    code = js_code(simulator, appid, "oOnce")
    assert login(client, appid, code).status_code == 201
    again = login(client, appid, code)
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "code_used"
    assert sessions() == 1


def test_unknown_code_is_400(client: Any, mini_program: Any) -> None:
    _, appid = mini_program
    resp = login(client, appid, "not-a-real-code")
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "invalid_code"
    assert sessions() == 0


def test_a_code_of_another_mini_program_is_invalid_here(
    client: Any, simulator: str, create_account: Any
) -> None:
    _, a, _ = create_account("plain", kind="mini_program")
    _, b, _ = create_account("plain", kind="mini_program")
    code = js_code(simulator, a["appid"], "oA")
    assert login(client, b["appid"], code).get_json()["error"]["code"] == "invalid_code"
    assert login(client, a["appid"], code).status_code == 201


@pytest.mark.parametrize(
    ("payload", "field"),
    [({}, "code"), ({"code": None}, "code"), ({"code": 123}, "code"), ({"code": "x", "extra": 1}, "extra")],
)
def test_bad_request_bodies_are_400_with_fields(
    client: Any, mini_program: Any, payload: Any, field: str
) -> None:
    _, appid = mini_program
    resp = client.post(f"/api/mp/{appid}/session", json=payload)
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_input" and field in error["fields"]
    assert sessions() == 0


def test_empty_or_overlong_code_is_400(client: Any, mini_program: Any) -> None:
    _, appid = mini_program
    for code in ("", "c" * 129):
        resp = login(client, appid, code)
        assert resp.status_code == 400
        assert list(resp.get_json()["error"]["fields"]) == ["code"]  # the schema names it


def test_login_refused_for_unknown_official_or_disabled_accounts(
    client: Any, simulator: str, create_account: Any, mini_program: Any
) -> None:
    assert login(client, "wx00000000000000cc", "code").status_code == 404
    _, official, _ = create_account("plain")
    resp = login(client, official["appid"], js_code(simulator, official["appid"], "oX"))
    assert resp.status_code == 404 and "not a mini-program" in resp.get_json()["error"]["message"]
    _, appid = mini_program
    services.set_account_status(appid, AccountStatus.disabled)
    db.session.commit()
    assert login(client, appid, js_code(simulator, appid, "oY")).status_code == 403
    assert sessions() == 0


def test_wrong_app_secret_is_an_upstream_error(client: Any, simulator: str, mini_program: Any) -> None:
    _, appid = mini_program
    services.update_account(appid, app_secret="f" * 32)
    db.session.commit()
    resp = login(client, appid, js_code(simulator, appid, "oS"))
    assert resp.status_code == 502
    error = resp.get_json()["error"]
    assert error["code"] == "upstream_error" and "40125" in error["message"]
    assert sessions() == 0


def test_me_with_the_token(client: Any, simulator: str, mini_program: Any) -> None:
    _, appid = mini_program
    token = login(client, appid, js_code(simulator, appid, "oMe", "uMe")).get_json()["token"]
    resp = client.get(f"/api/mp/{appid}/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    assert resp.get_json()["openid"] == "oMe" and resp.get_json()["unionid"] == "uMe"


def test_me_refuses_bad_tokens(client: Any, simulator: str, create_account: Any, mini_program: Any) -> None:
    _, appid = mini_program
    token = login(client, appid, js_code(simulator, appid, "oT")).get_json()["token"]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for headers in (
        {"Authorization": f"Bearer {tampered}"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": token},  # no Bearer scheme
        {},
    ):
        resp = client.get(f"/api/mp/{appid}/me", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.get_json()["error"]["code"] == "invalid_session"
    # A valid token of one mini-program is no good at another.
    _, other, _ = create_account("plain", kind="mini_program")
    resp = client.get(f"/api/mp/{other['appid']}/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401


def test_a_revoked_session_is_refused(client: Any, simulator: str, mini_program: Any) -> None:
    _, appid = mini_program
    token = login(client, appid, js_code(simulator, appid, "oRev")).get_json()["token"]
    db.session.execute(sa.update(MpSession).values(revoked=True))
    db.session.commit()
    assert client.get(f"/api/mp/{appid}/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_the_same_unionid_is_one_person_across_accounts(
    client: Any, simulator: str, create_account: Any
) -> None:
    unionid = "u" + secrets.token_hex(8)
    _, a, _ = create_account("plain", kind="mini_program")
    _, b, _ = create_account("plain", kind="mini_program")
    first = login(client, a["appid"], js_code(simulator, a["appid"], "oA1", unionid)).get_json()
    second = login(client, b["appid"], js_code(simulator, b["appid"], "oB1", unionid)).get_json()
    assert first["person_id"] is not None and first["person_id"] == second["person_id"]
    assert first["openid"] != second["openid"]
    third = login(client, a["appid"], js_code(simulator, a["appid"], "oA2", "u-someone-else")).get_json()
    assert third["person_id"] not in (None, first["person_id"])
    # Logging in again with the same openid reuses the subscriber.
    again = login(client, a["appid"], js_code(simulator, a["appid"], "oA1", unionid)).get_json()
    assert again["person_id"] == first["person_id"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 3


def test_session_key_is_encrypted_at_rest(client: Any, simulator: str, mini_program: Any) -> None:
    _, appid = mini_program
    resp = login(client, appid, js_code(simulator, appid, "oKey"))
    assert resp.status_code == 201
    session = db.session.scalar(sa.select(MpSession))
    assert session is not None and len(session.session_key) >= 16
    raw = db.session.execute(
        sa.text("SELECT session_key FROM mp_sessions WHERE id = :id"), {"id": session.id}
    ).scalar_one()
    assert session.session_key not in raw and raw.startswith("gAAAAA")
    assert session.session_key not in resp.get_data(as_text=True)  # it never leaves the server


def test_openapi_document_lists_the_mini_program_api(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    order = doc["paths"]["/api/mp/{appid}/orders"]["post"]
    body = order["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/OrderCreate") and order["security"] == [{"mpSession": []}]
    assert doc["components"]["securitySchemes"]["mpSession"] == {"type": "http", "scheme": "bearer"}
    for path in ("/api/mp/{appid}/session", "/api/mp/{appid}/phone/wechat", "/api/mp/{appid}/redeem"):
        assert path in doc["paths"], path
    required = doc["components"]["schemas"]["OrderCreate"]["required"]
    assert sorted(required) == ["client_key", "product_id"]


def test_mini_program_api_refuses_bad_input_in_our_error_shape(app: Flask, create_account: Any) -> None:
    account, fields, _ = create_account("plain", kind="mini_program")
    resp = app.test_client().post(f"/api/mp/{fields['appid']}/session", json={"code": 5, "extra": 1})
    body = resp.get_json()["error"]
    assert resp.status_code == 400 and body["code"] == "invalid_input"
    assert set(body["fields"]) == {"code", "extra"}
