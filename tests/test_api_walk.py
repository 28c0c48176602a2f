"""Every GET route of /api/v1, walked by an administrator over real data — a campaign created,
approved, sent through the simulator, with delivery reports and a click; an order paid,
fulfilled and refunded; a contract with its periods — answers without a server error."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask, url_for

from accounts import services as account_services
from accounts.models import StaffUser, Subscriber
from payments.models import Refund
from store import orders
from store.models import Order, OrderStatus
from templates_msg import services, tracking
from templates_msg.models import Campaign, CampaignState, Delivery
from tests import factories, helpers
from tests.metrics.test_fees import make_contract
from tests.payments.test_refunds import _finish, _fulfilled_order, _notify
from tests.templates_msg.test_campaigns import _report, _run
from wechat_service.extensions import db

OPENID = "oWALK000000001"


def _campaign_lifecycle(app: Flask, create_staff: Any, account: Any, target: Any) -> int:
    """Created and edited by a marketer, approved by another user, sent, reported, clicked."""
    aid = account.id
    marketer = create_staff("marketer", account_id=aid)
    approver = create_staff("marketer", account_id=aid, can_approve=True)
    resp = marketer.api(
        "POST",
        "/api/v1/campaigns",
        {
            "name": "walk",
            "account_ids": [aid],
            "template_id": "TPL_PROMO",
            "data": {"first": "你好", "keyword1": "10G"},
            "link_url": "https://shop.example/walk",
            "control_pct": 10,
            "rate": 0,
        },
    )
    assert resp.status_code == 201, resp.get_json()
    cid, version = resp.get_json()["id"], resp.get_json()["version"]
    resp = marketer.api("PATCH", f"/api/v1/campaigns/{cid}", {"version": version, "name": "walk 2"})
    assert resp.status_code == 200, resp.get_json()
    assert marketer.api("POST", f"/api/v1/campaigns/{cid}/submit", {}).status_code == 200
    resp = approver.api("POST", f"/api/v1/campaigns/{cid}/approve", {})
    assert resp.status_code == 200, resp.get_json()
    from templates_msg.sending import recovery

    assert recovery.start(cid)
    _run(cid)
    campaign = db.session.get(Campaign, cid, populate_existing=True)
    assert campaign.state is CampaignState.completed
    rows = db.session.scalars(
        sa.select(Delivery)
        .where(Delivery.campaign_id == cid, Delivery.msgid.is_not(None))
        .order_by(Delivery.id)
        .limit(2)
    ).all()
    client = app.test_client()
    for row, status in zip(rows, ["success", "failed:user block"], strict=True):
        _report(client, target, row.openid, row.msgid, status)
    assert client.get(f"/t/{tracking.token_for(rows[0].id)}").status_code == 302
    assert services.history(cid)
    return cid


def _order_lifecycle(app: Flask, simulator: str) -> tuple[int, int]:
    """Paid with WeChat Pay, fulfilled by the BOSS, refunded (the refund notification)."""
    shop = factories.shop(
        simulator,
        refund_status="PROCESSING",
        product={"code": "w50", "price_fen": 4990, "face_value_fen": 5000},
        openid=OPENID,
        phone="13800139299",
    )
    account = shop["account"]
    order = _fulfilled_order(app, shop, simulator, key="walk-key-0001")
    assert order.status is OrderStatus.fulfilled
    orders.refund(order, "walk")
    refund = db.session.scalars(sa.select(Refund).where(Refund.out_trade_no == order.out_trade_no)).one()
    note = _finish(simulator, refund)
    assert _notify(app, shop, note["headers"], note["body"]).status_code == 204
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.refunded
    return account.id, order.id


def test_every_api_get_route_answers_without_a_server_error(
    app: Flask, create_account: Any, create_staff: Any, simulator: str
) -> None:
    account_services.add_org_unit("walk-gd", "Guangdong", "province")
    db.session.commit()
    account, fields, target = create_account("plain", org_unit_code="walk-gd")
    helpers.seed_campaign_account(simulator, account.id, fields["appid"], 30, "oW" + fields["appid"][-6:])
    cid = _campaign_lifecycle(app, create_staff, account, target)
    shop_account_id, order_id = _order_lifecycle(app, simulator)
    contract = make_contract()
    db.session.commit()
    from metrics import contracts

    period = contracts.periods_of(contract.id)[0]
    admin = create_staff(admin=True)
    admin_id = db.session.scalar(sa.select(StaffUser.id).where(StaffUser.username == admin.username))
    grantee_id = db.session.scalar(sa.select(StaffUser.id).where(StaffUser.username.like("%-marketer")))
    subscriber_id = db.session.scalar(
        sa.select(Subscriber.id).where(Subscriber.account_id == account.id).order_by(Subscriber.id)
    )
    from accounts.models import OrgUnit

    ids: dict[str, int] = {
        "campaign_id": cid,
        "subscriber_id": subscriber_id,
        "user_id": grantee_id or admin_id,
        "unit_id": db.session.scalar(sa.select(OrgUnit.id).where(OrgUnit.code == "walk-gd")),
        "contract_id": contract.id,
        "period_id": period.id,
    }
    # The order's own account for routes that name an order; the campaign's account elsewhere.
    by_route = {"order_id": {"account_id": shop_account_id, "order_id": order_id}}

    walked: dict[str, int] = {}
    failures: list[str] = []
    with app.test_request_context():
        rules = [
            r
            for r in app.url_map.iter_rules()
            if r.rule.startswith("/api/v1") and "GET" in (r.methods or set())
        ]
        assert len(rules) > 20
        for rule in sorted(rules, key=lambda r: r.rule):
            values = {**ids, "account_id": account.id}
            if "order_id" in rule.arguments:
                values.update(by_route["order_id"])
            missing = sorted(a for a in rule.arguments if a not in values)
            assert not missing, f"{rule.rule}: give the walk an id for {missing}"
            url = url_for(rule.endpoint, **{a: values[a] for a in rule.arguments})
            try:
                status = admin.get(url).status_code
            except Exception as exc:  # the test app re-raises what production answers with a 500
                failures.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            walked[url] = status
            if status >= 500:
                failures.append(f"{url}: {status}")
    assert failures == []
    # The walk reached real data, not just refusals.
    assert walked[f"/api/v1/campaigns/{cid}"] == 200
    assert walked[f"/api/v1/campaigns/{cid}/stats"] == 200
    assert walked[f"/api/v1/campaigns/{cid}/deliveries.csv"] == 200
    assert walked[f"/api/v1/accounts/{shop_account_id}/orders/{order_id}"] == 200
    refused = {u: s for u, s in walked.items() if s != 200}
    assert refused == {}, refused
