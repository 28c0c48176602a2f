"""marshmallow schemas of the console API: load schemas refuse unknown fields; dump schemas never
carry a secret in clear, and personal data is masked unless the caller's role allows."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class PageQuerySchema(StrictSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    per_page = fields.Integer(load_default=25, validate=validate.Range(min=1, max=200))


class AccountSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    kind = fields.String()
    appid = fields.String()
    original_id = fields.String(allow_none=True)
    message_mode = fields.String()
    status = fields.String()
    timezone = fields.String()
    org_unit = fields.String(allow_none=True)
    org_path = fields.List(fields.String())
    app_secret = fields.String(metadata={"description": "masked"})
    token = fields.String(metadata={"description": "masked"})
    aes_key = fields.String(metadata={"description": "masked"})
    previous_aes_key = fields.String(metadata={"description": "masked"})
    aes_key_rotated_at = fields.String(allow_none=True)
    callback_url = fields.String()
    created_at = fields.String(allow_none=True)
    token_health = fields.Dict(allow_none=True)


class AccountCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    appid = fields.String(required=True)
    app_secret = fields.String(required=True, load_only=True)
    kind = fields.String(
        load_default="service", validate=validate.OneOf(["service", "subscription", "mini_program"])
    )
    original_id = fields.String(load_default=None)
    token = fields.String(load_default=None, load_only=True)
    aes_key = fields.String(load_default=None, load_only=True)
    message_mode = fields.String(
        load_default="plain", validate=validate.OneOf(["plain", "compatible", "safe"])
    )
    timezone = fields.String(load_default="Asia/Shanghai")
    org_unit = fields.String(load_default=None)


class AccountUpdateSchema(StrictSchema):
    name = fields.String(validate=validate.Length(min=1, max=128))
    app_secret = fields.String(load_only=True)
    kind = fields.String(validate=validate.OneOf(["service", "subscription", "mini_program"]))
    original_id = fields.String()
    token = fields.String(load_only=True)
    aes_key = fields.String(load_only=True)
    message_mode = fields.String(validate=validate.OneOf(["plain", "compatible", "safe"]))
    timezone = fields.String()
    org_unit = fields.String(allow_none=True)


class StatusSchema(StrictSchema):
    active = fields.Boolean(required=True)


class SubscriberQuerySchema(PageQuerySchema):
    q = fields.String(load_default=None)
    tag = fields.String(load_default=None)
    channel = fields.Integer(load_default=None)


class SubscriberSchema(Schema):
    id = fields.Integer()
    openid = fields.String()
    unionid = fields.String(allow_none=True)
    following = fields.Boolean()
    first_followed_at = fields.DateTime(allow_none=True)
    last_followed_at = fields.DateTime(allow_none=True)
    last_unfollowed_at = fields.DateTime(allow_none=True)
    subscribe_scene = fields.String(allow_none=True)
    qr_scene = fields.String(allow_none=True)
    channel_id = fields.Integer(allow_none=True)
    last_interaction_at = fields.DateTime(allow_none=True)
    masked = fields.Boolean()


class EventSchema(Schema):
    kind = fields.String()
    occurred_at = fields.DateTime()
    channel_id = fields.Integer(allow_none=True)
    detail = fields.Dict()


class RevealSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=3, max=200))


class RuleSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    kind = fields.Function(lambda r: r.kind.value)
    keywords = fields.List(fields.String())
    match_mode = fields.Function(lambda r: r.match_mode.value)
    priority = fields.Integer()
    reply_type = fields.Function(lambda r: r.reply_type.value)
    reply = fields.Dict()
    enabled = fields.Boolean()
    active_from = fields.DateTime(allow_none=True)
    active_until = fields.DateTime(allow_none=True)


class RuleCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    kind = fields.String(load_default="keyword", validate=validate.OneOf(["keyword", "welcome", "default"]))
    keywords = fields.List(fields.String(), load_default=list)
    match_mode = fields.String(load_default="exact", validate=validate.OneOf(["exact", "contains", "regex"]))
    priority = fields.Integer(load_default=0)
    reply_type = fields.String(load_default="text", validate=validate.OneOf(["text", "news", "image"]))
    reply = fields.Dict(required=True)
    active_from = fields.AwareDateTime(load_default=None)
    active_until = fields.AwareDateTime(load_default=None)


class TrySchema(StrictSchema):
    text = fields.String(required=True, validate=validate.Length(max=2000))


class TryResultSchema(Schema):
    rule = fields.String(allow_none=True, metadata={"description": "the auto-reply rule that answers"})
    handled_by = fields.String(allow_none=True, metadata={"description": "the handler whose reply is sent"})
    reply_type = fields.String(allow_none=True)
    reply = fields.Dict(allow_none=True)
    actions = fields.List(fields.String(), metadata={"description": "what the real callback would also do"})


class MenuSchema(Schema):
    tree = fields.Dict(allow_none=True)
    published_tree = fields.Dict(allow_none=True)
    published_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime(allow_none=True)


class MenuUpdateSchema(StrictSchema):
    button = fields.List(fields.Dict(), required=True)


class QRCodeSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    channel_type = fields.String()
    scene = fields.String()
    permanent = fields.Boolean()
    url = fields.String(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    follows = fields.Integer()
    scans = fields.Integer()


class QRCodeCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    scene = fields.String(required=True)
    channel_type = fields.String(
        load_default="other", validate=validate.OneOf(["store", "staff", "event", "other"])
    )
    permanent = fields.Boolean(load_default=True)
    expire_seconds = fields.Integer(load_default=None)


class OverviewRowSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    appid = fields.String()
    kind = fields.String()
    status = fields.String()
    message_mode = fields.String()
    org_path = fields.List(fields.String())
    followers = fields.Integer()
    follows_today = fields.Integer()
    unfollows_today = fields.Integer()
    callbacks_last_hour = fields.Integer()
    errors_24h = fields.Integer()
    token = fields.Dict(allow_none=True)


class StaffSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    display_name = fields.String()
    is_admin = fields.Boolean()
    is_active = fields.Boolean()
    totp = fields.Function(lambda u: bool(u.totp_secret))
    last_login_at = fields.DateTime(allow_none=True)


class StaffCreateSchema(StrictSchema):
    username = fields.String(required=True)
    password = fields.String(required=True, load_only=True)
    display_name = fields.String(load_default="")
    is_admin = fields.Boolean(load_default=False)


class GrantSchema(Schema):
    id = fields.Integer()
    role = fields.String()
    can_approve = fields.Boolean()
    account_id = fields.Integer(allow_none=True)
    account = fields.String(allow_none=True)
    org_unit = fields.String(allow_none=True)


class GrantCreateSchema(StrictSchema):
    role = fields.String(
        required=True, validate=validate.OneOf(["account_manager", "marketer", "analyst", "support"])
    )
    account_id = fields.Integer(load_default=None)
    org_unit = fields.String(load_default=None)
    can_approve = fields.Boolean(load_default=False)


class AuditQuerySchema(PageQuerySchema):
    user = fields.Integer(load_default=None)
    account = fields.Integer(load_default=None)
    action = fields.String(load_default=None)


class AuditSchema(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    user_id = fields.Integer(allow_none=True)
    account_id = fields.Integer(allow_none=True)
    action = fields.String()
    target = fields.String()
    before = fields.Dict(allow_none=True)
    after = fields.Dict(allow_none=True)
    ip = fields.String(allow_none=True)


class SessionSchema(Schema):
    user = fields.Nested(StaffSchema)
    csrf_token = fields.String()
