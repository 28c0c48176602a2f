"""marshmallow schemas of the store's staff API (orders and refunds)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from accounts.schemas import PageQuerySchema, PageSchema, StrictSchema
from wechat_service.fields import Text

ORDER_STATUSES = [
    "pending_payment", "paid", "fulfilling", "fulfilled", "fulfilment_failed",
    "refunding", "refunded", "closed",
]  # fmt: skip


class OrderQuerySchema(PageQuerySchema):
    q = Text(load_default=None, validate=validate.Length(max=64))
    status = Text(load_default=None, validate=validate.OneOf(ORDER_STATUSES))


class RefundSchema(StrictSchema):
    reason = Text(required=True, validate=validate.Length(min=3, max=200), multiline=True)
    # Omitted: everything not refunded yet. Otherwise a partial refund of this many fen.
    amount_fen = fields.Integer(load_default=None, validate=validate.Range(min=1, max=2**31 - 1))


class OrderSchema(Schema):
    """An order as staff see it (the phone masked unless the role allows), with its history."""

    id = fields.Integer()
    out_trade_no = fields.String()
    amount_fen = fields.Integer()
    refunded_fen = fields.Integer()
    status = fields.String()
    provider = fields.String()
    created_at = fields.String()
    paid_at = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    history = fields.List(fields.Dict())
    refunds = fields.List(fields.Dict())


class OrderPageSchema(PageSchema):
    items = fields.List(fields.Nested(OrderSchema), required=True)
