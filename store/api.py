"""The store's mini-program JSON API under /api/mp/<appid>/…, authenticated by the session token
from POST /api/mp/<appid>/session (header ``Authorization: Bearer <token>``)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import RAISE, Schema, fields, validate

from store import services
from store.models import InquiryKind
from wechat_service import mp
from wechat_service.extensions import db

bp = Blueprint("store_mp", __name__, url_prefix="/api/mp")


class PhoneSmsSchema(Schema):
    class Meta:
        unknown = RAISE

    phone = fields.String(required=True, validate=validate.Length(min=5, max=20))


class PhoneVerifySchema(Schema):
    class Meta:
        unknown = RAISE

    code = fields.String(required=True, validate=validate.Regexp(r"^\d{6}$"))


def _session(appid: str) -> mp.MpSession:
    auth = request.headers.get("Authorization", "")
    return mp.session_from_token(appid, auth[7:] if auth.startswith("Bearer ") else "")


@bp.post("/<appid>/phone/sms")
def phone_sms(appid: str) -> ResponseReturnValue:
    session = _session(appid)
    data = PhoneSmsSchema().load(request.get_json(silent=True) or {})
    result = services.start_binding(session.account_id, session.subscriber_id, data["phone"])
    return jsonify(result), 202


@bp.post("/<appid>/phone/verify")
def phone_verify(appid: str) -> ResponseReturnValue:
    session = _session(appid)
    data = PhoneVerifySchema().load(request.get_json(silent=True) or {})
    binding = services.confirm_binding(session.account_id, session.subscriber_id, data["code"])
    db.session.commit()
    return jsonify({"phone": binding.phone, "bound_at": binding.bound_at.isoformat()}), 201


@bp.get("/<appid>/phone")
def phone(appid: str) -> ResponseReturnValue:
    session = _session(appid)
    binding = services.binding_of(session.account_id, session.subscriber_id)
    # The subscriber's own number, in clear to them only.
    return jsonify(
        {
            "phone": binding.phone if binding else None,
            "bound_at": binding.bound_at.isoformat() if binding else None,
        }
    )


@bp.get("/<appid>/inquiry/<any(balance, data, bill, points):kind>")
def inquiry(appid: str, kind: str) -> ResponseReturnValue:
    session = _session(appid)
    result = services.inquire(session.account_id, session.subscriber_id, InquiryKind(kind), "mp")
    db.session.commit()
    status = {"unbound": 409, "failed": 503}.get(result.outcome.value, 200)
    return jsonify(
        {"kind": kind, "outcome": result.outcome.value, "text": result.text, "data": result.data}
    ), status


class RedeemSchema(Schema):
    class Meta:
        unknown = RAISE

    code = fields.String(required=True, validate=validate.Length(min=4, max=64))


@bp.post("/<appid>/redeem")
def redeem(appid: str) -> ResponseReturnValue:
    from store import redemption

    session = _session(appid)
    data = RedeemSchema().load(request.get_json(silent=True) or {})
    result = redemption.redeem(session.account_id, session.subscriber_id, data["code"], "mp")
    db.session.commit()
    return jsonify(result), 202
