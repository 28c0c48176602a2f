"""Mini-program JSON API of the shell: sessions."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import RAISE, Schema, fields

from wechat_service import mp
from wechat_service.extensions import db

bp = Blueprint("mp_api", __name__, url_prefix="/api/mp")


class SessionCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    code = fields.String(required=True)


@bp.post("/<appid>/session")
def create_session(appid: str) -> ResponseReturnValue:
    data = SessionCreateSchema().load(request.get_json(silent=True) or {})
    result = mp.login(appid, data["code"])
    db.session.commit()
    return jsonify(result), 201


@bp.get("/<appid>/me")
def me(appid: str) -> ResponseReturnValue:
    auth = request.headers.get("Authorization", "")
    token = auth[7:] if auth.startswith("Bearer ") else ""
    return jsonify(mp.profile(mp.session_from_token(appid, token)))
