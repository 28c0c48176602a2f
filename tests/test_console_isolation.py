"""Walk the whole URL map: every console page and console API route, present and future, as a
user without a grant for account X. Each route touching X answers 403/404, and no response
carries a byte of X's data. A new route is covered without anyone adding it here."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from accounts import menus, qrcodes, replies, staff
from accounts.models import Grant, Subscriber, SubscriberEvent
from tests import factories
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db

CONSOLE_PREFIXES = ("/console", "/api/v1")
SKIP_ENDPOINTS = {"console.logout"}  # would end the walker's own session
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def account_x(create_account: Any) -> dict[str, Any]:
    account, fields, _ = create_account("safe", name="Xsecretname Province Account")
    sub = Subscriber(
        account_id=account.id,
        openid="oXSECRETopenid000000001",
        unionid="uXSECRETunionid0000001",
        following=True,
    )
    db.session.add(sub)
    db.session.flush()
    db.session.add(
        SubscriberEvent(
            account_id=account.id,
            subscriber_id=sub.id,
            kind="message",
            occurred_at=utcnow(),
            detail={"type": "text", "content": "XSECRETmessage"},
        )
    )
    rule = replies.add_rule(
        account.id, name="xsecretrule", keywords=["XSECRETkeyword"], reply={"content": "XSECRETreply"}
    )
    menus.save_menu(account.id, {"button": [{"type": "click", "name": "XSECmenu", "key": "XSECRETkey"}]})
    code = qrcodes.create_channel_qrcode(account.id, name="XSECRETstore", scene="xsecret-scene")
    from store import services as store_services

    product = factories.topup(account.id, "xsecret-product", 100, 100, name="XSECRETproduct")
    store_services.bind_phone(account.id, sub.id, "13912345678", method="sms")
    order = factories.order(sub, product, "xsecret-client-key")
    from datetime import timedelta

    from store import coupons, redemption

    batch, batch_codes = redemption.create_batch(account.id, product.id, name="XSECRETbatch", count=2)
    redemption.stash_export(batch, batch_codes)
    coupon = coupons.add_coupon(
        account.id,
        code="XSECRETCOUPON",
        name="XSECRETcouponname",
        kind="fixed",
        value=100,
        valid_from=utcnow(),
        valid_until=utcnow() + timedelta(days=1),
    )
    from payments import funds
    from payments.models import Merchant, ReconciliationRun, ReconStatus

    pool = funds.create_pool(account.id, name="XSECRETpool", warning_fen=100, critical_fen=10)
    merchant = Merchant(
        account_id=account.id, provider="wechatpay_v3", mchid="XSECRETMCH", appid=fields["appid"],
        config={},
    )  # fmt: skip
    db.session.add(merchant)
    db.session.flush()
    run = ReconciliationRun(
        account_id=account.id, merchant_id=merchant.id, provider="wechatpay_v3", bill_date=utcnow().date(),
        status=ReconStatus.failed, error="XSECRETerror",
    )  # fmt: skip
    db.session.add(run)
    from datetime import date

    from accounts.models import OrgUnit
    from metrics import contracts as metric_contracts

    unit = OrgUnit(code="xsecret-unit", name="XSECRETunit", kind="city")
    db.session.add(unit)
    db.session.flush()
    account.org_unit_id = unit.id
    contract = metric_contracts.create_contract(
        None,
        {"customer": "XSECRETcustomer", "name": "XSECRETcontract", "org_unit_id": unit.id,
         "starts_on": date(2026, 1, 1), "ends_on": date(2026, 12, 31), "price_fen": 100_000,
         "fixed_share": "0.6", "formula": "linear"},
    )  # fmt: skip
    period = metric_contracts.periods_of(contract.id)[0]
    metric_contracts.add_target(None, contract, {"metric": "follows", "account_id": account.id,
                                                 "starts_on": period.starts_on, "ends_on": period.ends_on,
                                                 "target_value": 77777})  # fmt: skip
    from templates_msg import services as campaigns
    from templates_msg.models import MessageTemplate

    db.session.add(
        MessageTemplate(account_id=account.id, template_id="XSECRETtpl", title="XSECRETtitle",
                        content="{{first.DATA}}", fields=[{"name": "first", "label": "first"}])
    )  # fmt: skip
    db.session.flush()
    campaign = campaigns.create_campaign(
        None, [account.id], "XSECRETtpl", {"name": "XSECRETcampaign", "data": {"first": "hi"}, "rate": 0}
    )
    owner = staff.create_user("xowner", "x owner password 1")
    grant = staff.add_grant(owner, "account_manager", account_id=account.id)
    db.session.commit()
    markers = [
        account.name,
        fields["appid"],
        fields["original_id"],
        sub.openid,
        sub.unionid,
        "XSECRETmessage",
        "XSECRETreply",
        "XSECRETkeyword",
        "XSECRETkey",
        "XSECRETstore",
        "xsecret-scene",
        sub.openid[:4] + "****" + sub.openid[-4:],
        order.out_trade_no,
        "13912345678",
        "139****5678",
        "XSECRETproduct",
        "XSECRETbatch",
        "XSECRETCOUPON",
        "XSECRETcouponname",
        "XSECRETpool",
        "XSECRETcampaign",
        "XSECRETtitle",
        "XSECRETerror",
        "XSECRETunit",
        "XSECRETcustomer",
        "XSECRETcontract",
        *batch_codes,
    ]
    return {
        "values": {
            "order_id": order.id,
            "product_id": product.id,
            "batch_id": batch.id,
            "coupon_id": coupon.id,
            "pool_id": pool.id,
            "campaign_id": campaign.id,
            "run_id": run.id,
            "account_id": account.id,
            "subscriber_id": sub.id,
            "rule_id": rule.id,
            "code_id": code.id,
            "user_id": owner.id,
            "grant_id": grant.id,
            "action": "disable",
            "unit_id": unit.id,
            "contract_id": contract.id,
            "period_id": period.id,
        },
        "markers": markers,
        "account_id": account.id,
    }


def _console_rules(app: Flask) -> list[Any]:
    rules = [
        r
        for r in app.url_map.iter_rules()
        if r.rule.startswith(CONSOLE_PREFIXES)
        and r.endpoint not in SKIP_ENDPOINTS
        and not r.endpoint.endswith(".static")  # a blueprint's static files (scripts) hold no data
    ]
    assert len(rules) > 30  # the walk really covers the console
    return rules


def _url(rule: Any, values: dict[str, Any]) -> str:
    missing = rule.arguments - set(values)
    assert not missing, f"no test value for {missing} in {rule.rule}: add one to account_x"
    given = {a: values[a] for a in rule.arguments}
    for arg, converter in rule._converters.items():  # noqa: SLF001 - werkzeug keeps them there
        choices = getattr(converter, "items", None)  # <any(a, b):arg>: the first choice if ours is not one
        if choices and given[arg] not in choices:
            given[arg] = sorted(choices)[0]
    built = rule.build(given, append_unknown=False)
    assert built is not None, rule.rule
    return built[1]


@pytest.mark.parametrize("role", ["account_manager", "support", "analyst", "marketer", None])
def test_no_route_reveals_another_accounts_data(
    role: str | None, app: Flask, account_x: dict[str, Any], create_account: Any, create_staff: Any
) -> None:
    own, _, _ = create_account("plain", name="Own account")
    walker = (
        create_staff(role, account_id=own.id, can_approve=True)
        if role
        else create_staff("analyst", account_id=own.id)
    )
    if role is None:  # a user whose only grant was revoked: no account at all
        db.session.query(Grant).filter(Grant.account_id == own.id).delete()
        db.session.commit()
    checked = 0
    for rule in _console_rules(app):
        url = _url(rule, account_x["values"])
        for method in sorted(set(rule.methods or ()) & set(METHODS)):
            if rule.rule.startswith("/api/v1"):
                resp = walker.api(method, url, {})
            elif method == "GET":
                resp = walker.get(url)
            else:
                resp = walker.form(url, {"name": "probe", "status": "disabled", "reason": "probe"})
            body = resp.get_data(as_text=True)
            for marker in account_x["markers"]:
                assert marker not in body, f"{method} {url} ({rule.endpoint}) leaked {marker!r}"
            if "account_id" in rule.arguments or rule.endpoint.endswith(
                (
                    "staff_list",
                    "staff_detail",
                    "audit_log",
                    "grant_list",
                    "grant_create",
                    "grant_delete",
                    "audit_list",
                    "staff_create",
                )
            ):
                assert resp.status_code in (403, 404), (
                    f"{method} {url} ({rule.endpoint}) -> {resp.status_code}"
                )
            else:
                assert resp.status_code < 500, f"{method} {url} -> {resp.status_code}"
            checked += 1
    assert checked > 40
    # Nothing of X changed either.
    from accounts.models import Account, ReplyRule

    db.session.expire_all()
    account = db.session.get(Account, account_x["account_id"])
    assert account.status.value == "active" and account.name.startswith("Xsecretname")
    assert db.session.get(ReplyRule, account_x["values"]["rule_id"]).enabled
    from store import redemption
    from store.models import Coupon, Product

    assert db.session.get(Product, account_x["values"]["product_id"]).enabled
    assert db.session.get(Coupon, account_x["values"]["coupon_id"]).enabled
    assert redemption.export_expires_in(account_x["values"]["batch_id"]) is not None  # not taken
