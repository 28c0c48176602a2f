"""The mini-program's getPhoneNumber button: its code → WeChat's wxa/business/getuserphonenumber (the
simulator) → the phone binding. The watermark must name this mini-program, codes are single-use,
WeChat being busy is a 503, and a failure binds nothing (nor replaces an earlier binding)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from store import orders
from store import services as store_services
from store.models import PhoneBinding
from tests import factories
from tests.accounts.test_mp import js_code, login
from wechat_service.extensions import db


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def signed_in(client: Any, simulator: str, create_account: Any) -> dict[str, Any]:
    account, fields, _ = create_account("plain", kind="mini_program")
    appid = fields["appid"]
    body = login(client, appid, js_code(simulator, appid, "oPHONE0001")).get_json()
    return {
        "account": account,
        "appid": appid,
        "headers": {"Authorization": f"Bearer {body['token']}"},
    }


def phone_code(simulator: str, appid: str, phone: str, **extra: Any) -> str:
    resp = requests.post(
        f"{simulator}/_sim/accounts/{appid}/phone-codes", json={"phone": phone, **extra}, timeout=10
    )
    resp.raise_for_status()
    return resp.json()["code"]


def bind(client: Any, who: dict[str, Any], code: Any) -> Any:
    return client.post(f"/api/mp/{who['appid']}/phone/wechat", json={"code": code}, headers=who["headers"])


def bindings() -> list[PhoneBinding]:
    return list(db.session.scalars(sa.select(PhoneBinding)))


def test_the_phone_from_wechat_is_bound(client: Any, simulator: str, signed_in: dict[str, Any]) -> None:
    resp = bind(client, signed_in, phone_code(simulator, signed_in["appid"], "13800138555"))
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["phone"] == "13800138555"  # the subscriber's own number, in clear to them
    (binding,) = bindings()
    assert binding.method == "mp" and binding.phone == "13800138555"
    assert binding.phone_hash == store_services.phone_hash("13800138555")
    raw = db.session.execute(sa.text("SELECT phone FROM phone_bindings")).scalar_one()
    assert "13800138555" not in raw  # encrypted at rest
    mine = client.get(f"/api/mp/{signed_in['appid']}/phone", headers=signed_in["headers"]).get_json()
    assert mine["phone"] == "13800138555"


def test_the_number_is_masked_to_everyone_else(
    client: Any, simulator: str, signed_in: dict[str, Any], create_staff: Any
) -> None:
    assert (
        bind(client, signed_in, phone_code(simulator, signed_in["appid"], "13800138556")).status_code == 201
    )
    account = signed_in["account"]
    (binding,) = bindings()
    product = factories.topup(account.id, "t10", 1000, 1000)
    orders.create_order(account.id, binding.subscriber_id, product.id, "client-key-0001", "wechatpay_v3")
    db.session.commit()
    support = create_staff("support", account_id=account.id)
    page = support.get(f"/console/accounts/{account.id}/orders").get_data(as_text=True)
    assert "138****8556" in page and "13800138556" not in page
    api = support.api("GET", f"/api/v1/accounts/{account.id}/orders").get_json()
    assert "13800138556" not in str(api) and "138****8556" in str(api)


def test_a_code_is_single_use(client: Any, simulator: str, signed_in: dict[str, Any]) -> None:
    code = phone_code(simulator, signed_in["appid"], "13800138557")
    assert bind(client, signed_in, code).status_code == 201
    again = bind(client, signed_in, code)
    assert again.status_code == 400 and again.get_json()["error"]["code"] == "invalid_code"
    assert len(bindings()) == 1


def test_an_unknown_code_binds_nothing(client: Any, signed_in: dict[str, Any]) -> None:
    resp = bind(client, signed_in, "made-up-code")
    assert resp.status_code == 400
    assert resp.get_json()["error"] == {
        "code": "invalid_code",
        "message": "invalid or used phone code; tap the button again",
        "fields": {},
    }
    assert bindings() == []


def test_a_watermark_of_another_app_is_refused(
    client: Any, simulator: str, signed_in: dict[str, Any]
) -> None:
    code = phone_code(simulator, signed_in["appid"], "13800138558", watermark_appid="wx0000000000000bad")
    resp = bind(client, signed_in, code)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "appid_mismatch"
    assert bindings() == []


def test_a_number_the_operator_does_not_serve_is_not_bound(
    client: Any, simulator: str, signed_in: dict[str, Any]
) -> None:
    """WeChat vouches for the number, not for the operator: the BOSS is asked, as on the SMS path."""
    resp = bind(client, signed_in, phone_code(simulator, signed_in["appid"], "13800000000"))  # BOSS: unknown
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "boss_unknown_number"
    assert bindings() == []


def test_a_failure_keeps_the_earlier_binding(client: Any, simulator: str, signed_in: dict[str, Any]) -> None:
    assert (
        bind(client, signed_in, phone_code(simulator, signed_in["appid"], "13800138559")).status_code == 201
    )
    bad = phone_code(simulator, signed_in["appid"], "13900139000", watermark_appid="wx0000000000000bad")
    assert bind(client, signed_in, bad).status_code == 400
    assert bind(client, signed_in, "used-or-invalid").status_code == 400
    db.session.expire_all()
    (binding,) = bindings()
    assert binding.phone == "13800138559"
    # A new, valid code rebinds the subscriber to the new number.
    assert (
        bind(client, signed_in, phone_code(simulator, signed_in["appid"], "13900139001")).status_code == 201
    )
    db.session.expire_all()
    (binding,) = bindings()
    assert binding.phone == "13900139001" and binding.method == "mp"


def test_a_number_outside_mainland_china_is_refused(
    client: Any, simulator: str, signed_in: dict[str, Any]
) -> None:
    code = phone_code(simulator, signed_in["appid"], "91234567", country_code="852")
    resp = bind(client, signed_in, code)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_input"
    assert bindings() == []


def test_wechat_busy_is_a_503(client: Any, simulator: str, signed_in: dict[str, Any]) -> None:
    code = phone_code(simulator, signed_in["appid"], "13800138560")
    # More busy answers than the gateway's retries (2 in tests): the caller is told to try again.
    requests.post(
        f"{simulator}/_sim/accounts/{signed_in['appid']}/faults", json={"kind": "busy", "count": 3}, timeout=5
    )
    resp = bind(client, signed_in, code)
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "upstream_unavailable"
    assert bindings() == []
    # The code was never consumed at WeChat: the next tap succeeds with it.
    assert bind(client, signed_in, code).status_code == 201


def test_one_busy_answer_is_retried(client: Any, simulator: str, signed_in: dict[str, Any]) -> None:
    code = phone_code(simulator, signed_in["appid"], "13800138561")
    requests.post(
        f"{simulator}/_sim/accounts/{signed_in['appid']}/faults", json={"kind": "busy", "count": 1}, timeout=5
    )
    assert bind(client, signed_in, code).status_code == 201


def test_an_expired_access_token_is_refreshed(client: Any, simulator: str, signed_in: dict[str, Any]) -> None:
    code = phone_code(simulator, signed_in["appid"], "13800138562")
    assert bind(client, signed_in, "warm-up-the-token").status_code == 400
    requests.post(f"{simulator}/_sim/accounts/{signed_in['appid']}/invalidate-token", timeout=5)
    assert bind(client, signed_in, code).status_code == 201


@pytest.mark.parametrize(
    ("payload", "field"),
    [({}, "code"), ({"code": ""}, "code"), ({"code": 5}, "code"), ({"code": "x", "phone": "1"}, "phone")],
)
def test_bad_bodies_are_400_with_fields(
    client: Any, signed_in: dict[str, Any], payload: Any, field: str
) -> None:
    resp = client.post(
        f"/api/mp/{signed_in['appid']}/phone/wechat", json=payload, headers=signed_in["headers"]
    )
    assert resp.status_code == 400 and field in resp.get_json()["error"]["fields"]
    assert bindings() == []


def test_a_session_is_required(client: Any, simulator: str, signed_in: dict[str, Any]) -> None:
    code = phone_code(simulator, signed_in["appid"], "13800138563")
    resp = client.post(f"/api/mp/{signed_in['appid']}/phone/wechat", json={"code": code})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_session"
    assert bindings() == []


def _sms_sends(simulator: str) -> int:
    calls = requests.get(f"{simulator}/_sim/boss/lines/13800138999", timeout=5).json()["calls"]
    return int(calls.get("sms/send", 0))


def _another(client: Any, simulator: str, who: dict[str, Any], openid: str) -> dict[str, Any]:
    body = login(client, who["appid"], js_code(simulator, who["appid"], openid)).get_json()
    return {**who, "headers": {"Authorization": f"Bearer {body['token']}"}}


def _sms(client: Any, who: dict[str, Any], phone: str) -> Any:
    return client.post(f"/api/mp/{who['appid']}/phone/sms", json={"phone": phone}, headers=who["headers"])


def test_binding_codes_to_one_number_are_limited_per_hour(
    app: Flask, client: Any, simulator: str, signed_in: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several subscribers (or accounts) cannot together text one number more than the hourly
    limit: the limit is per number, refused before the BOSS is asked, and said clearly."""
    monkeypatch.setitem(app.config, "SMS_BIND_PER_PHONE_HOUR", 1)
    before = _sms_sends(simulator)
    assert _sms(client, signed_in, "13800138661").status_code == 202
    other = _another(client, simulator, signed_in, "oPHONE0002")
    resp = _sms(client, other, "13800138661")
    assert resp.status_code == 429
    error = resp.get_json()["error"]
    assert (error["code"], error["message"]) == (
        "phone_sms_limited",
        "该手机号接收验证码太频繁，请一小时后再试",
    )
    assert _sms_sends(simulator) == before + 1  # the BOSS never heard of the second one
    assert _sms(client, other, "13800138662").status_code == 202  # another number: fine


def test_binding_codes_of_one_account_are_limited_per_hour(
    app: Flask, client: Any, simulator: str, signed_in: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "SMS_BIND_PER_ACCOUNT_HOUR", 2)
    before = _sms_sends(simulator)
    subscribers = [signed_in] + [_another(client, simulator, signed_in, f"oPHONE00{i}") for i in (3, 4)]
    statuses = [_sms(client, who, f"1380013867{i}").status_code for i, who in enumerate(subscribers)]
    assert statuses == [202, 202, 429]
    assert _sms(client, subscribers[2], "13800138679").get_json()["error"]["code"] == "account_sms_limited"
    assert _sms_sends(simulator) == before + 2
