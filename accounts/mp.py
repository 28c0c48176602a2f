"""Mini-program JSON: sessions (wx.login), the front door every mini-program API builds on."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import RAISE, Schema, fields, validate

from accounts import mp_sessions as mp
from wechat_service.extensions import ApiBlueprint as Blueprint
from wechat_service.extensions import db
from wechat_service.fields import Text

bp = Blueprint("mp_api", __name__, url_prefix="/api/mp", description="Mini-program sessions (wx.login)")


class SessionCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    code = Text(required=True, validate=validate.Length(min=1, max=128))


class MpProfileSchema(Schema):
    openid = fields.String()
    unionid = fields.String(allow_none=True)
    person_id = fields.Integer(allow_none=True)


class MpSessionSchema(MpProfileSchema):
    token = fields.String()
    expires_in = fields.Integer()


@bp.post("/<appid>/session")
@bp.arguments(SessionCreateSchema, error_status_code=400)
@bp.response(201, MpSessionSchema)
def create_session(data: dict[str, Any], appid: str) -> ResponseReturnValue:
    """Exchange a wx.login code for a session token (send it as ``Authorization: Bearer …``)."""
    result = mp.login(appid, data["code"])
    db.session.commit()
    return jsonify(result), 201


@bp.get("/<appid>/me")
@bp.response(200, MpProfileSchema)
@bp.doc(security=[{"mpSession": []}])
def me(appid: str) -> ResponseReturnValue:
    auth = request.headers.get("Authorization", "")
    token = auth[7:] if auth.startswith("Bearer ") else ""
    return jsonify(mp.profile(mp.session_from_token(appid, token)))
