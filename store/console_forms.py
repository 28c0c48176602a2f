"""Load schemas for the store's console forms (HTML form posts, so every value arrives as text).

Money is typed in yuan and becomes integer fen through ``Decimal`` — never a float, so "19.90" is
exactly 1990 and "0.1" exactly 10. Dates are typed in the account's own timezone and stored in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate

from store.models import CouponKind, ProductKind
from store.redemption import MAX_BATCH
from wechat_service.fields import Text
from wechat_service.money import YUAN_RE, fen_of, fen_to_yuan, yuan, yuan_to_fen  # noqa: F401 - re-exported

# Whole yuan with at most two decimals: no signs, exponents, NaN or thousands separators. Seven
# digits keep the largest amount (9,999,999.99 yuan) inside a 32-bit fen column.
MAX_INT = 2**31 - 1


class Yuan(fields.Field):
    """A yuan amount typed by staff, loaded as integer fen."""

    default_error_messages = {"invalid": "an amount in yuan, e.g. 19.90 (at most two decimals)"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        try:
            return yuan_to_fen(str(value))
        except ValueError:
            raise self.make_error("invalid") from None


class LocalDateTime(fields.NaiveDateTime):
    """A ``datetime-local`` input, read in the account's timezone (the schema's ``tz``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        naive = super()._deserialize(value, attr, data, **kwargs)
        return naive.replace(tzinfo=ZoneInfo(cast("ConsoleForm", self.parent).tz)).astimezone(UTC)


class ConsoleForm(Schema):
    """Blank inputs are absent; the CSRF token is Flask-WTF's business, not the schema's."""

    class Meta:
        unknown = RAISE

    def __init__(self, *, tz: str = "Asia/Shanghai", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tz = tz

    @pre_load
    def _blank_is_absent(self, data: Any, **kwargs: Any) -> dict[str, Any]:
        return {
            k: v.strip() if isinstance(v, str) else v
            for k, v in dict(data).items()
            if k != "csrf_token" and not (isinstance(v, str) and not v.strip())
        }


def _count(minimum: int = 0) -> fields.Integer:
    return fields.Integer(load_default=None, strict=False, validate=validate.Range(min=minimum, max=MAX_INT))


class ProductFields(ConsoleForm):
    name = Text(required=True, validate=validate.Length(min=1, max=128))
    price_fen = Yuan(required=True, data_key="price", validate=validate.Range(min=1, error="more than 0"))
    face_value_fen = Yuan(load_default=None, data_key="face_value", validate=validate.Range(min=1))
    package_code = Text(load_default=None, validate=validate.Length(max=64))
    plan_code = Text(load_default=None, validate=validate.Length(max=64))
    active_from = LocalDateTime(load_default=None)
    active_until = LocalDateTime(load_default=None)
    stock = _count(0)
    per_subscriber_limit = _count(1)
    points_price = _count(1)


class ProductEditForm(ProductFields):
    # The stock the edit form showed ("none": unlimited), so that orders taken meanwhile are not
    # overwritten (see catalogue.update_product).
    stock_seen = Text(load_default=None, validate=validate.Regexp(r"^(none|\d{1,10})$"))


class ProductCreateForm(ProductFields):
    kind = Text(required=True, validate=validate.OneOf([k.value for k in ProductKind]))
    code = Text(required=True, validate=validate.Length(min=1, max=64))


# The service names the stored fields; the form shows yuan inputs under their own names.
PRODUCT_FORM_NAMES = {"price_fen": "price", "face_value_fen": "face_value"}


class BatchCreateForm(ConsoleForm):
    product_id = fields.Integer(required=True, validate=validate.Range(min=1, max=MAX_INT))
    name = Text(required=True, validate=validate.Length(min=1, max=128))
    count = fields.Integer(required=True, validate=validate.Range(min=1, max=MAX_BATCH))
    valid_days = fields.Integer(load_default=90, validate=validate.Range(min=1, max=3650))
    valid_from = LocalDateTime(load_default=None)


class CouponCreateForm(ConsoleForm):
    code = Text(required=True, validate=validate.Length(min=3, max=32))
    name = Text(required=True, validate=validate.Length(min=1, max=128))
    kind = Text(required=True, validate=validate.OneOf([k.value for k in CouponKind]))
    # Yuan off for a fixed coupon, whole percent off for a percent coupon: read once the kind is known.
    value = Text(required=True, validate=validate.Length(max=16))
    min_spend_fen = Yuan(load_default=0, data_key="min_spend")
    per_person_limit = _count(1)
    total_limit = _count(1)
    valid_from = LocalDateTime(load_default=None)
    valid_until = LocalDateTime(required=True)

    @post_load
    def _value(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        raw = data["value"]
        if data["kind"] == CouponKind.fixed.value:
            try:
                data["value"] = yuan_to_fen(raw)
            except ValueError:
                raise ValidationError("yuan off, e.g. 5 or 2.50", "value") from None
            if data["value"] <= 0:
                raise ValidationError("more than 0", "value")
        else:
            if not re.fullmatch(r"[0-9]{1,2}", raw) or not 1 <= int(raw) <= 99:  # not str.isdigit: "²"
                raise ValidationError("a whole percent from 1 to 99", "value")
            data["value"] = int(raw)
        if (
            data["per_person_limit"]
            and data["total_limit"]
            and data["per_person_limit"] > data["total_limit"]
        ):
            raise ValidationError("not more than the total limit", "per_person_limit")
        return data


def field_errors(messages: Any, names: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Schema or service errors as field → list of messages, under the form's input names."""
    if not isinstance(messages, dict):
        return {"_schema": [str(messages)]}
    out: dict[str, list[str]] = {}
    for key, value in cast("dict[str, Any]", messages).items():  # keyed by field name
        name = (names or {}).get(key, key)
        out[name] = [str(m) for m in value] if isinstance(value, list) else [str(value)]
    return out
