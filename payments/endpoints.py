"""Provider-facing notification endpoints: they keep the provider's reply format — also when the
merchant's configuration is broken (logged; the failure reply makes the provider retry later)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, Response, current_app, request

from payments import services
from wechat_service.extensions import db

log = logging.getLogger(__name__)
T = TypeVar("T")


def _configured(merchant_id: int, handle: Callable[[], T], failure: T) -> T:
    """The handler's answer, or ``failure`` when the merchant's configuration cannot be used."""
    try:
        return handle()
    except services.MerchantConfigError as exc:
        db.session.rollback()
        log.error("payment notification for merchant %s not processed: %s", merchant_id, exc.message)
        return failure


bp = Blueprint("payments", __name__, url_prefix="/payments")
MAX_ID = 2**31 - 1


@bp.post("/wechatpay/v3/<int:merchant_id>/notify")
def wechatpay_v3(merchant_id: int) -> Response:
    if merchant_id > MAX_ID:
        return Response(
            json.dumps({"code": "FAIL", "message": "unknown merchant"}), 404, content_type="application/json"
        )
    body = request.get_data(cache=False)
    if len(body) > current_app.config["CALLBACK_MAX_BODY"]:
        return Response(
            json.dumps({"code": "FAIL", "message": "body too large"}), 413, content_type="application/json"
        )
    headers = dict(request.headers)
    status, payload = _configured(
        merchant_id,
        lambda: services.handle_wechatpay_v3(merchant_id, headers, body),
        (503, {"code": "FAIL", "message": "merchant configuration problem"}),
    )
    # WeChat Pay: 200/204 with no body means received; anything else (4xx/5xx + code) is retried.
    return Response(json.dumps(payload) if payload else b"", status, content_type="application/json")


def _v2(merchant_id: int, handler: Callable[[int, bytes], tuple[int, str]]) -> Response:
    if merchant_id > MAX_ID:
        return Response(services.v2_fail("unknown merchant"), 404, content_type="text/xml")
    body = request.get_data(cache=False)
    if len(body) > current_app.config["CALLBACK_MAX_BODY"]:
        return Response(services.v2_fail("body too large"), 413, content_type="text/xml")
    status, xml = _configured(
        merchant_id,
        lambda: handler(merchant_id, body),
        (503, services.v2_fail("merchant configuration problem")),
    )
    return Response(xml, status, content_type="text/xml")


@bp.post("/wechatpay/v2/<int:merchant_id>/notify")
def wechatpay_v2(merchant_id: int) -> Response:
    return _v2(merchant_id, services.handle_wechatpay_v2)


@bp.post("/wechatpay/v2/<int:merchant_id>/refund-notify")
def wechatpay_v2_refund(merchant_id: int) -> Response:
    return _v2(merchant_id, services.handle_wechatpay_v2_refund)


@bp.post("/alipay/<int:merchant_id>/notify")
def alipay(merchant_id: int) -> Response:
    if merchant_id > MAX_ID:
        return Response("failure", 404, content_type="text/plain")
    if (request.content_length or 0) > current_app.config["CALLBACK_MAX_BODY"]:
        return Response("failure", 413, content_type="text/plain")
    # Values form-decoded once, empty ones included: exactly what Alipay signed.
    form = {k: v for k, v in request.form.items(multi=False)}
    answer = _configured(merchant_id, lambda: services.handle_alipay(merchant_id, form), "failure")
    return Response(answer, 200, content_type="text/plain")
