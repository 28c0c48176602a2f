"""The simulator resends an unacknowledged payment notification on WeChat Pay's schedule
(compressed): the service may be down for the first copies and still get the sale."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from payments import services as payments
from store.models import Order, OrderStatus
from tests import factories, helpers
from wechat_service.extensions import db


class FlakyReceiver:
    """Answers 503 to the first ``failures`` posts (a deploy, a crash), then 204; keeps each post."""

    def __init__(self, failures: int) -> None:
        self.failures, self.posts = failures, []  # type: ignore[var-annotated]
        self.port = helpers.free_port()
        self.server = make_server("127.0.0.1", self.port, self)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        req = Request(environ)
        self.posts.append((dict(req.headers), req.get_data()))
        status = 503 if len(self.posts) <= self.failures else 204
        return Response(status=status)(environ, start_response)


@pytest.fixture
def receiver() -> Any:
    flaky = FlakyReceiver(failures=2)
    yield flaky
    flaky.server.shutdown()


def test_unacknowledged_notification_is_resent_until_accepted(
    app: Flask, simulator: str, receiver: FlakyReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", f"http://127.0.0.1:{receiver.port}")
    shop = factories.shop(
        simulator,
        product={"code": "r1", "price_fen": 100, "face_value_fen": 100},
        openid="oRETRY00000001",
        phone="13800139206",
    )
    merchant, product = shop["merchant"], shop["product"]
    order = factories.order(shop["sub"], product, "retry-key-0001")
    payments.prepay(order, "oRETRY00000001", product.name)
    db.session.commit()
    first = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "retries": True, "retry_factor": 0.002},
        timeout=10,
    ).json()
    assert first["statuses"] == [503]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(receiver.posts) < 3:
        time.sleep(0.05)
    log = next(
        n
        for n in requests.get(f"{simulator}/_sim/wechatpay/notifications", timeout=5).json()
        if n["out_trade_no"] == order.out_trade_no
    )
    assert log["retries"] == [503, 204] and len(receiver.posts) == 3
    # Every copy is the same signed notification: the accepted one applies to the order.
    assert len({body for _, body in receiver.posts}) == 1
    headers, body = receiver.posts[-1]
    keep = {k: v for k, v in headers.items() if k.lower().startswith("wechatpay-")}
    resp = app.test_client().post(f"/payments/wechatpay/v3/{merchant.id}/notify", headers=keep, data=body)
    assert resp.status_code == 204
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling
