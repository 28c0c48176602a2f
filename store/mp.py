"""The store's mini-program JSON API under /api/mp/<appid>/…, authenticated by the session token
from POST /api/mp/<appid>/session (header ``Authorization: Bearer <token>``)."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import RAISE, Schema, fields, validate

from accounts import mp_sessions as mp
from accounts.subscribers import subscriber_by_id
from payments import services as payments
from store import catalogue, orders, points, redemption, services
from store.models import InquiryKind, Order, Product
from wechat_service.errors import NotFoundError
from wechat_service.extensions import ApiBlueprint as Blueprint
from wechat_service.extensions import db
from wechat_service.fields import Text

bp = Blueprint(
    "store_mp",
    __name__,
    url_prefix="/api/mp",
    description="The store for mini-programs: phone binding, inquiry, catalogue, orders, redeem, points",
)
# Authorization: Bearer <token from POST /api/mp/<appid>/session>
MP_AUTH: list[dict[str, list[str]]] = [{"mpSession": []}]


class PhoneSmsSchema(Schema):
    class Meta:
        unknown = RAISE

    phone = Text(
        required=True,
        validate=validate.Regexp(
            r"^(\+86|0086)?[ -]?1[3-9](?:[ -]?\d){9}$", error="a mainland mobile number"
        ),
    )


class PhoneVerifySchema(Schema):
    class Meta:
        unknown = RAISE

    code = Text(required=True, validate=validate.Regexp(r"^\d{6}$"))


# What the operations answer (documented; the views answer with jsonify as they are).
class SmsSentSchema(Schema):
    phone = fields.String()
    expires_in = fields.Integer()


class BindingSchema(Schema):
    phone = fields.String(allow_none=True)
    bound_at = fields.String(allow_none=True)
    method = fields.String()


class MpInquirySchema(Schema):
    kind = fields.String()
    outcome = fields.String()
    text = fields.String(allow_none=True)
    data = fields.Dict(allow_none=True)


class RedeemedSchema(Schema):
    product = fields.String()
    kind = fields.String()
    phone = fields.String(allow_none=True)
    fulfilment_id = fields.Integer()


class MpProductSchema(Schema):
    id = fields.Integer()
    code = fields.String()
    name = fields.String()
    kind = fields.String()
    price_fen = fields.Integer()
    face_value_fen = fields.Integer(allow_none=True)
    stock = fields.Integer(allow_none=True)


class OrderViewSchema(Schema):
    id = fields.Integer()
    out_trade_no = fields.String()
    amount_fen = fields.Integer()
    list_price_fen = fields.Integer(allow_none=True)
    discount_fen = fields.Integer()
    status = fields.String()
    product_id = fields.Integer()
    history = fields.List(fields.Dict())


class OrderCreatedSchema(Schema):
    order = fields.Nested(OrderViewSchema)
    payment = fields.Dict(allow_none=True, metadata={"description": "the parameters for wx.requestPayment"})


class PointsHoldSchema(Schema):
    id = fields.Integer()
    points = fields.Integer()
    status = fields.String()


def _session(appid: str) -> mp.MpSession:
    auth = request.headers.get("Authorization", "")
    return mp.session_from_token(appid, auth[7:] if auth.startswith("Bearer ") else "")


@bp.post("/<appid>/phone/sms")
@bp.arguments(PhoneSmsSchema, error_status_code=400)
@bp.response(202, SmsSentSchema)
@bp.doc(security=MP_AUTH)
def phone_sms(data: dict[str, Any], appid: str) -> ResponseReturnValue:
    session = _session(appid)
    result = services.start_binding(session.account_id, session.subscriber_id, data["phone"])
    return jsonify(result), 202


@bp.post("/<appid>/phone/verify")
@bp.arguments(PhoneVerifySchema, error_status_code=400)
@bp.response(201, BindingSchema)
@bp.doc(security=MP_AUTH)
def phone_verify(data: dict[str, Any], appid: str) -> ResponseReturnValue:
    session = _session(appid)
    binding = services.confirm_binding(session.account_id, session.subscriber_id, data["code"])
    db.session.commit()
    return jsonify({"phone": binding.phone, "bound_at": binding.bound_at.isoformat()}), 201


class PhoneWechatSchema(Schema):
    class Meta:
        unknown = RAISE

    code = Text(required=True, validate=validate.Length(min=1, max=128))


@bp.post("/<appid>/phone/wechat")
@bp.arguments(PhoneWechatSchema, error_status_code=400)
@bp.response(201, BindingSchema)
@bp.doc(security=MP_AUTH)
def phone_wechat(data: dict[str, Any], appid: str) -> ResponseReturnValue:
    """The getPhoneNumber button's code: WeChat tells us the verified number, no SMS round."""
    session = _session(appid)
    binding = services.bind_phone_from_wechat(session.account_id, session.subscriber_id, data["code"])
    db.session.commit()
    # The subscriber's own number, in clear to them only (as after the SMS path).
    return jsonify({"phone": binding.phone, "bound_at": binding.bound_at.isoformat(), "method": "mp"}), 201


