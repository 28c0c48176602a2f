"""Provider-facing notification endpoints (the URLs each provider was given): they read the
request and answer in the provider's own format — also when the merchant's configuration is broken
(logged; the failure reply makes the provider retry later)."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, current_app, request

from payments import services
from payments.models import Provider
from payments.providers import kind_of
from payments.providers.base import Answer, Incoming
from wechat_service.extensions import db

log = logging.getLogger(__name__)

bp = Blueprint("payments", __name__, url_prefix="/payments")
MAX_ID = 2**31 - 1


def _respond(answer: Answer) -> Response:
    body = answer.body
    if isinstance(body, dict):
        body = json.dumps(body)
    return Response(body if body is not None else b"", answer.status, content_type=answer.mimetype)


def _receive(merchant_id: int, provider: Provider, *, refund_path: bool = False) -> Response:
    answer = kind_of(provider).answer
    if merchant_id > MAX_ID:
        return _respond(answer(404, "unknown merchant"))
    if (request.content_length or 0) > current_app.config["CALLBACK_MAX_BODY"]:
        return _respond(answer(413, "body too large"))
    body = request.get_data(cache=True)
    if len(body) > current_app.config["CALLBACK_MAX_BODY"]:
        return _respond(answer(413, "body too large"))
    # Alipay's values form-decoded once, empty ones included: exactly what it signed.
    form = {k: v for k, v in request.form.items(multi=False)} if request.form else {}
    incoming = Incoming(dict(request.headers), body, form, refund_path)
    try:
        return _respond(services.notified(merchant_id, provider, incoming))
    except services.MerchantConfigError as exc:
        db.session.rollback()
        log.error("payment notification for merchant %s not processed: %s", merchant_id, exc.message)
        return _respond(answer(503, "merchant configuration problem"))


@bp.post("/wechatpay/v3/<int:merchant_id>/notify")
def wechatpay_v3(merchant_id: int) -> Response:
    return _receive(merchant_id, Provider.wechatpay_v3)


@bp.post("/wechatpay/v2/<int:merchant_id>/notify")
def wechatpay_v2(merchant_id: int) -> Response:
    return _receive(merchant_id, Provider.wechatpay_v2)


@bp.post("/wechatpay/v2/<int:merchant_id>/refund-notify")
def wechatpay_v2_refund(merchant_id: int) -> Response:
    return _receive(merchant_id, Provider.wechatpay_v2, refund_path=True)


@bp.post("/alipay/<int:merchant_id>/notify")
def alipay(merchant_id: int) -> Response:
    return _receive(merchant_id, Provider.alipay)
