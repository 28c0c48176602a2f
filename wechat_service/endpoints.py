"""The callback endpoint: one URL per account. Thin: parse the request, call the gateway service."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from wechat_service import callbacks

bp = Blueprint("callbacks", __name__)


def _respond(result: callbacks.CallbackResult) -> Response:
    return Response(result.body, status=result.status, content_type=result.content_type)


@bp.get("/wechat/<appid>/callback")
def verify(appid: str) -> Response:
    return _respond(callbacks.verify_echo(appid, request.args.to_dict()))


@bp.post("/wechat/<appid>/callback")
def receive(appid: str) -> Response:
    limit = current_app.config["CALLBACK_MAX_BODY"]
    if request.content_length is not None and request.content_length > limit:
        return _respond(callbacks.reject(413, "body too large"))
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        return _respond(callbacks.reject(413, "body too large"))
    return _respond(callbacks.handle_post(appid, request.args.to_dict(), body))
