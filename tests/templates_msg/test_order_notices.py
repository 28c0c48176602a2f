"""Order notices: the store asks for them on its own transitions (paid, fulfilled, refunded), they
go out through the transactional sender after commit, once per order and notice."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from payments import services as payments
from store import jobs
from store.models import Order
from templates_msg import jobs as campaign_jobs
from templates_msg import transactional
from tests import factories
from wechat_service.extensions import db, get_queue

OPENID = "oNOTE000000001"


def test_paid_and_fulfilled_orders_notify_the_subscriber_once(
    app: Flask, create_account: Any, simulator: str
) -> None:
    account, fields, _ = create_account("plain")
    appid = fields["appid"]
    requests.post(
        f"{simulator}/_sim/accounts/{appid}/templates",
        json={"templates": [{"template_id": "TPL_PAID", "title": "支付成功", "content": "{{first.DATA}}"}]},
        timeout=5,
    ).raise_for_status()
    requests.post(  # the subscriber follows at WeChat: oNOTE000000000, oNOTE000000001
        f"{simulator}/_sim/accounts/{appid}/followers", json={"count": 2, "prefix": "oNOTE0"}, timeout=5
    ).raise_for_status()
    merchant = factories.merchant(simulator, account.id)["merchant"]
    transactional.set_template(
        account.id, "order_paid", "TPL_PAID", {"first": "订单 {out_trade_no} 已支付 {amount} 元（{product}）"}
    )
    product = factories.topup(account.id, "n30", 2990, 3000)
    sub = factories.subscriber(account.id, OPENID, "13800139210")
    order = factories.order(sub, product, "notice-key-0001")
    payments.prepay(order, OPENID, product.name)
    db.session.commit()
    get_queue("high").empty()
    note = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False},
        timeout=10,
    ).json()
    for _ in range(2):  # a resent notification asks for no second notice
        resp = app.test_client().post(
            f"/payments/wechatpay/v3/{merchant.id}/notify",
            headers=note["headers"],
            data=note["body"].encode(),
        )
        assert resp.status_code == 204
    queued = _notices()
    assert [(n["order_id"], n["status"]) for n in queued] == [(order.id, "paid")]
    assert queued[0]["amount_fen"] == 2990 and queued[0]["out_trade_no"] == order.out_trade_no
    assert campaign_jobs.notify_order(queued[0]) == "sent"
    assert campaign_jobs.notify_order(queued[0]) == "duplicate"  # a rerun job: once per key
    sent = requests.get(f"{simulator}/_sim/accounts/{appid}", timeout=5).json()["template_messages"]
    paid = [m for m in sent if m["template_id"] == "TPL_PAID"]
    assert len(paid) == 1 and paid[0]["touser"] == OPENID
    assert paid[0]["data"]["first"]["value"] == f"订单 {order.out_trade_no} 已支付 29.90 元（30 元话费）"
    db.session.expire_all()
    assert jobs.fulfil(db.session.get(Order, order.id).fulfilment_id) == "succeeded"
    fulfilled = [n for n in _notices() if (n["order_id"], n["status"]) == (order.id, "fulfilled")]
    assert len(fulfilled) == 1  # asked for; no template configured, so nothing is sent
    assert campaign_jobs.notify_order(fulfilled[0]) is None


def test_fulfilled_and_refunded_notices_arrive_once_each(
    app: Flask, create_account: Any, simulator: str
) -> None:
    """Both notices end at WeChat: one template message per order and notice, however often the
    queued jobs run."""
    account, fields, _ = create_account("plain")
    appid = fields["appid"]
    requests.post(
        f"{simulator}/_sim/accounts/{appid}/templates",
        json={
            "templates": [
                {"template_id": "TPL_DONE", "title": "办理成功", "content": "{{first.DATA}}"},
                {"template_id": "TPL_BACK", "title": "退款成功", "content": "{{first.DATA}}"},
            ]
        },
        timeout=5,
    ).raise_for_status()
    requests.post(
        f"{simulator}/_sim/accounts/{appid}/followers", json={"count": 3, "prefix": "oNOTE0"}, timeout=5
    ).raise_for_status()
    merchant = factories.merchant(simulator, account.id)["merchant"]
    transactional.set_template(account.id, "order_fulfilled", "TPL_DONE", {"first": "{out_trade_no} 已办理"})
    transactional.set_template(
        account.id, "order_refunded", "TPL_BACK", {"first": "{out_trade_no} 退 {amount} 元"}
    )
    product = factories.topup(account.id, "n10", 990, 1000)
    done_sub = factories.subscriber(account.id, "oNOTE000000001", "13800139211")
    back_sub = factories.subscriber(account.id, "oNOTE000000002", "13800000000")  # the BOSS refuses it
    made = []
    for sub, openid in ((done_sub, "oNOTE000000001"), (back_sub, "oNOTE000000002")):
        order = factories.order(sub, product, f"notice-{sub.id:08d}")
        payments.prepay(order, openid, product.name)
        db.session.commit()
        note = requests.post(
            f"{simulator}/_sim/wechatpay/pay",
            json={"out_trade_no": order.out_trade_no, "deliver": False},
            timeout=10,
        ).json()
        resp = app.test_client().post(
            f"/payments/wechatpay/v3/{merchant.id}/notify",
            headers=note["headers"],
            data=note["body"].encode(),
        )
        assert resp.status_code == 204
        made.append(order)
    db.session.expire_all()
    assert jobs.fulfil(db.session.get(Order, made[0].id).fulfilment_id) == "succeeded"
    assert jobs.fulfil(db.session.get(Order, made[1].id).fulfilment_id) == "failed"
    db.session.expire_all()
    assert [db.session.get(Order, o.id).status.value for o in made] == ["fulfilled", "refunded"]
    queued = _notices()
    moved = {(n["order_id"], n["status"]) for n in queued}
    assert (made[0].id, "fulfilled") in moved and (made[1].id, "refunded") in moved
    for notice in queued * 2:  # each job run twice: still one message per notice
        campaign_jobs.notify_order(notice)
    sent = requests.get(f"{simulator}/_sim/accounts/{appid}", timeout=5).json()["template_messages"]
    done = [m for m in sent if m["template_id"] == "TPL_DONE"]
    back = [m for m in sent if m["template_id"] == "TPL_BACK"]
    assert [(m["touser"], m["data"]["first"]["value"]) for m in done] == [
        ("oNOTE000000001", f"{made[0].out_trade_no} 已办理")
    ]
    assert [(m["touser"], m["data"]["first"]["value"]) for m in back] == [
        ("oNOTE000000002", f"{made[1].out_trade_no} 退 9.90 元")
    ]


def _notices() -> list[dict[str, Any]]:
    """The order notices queued for templates_msg by its receiver of the store's signal."""
    return [j.args[0] for j in get_queue("high").jobs if j.func_name == "templates_msg.jobs.notify_order"]