@bp.get("/<appid>/phone")
@bp.response(200, BindingSchema)
@bp.doc(security=MP_AUTH)
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
@bp.response(200, MpInquirySchema)
@bp.alt_response(409, schema=MpInquirySchema, description="no phone bound")
@bp.alt_response(503, schema=MpInquirySchema, description="the BOSS did not answer")
@bp.doc(security=MP_AUTH)
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

    code = Text(required=True, validate=validate.Length(min=4, max=64))


@bp.post("/<appid>/redeem")
@bp.arguments(RedeemSchema, error_status_code=400)
@bp.response(202, RedeemedSchema)
@bp.doc(security=MP_AUTH)
def redeem(data: dict[str, Any], appid: str) -> ResponseReturnValue:
    session = _session(appid)
    result = redemption.redeem(session.account_id, session.subscriber_id, data["code"], "mp")
    db.session.commit()
    return jsonify(result), 202


class OrderCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    product_id = fields.Integer(required=True, validate=validate.Range(min=1, max=2**31 - 1))
    client_key = Text(required=True, validate=validate.Length(min=8, max=64))
    provider = Text(
        load_default="wechatpay_v3", validate=validate.OneOf(["wechatpay_v3", "wechatpay_v2", "alipay"])
    )
    coupon = Text(load_default=None, validate=validate.Length(max=32))


def _order_view(order: Order) -> dict[str, object]:
    return {
        "id": order.id,
        "out_trade_no": order.out_trade_no,
        "amount_fen": order.amount_fen,
        "list_price_fen": order.list_price_fen,
        "discount_fen": order.discount_fen,
        "status": order.status.value,
        "product_id": order.product_id,
        "history": [
            {"from": e.from_status, "to": e.to_status, "at": e.at.isoformat()}
            for e in orders.history(order.id)
        ],
    }


@bp.get("/<appid>/products")
@bp.response(200, MpProductSchema(many=True))
@bp.doc(security=MP_AUTH)
def products(appid: str) -> ResponseReturnValue:
    session = _session(appid)
    items = [
        p for p in db.session.scalars(catalogue.visible_products(session.account_id)) if catalogue.on_sale(p)
    ]
    return jsonify(
        [
            {
                "id": p.id,
                "code": p.code,
                "name": p.name,
                "kind": p.kind.value,
                "price_fen": p.price_fen,
                "face_value_fen": p.face_value_fen,
                "stock": p.stock,
            }
            for p in items
        ]
    )


@bp.post("/<appid>/orders")
@bp.arguments(OrderCreateSchema, error_status_code=400)
@bp.response(201, OrderCreatedSchema)
@bp.alt_response(200, schema=OrderCreatedSchema, description="already paid or closed")
@bp.doc(security=MP_AUTH)
def create_order(data: dict[str, Any], appid: str) -> ResponseReturnValue:
    """Create (idempotently, by client_key) and get the parameters for wx.requestPayment."""

    session = _session(appid)
    order = orders.create_order(
        session.account_id,
        session.subscriber_id,
        data["product_id"],
        data["client_key"],
        data["provider"],
        coupon_code=data["coupon"],
    )
    db.session.commit()
    if order.status.value != "pending_payment":
        return jsonify({"order": _order_view(order), "payment": None}), 200
    openid = subscriber_by_id(session.account_id, session.subscriber_id).openid

    product = db.session.get_one(Product, order.product_id)
    params = payments.prepay(order, openid, product.name)
    db.session.commit()
    return jsonify({"order": _order_view(order), "payment": params}), 201


@bp.get("/<appid>/orders/<int:order_id>")
@bp.response(200, OrderViewSchema)
@bp.doc(security=MP_AUTH)
def get_order(appid: str, order_id: int) -> ResponseReturnValue:
    session = _session(appid)
    order = orders.order_for(session.account_id, order_id)
    if order.subscriber_id != session.subscriber_id:
        raise NotFoundError("no such order")
    return jsonify(_order_view(order))


class PointsExchangeSchema(Schema):
    class Meta:
        unknown = RAISE

    product_id = fields.Integer(required=True, validate=validate.Range(min=1, max=2**31 - 1))
    client_key = Text(required=True, validate=validate.Length(min=8, max=64))


@bp.post("/<appid>/points/exchange")
@bp.arguments(PointsExchangeSchema, error_status_code=400)
@bp.response(202, PointsHoldSchema)
@bp.doc(security=MP_AUTH)
def points_exchange(data: dict[str, Any], appid: str) -> ResponseReturnValue:
    session = _session(appid)
    hold = points.exchange(session.account_id, session.subscriber_id, data["product_id"], data["client_key"])
    db.session.commit()
    return jsonify({"id": hold.id, "points": hold.points, "status": hold.status.value}), 202
