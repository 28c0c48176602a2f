"""Property-based API testing with schemathesis (review #29): every operation of the OpenAPI
document (/api/v1 and the mini-program API), signed in as each role, with data in place so ids
resolve; no answer is a 5xx (an unhandled exception fails the test outright) and every documented
answer matches its schema. On a small budget, in-process against the Flask app, inside the test's
rolled-back transaction. Review #28: data the document allows is not refused by validation."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from accounts import menus, replies
from accounts.subscribers import touch
from tests import factories, helpers
from wechat_service.extensions import db

ROLES = ("administrator", "account_manager", "marketer", "analyst", "support")
EXAMPLES = 3  # per operation, role and mode: the whole run stays well under two minutes
BUDGET_SECONDS = 110
# Review #28: these operations refused most of what their document allowed; now data valid by the
# document is never a 400 invalid_input on a field the document describes — save the fields below:
# rules across fields (a keyword rule needs keywords, an official account a token, ends after
# starts, a button's type decides what it needs, UTF-8 byte lengths) stated in the schemas'
# validators but not (yet) as JSON-Schema conditions, and rules on stored data (an org unit that
# exists, the template's fields).
DOCUMENTED_RULES = {
    "POST /api/mp/{appid}/session",
    "POST /api/v1/accounts",
    "POST /api/v1/accounts/{account_id}/qrcodes",
    "POST /api/v1/accounts/{account_id}/rules",
    "POST /api/v1/campaigns",
    "POST /api/v1/metrics/contracts",
    "POST /api/v1/metrics/manual",
    "POST /api/v1/staff",
    "PUT /api/v1/accounts/{account_id}/menu",
}
DATA_DEPENDENT: dict[str, set[str]] = {
    "POST /api/v1/accounts": {"token", "aes_key", "org_unit"},
    "POST /api/v1/accounts/{account_id}/rules": {"keywords", "reply", "active_until"},
    "PUT /api/v1/accounts/{account_id}/menu": {"button"},
    "POST /api/v1/campaigns": {"account_ids", "data", "quiet_end", "template_id", "org_unit"},
    "POST /api/v1/metrics/contracts": {"ends_on", "formula_params", "org_unit_id"},
    "POST /api/v1/metrics/manual": {"account_id", "org_unit_id", "ends_on"},
    "POST /api/v1/staff": {"password"},
}


@pytest.fixture
def world(app: Flask, create_account: Any, create_staff: Any, simulator: str) -> dict[str, Any]:
    from metrics import contracts
    from templates_msg import services as campaigns

    account, fields, _ = create_account("plain")
    helpers.seed_campaign_account(simulator, account.id, fields["appid"], 3, "oF" + fields["appid"][-6:])
    campaign = campaigns.create_campaign(None, [account.id], "TPL_PROMO", {"name": "fuzz", "rate": 0})
    rule = replies.add_rule(account.id, name="hi", keywords=["hi"], reply={"content": "hello"})
    menus.save_menu(account.id, {"button": [{"type": "click", "name": "a", "key": "k"}]})
    subscriber = touch(account.id, "oFUZZ000000001", None)
    mp, mp_fields, _ = create_account("plain", kind="mini_program")
    product = factories.topup(mp.id, "t10", 980, 1000)
    buyer = factories.subscriber(mp.id, "oFUZZ000000002", "13800139201")
    order = factories.order(buyer, product, "fuzz-key-0001")
    contract = contracts.create_contract(
        None,
        {
            "customer": "c",
            "name": "fuzz",
            "starts_on": date(2026, 1, 1),
            "ends_on": date(2026, 12, 31),
            "price_fen": 100_000,
            "fixed_share": "0.5",
            "formula": "linear",
        },
    )
    db.session.commit()
    code = requests.post(
        f"{simulator}/_sim/accounts/{mp_fields['appid']}/js-codes", json={"openid": buyer.openid}, timeout=10
    ).json()["code"]
    token = app.test_client().post(f"/api/mp/{mp_fields['appid']}/session", json={"code": code}).get_json()
    staff = {"administrator": create_staff(admin=True)}
    for role in ROLES[1:]:
        staff[role] = create_staff(role, account_id=account.id)
        from accounts import staff as staff_services
        from accounts.models import StaffUser

        user = db.session.scalar(db.select(StaffUser).where(StaffUser.username == staff[role].username))
        staff_services.add_grant(user, role, account_id=mp.id)
    db.session.commit()
    admin_user_id = staff["administrator"].client.get("/api/v1/session").get_json()["user"]["id"]
    ids = {
        "account_id": account.id,
        "subscriber_id": subscriber.id,
        "rule_id": rule.id,
        "campaign_id": campaign.id,
        "contract_id": contract.id,
        "period_id": contracts.periods_of(contract.id)[0].id,
        "user_id": admin_user_id,
        "grant_id": 1,
        "unit_id": 1,
        "appid": mp_fields["appid"],
        "order_id": order.id,
    }
    return {"staff": staff, "ids": ids, "mp_account_id": mp.id, "mp_token": token["token"]}


def _path_parameters(path: str, world: dict[str, Any]) -> dict[str, Any]:
    ids = dict(world["ids"])
    if "order_id" in path and "appid" not in path:  # a console order: the mini-program's account
        ids["account_id"] = world["mp_account_id"]
    return {k: v for k, v in ids.items() if "{" + k + "}" in path}


def _run(app: Flask, world: dict[str, Any], role: str, deadline: float) -> list[str]:
    who = world["staff"][role]
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    failures: list[str] = []
    headers = {"X-CSRFToken": who.token, "Authorization": f"Bearer {world['mp_token']}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        # Invalid input is refused the same way whoever sends it: the administrator sends it.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if role == "administrator" else [])
        for mode in modes:
            if time.monotonic() > deadline:
                return failures
            strategy = operation.as_strategy(
                generation_mode=mode, path_parameters=_path_parameters(operation.path, world)
            )

            strict = mode is GenerationMode.POSITIVE and operation.label in DOCUMENTED_RULES
            allowed = DATA_DEPENDENT.get(operation.label, set())

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: Any) -> None:
                response = case.call(session=who.client, headers=headers)
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                if strict and response.status_code == 400:  # noqa: B023 - check() runs in this iteration
                    # Data the document allows, refused by validation: the document is looser (#28).
                    error = response.json()["error"]
                    assert error["code"] != "invalid_input" or set(error["fields"]) <= allowed, (  # noqa: B023
                        case.body,
                        error,
                    )

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                continue
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup: collected
                failures.append(f"{role} {operation.label} ({mode.value}): {_describe(exc)}")
    return failures


def _describe(exc: BaseException) -> str:
    """The first lines of each failure (schemathesis groups them in an ExceptionGroup)."""
    parts = list(getattr(exc, "exceptions", None) or [exc])
    return "; ".join(f"{type(e).__name__}: " + " | ".join(str(e).strip().splitlines()[:4]) for e in parts)[
        :1500
    ]


def test_every_operation_as_every_role(app: Flask, world: dict[str, Any]) -> None:
    deadline = time.monotonic() + BUDGET_SECONDS
    failures: list[str] = []
    for role in ROLES:
        failures += _run(app, world, role, deadline)
    assert time.monotonic() < deadline, "the fuzzing budget ran out before every role was covered"
    assert not failures, "\n\n".join(failures)
