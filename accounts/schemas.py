"""marshmallow schemas of the console API: load schemas refuse unknown fields; dump schemas never
carry a secret in clear, and personal data is masked unless the caller's role allows."""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from wechat_service.fields import NOT_BLANK, NOT_BLANK_MULTILINE, Instant, Text

# What the services check, said here too so the OpenAPI document tells clients the same rules.
APPID = validate.Regexp(r"^wx[0-9a-f]{16}$", error="wx followed by 16 hex digits")
ORIGINAL_ID = validate.Regexp(r"^gh_[0-9a-zA-Z]{6,28}$", error="gh_ followed by letters and digits")
CALLBACK_TOKEN = validate.Regexp(r"^[A-Za-z0-9]{3,32}$", error="3-32 letters or digits (WeChat's rule)")
AES_KEY = validate.Regexp(r"^[A-Za-z0-9]{43}$", error="43 letters or digits (as in the WeChat admin)")
ID = validate.Range(min=1, max=2**31 - 1)  # the id columns' range (as accounts.front_doors.console.MAX_ID)
TIMEZONES = sorted(tz for tz in available_timezones() if "/" in tz or tz == "UTC")
ORG_CODE = validate.Regexp(r"^[a-z0-9][a-z0-9_.-]{0,63}$", error="an org unit code")
NAME = [validate.Length(min=1, max=128), NOT_BLANK]


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
    """An official account needs ``token`` (and ``aes_key`` unless ``message_mode`` is plain);
    a mini-program needs neither."""

    name = Text(required=True, validate=NAME)
    appid = Text(required=True, validate=APPID)
    app_secret = Text(required=True, load_only=True, validate=validate.Length(min=1, max=128))
    kind = Text(load_default="service", validate=validate.OneOf(["service", "subscription", "mini_program"]))
    original_id = Text(load_default=None, validate=ORIGINAL_ID)
    token = Text(load_default=None, load_only=True, validate=CALLBACK_TOKEN)
    aes_key = Text(load_default=None, load_only=True, validate=AES_KEY)
    message_mode = Text(load_default="plain", validate=validate.OneOf(["plain", "compatible", "safe"]))
    timezone = Text(load_default="Asia/Shanghai", validate=validate.OneOf(TIMEZONES))
    org_unit = Text(load_default=None, validate=ORG_CODE)

    @validates_schema
    def _complete(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind", "service") != "mini_program" and not data.get("token"):
            raise ValidationError("an official account needs a callback token", "token")
        if data.get("message_mode", "plain") != "plain" and not data.get("aes_key"):
            raise ValidationError("compatible and safe modes need an EncodingAESKey", "aes_key")


class AccountUpdateSchema(StrictSchema):
    name = Text(validate=NAME)
    app_secret = Text(load_only=True, validate=validate.Length(min=1, max=128))
    kind = Text(validate=validate.OneOf(["service", "subscription", "mini_program"]))
    original_id = Text(validate=ORIGINAL_ID)
    token = Text(load_only=True, validate=CALLBACK_TOKEN)
    aes_key = Text(load_only=True, validate=AES_KEY)
    message_mode = Text(validate=validate.OneOf(["plain", "compatible", "safe"]))
    timezone = Text(validate=validate.OneOf(TIMEZONES))
    org_unit = Text(allow_none=True, validate=ORG_CODE)


class StatusSchema(StrictSchema):
    active = fields.Boolean(required=True)


class SubscriberQuerySchema(PageQuerySchema):
    q = Text(load_default=None, validate=validate.Length(max=128))
    tag = Text(load_default=None, validate=validate.Length(max=64))
    channel = fields.Integer(load_default=None, validate=ID)


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
    reason = Text(required=True, validate=validate.Length(min=3, max=200))


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


class ArticleSchema(StrictSchema):
    title = Text(required=True, validate=validate.Length(min=1, max=64))
    url = fields.Url(required=True, schemes={"http", "https"}, validate=validate.Length(max=1024))
    description = Text(load_default="", validate=validate.Length(max=512), multiline=True)
    image = fields.Url(load_default="", schemes={"http", "https"}, validate=validate.Length(max=1024))


class ReplyBodySchema(StrictSchema):
    """``content`` for a text reply (at most 2048 bytes), ``media_id`` for an image, ``articles``
    (1 to 8) for news."""

    content = Text(multiline=True, validate=[validate.Length(min=1, max=2048), NOT_BLANK_MULTILINE])
    media_id = Text(validate=validate.Length(min=1, max=128))
    articles = fields.List(fields.Nested(ArticleSchema), validate=validate.Length(min=1, max=8))


REPLY_NEEDS = {"text": "content", "image": "media_id", "news": "articles"}


class RuleCreateSchema(StrictSchema):
    """A keyword rule needs ``keywords``; ``reply`` carries what ``reply_type`` needs."""

    name = Text(required=True, validate=NAME)
    kind = Text(load_default="keyword", validate=validate.OneOf(["keyword", "welcome", "default"]))
    keywords = fields.List(
        Text(validate=[validate.Length(min=1, max=200), NOT_BLANK]),
        load_default=list,
        validate=validate.Length(max=50),
    )
    match_mode = Text(load_default="exact", validate=validate.OneOf(["exact", "contains", "regex"]))
    priority = fields.Integer(load_default=0, validate=validate.Range(min=-1_000_000, max=1_000_000))
    reply_type = Text(load_default="text", validate=validate.OneOf(["text", "news", "image"]))
    reply = fields.Nested(ReplyBodySchema, required=True)
    active_from = Instant(load_default=None)
    active_until = Instant(load_default=None)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind", "keyword") == "keyword" and not data.get("keywords"):
            raise ValidationError("a keyword rule needs keywords", "keywords")
        need = REPLY_NEEDS[data.get("reply_type", "text")]
        if not (data.get("reply") or {}).get(need):
            raise ValidationError(f"this reply type needs {need}", "reply")
        if data.get("reply_type", "text") == "text" and len(data["reply"][need].encode()) > 2048:
            raise ValidationError("text reply longer than 2048 bytes", "reply")
        if (
            data.get("active_from")
            and data.get("active_until")
            and data["active_until"] <= data["active_from"]
        ):
            raise ValidationError("active_until must be after active_from", "active_until")


class TrySchema(StrictSchema):
    text = Text(required=True, multiline=True, validate=validate.Length(max=2000))


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


class MenuLeafSchema(StrictSchema):
    """A button that does something: ``key`` for click, ``url`` for view, ``url``, ``appid`` and
    ``pagepath`` for miniprogram. Names: 16 bytes at the top level, 60 in a sub-menu (UTF-8)."""

    type = Text(required=True, validate=validate.OneOf(["click", "view", "miniprogram"]))
    name = Text(required=True, validate=validate.Length(min=1, max=60))
    key = Text(validate=validate.Length(min=1, max=128))
    url = fields.Url(schemes={"http", "https"}, validate=validate.Length(max=1024))
    appid = Text(validate=validate.Length(min=1, max=32))
    pagepath = Text(validate=validate.Length(min=1, max=512))

    @validates_schema
    def _needs(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("type", "")
        need = {"click": ["key"], "view": ["url"], "miniprogram": ["url", "appid", "pagepath"]}.get(kind, [])
        for field in need:
            if not data.get(field):
                raise ValidationError(f"a {kind} button needs {field}", field)
        if len(data.get("key", "").encode()) > 128:
            raise ValidationError("at most 128 bytes", "key")


class MenuButtonSchema(MenuLeafSchema):
    """A top-level button: a leaf, or a ``name`` with 1 to 5 ``sub_button`` leaves."""

    type = Text(validate=validate.OneOf(["click", "view", "miniprogram"]))
    sub_button = fields.List(fields.Nested(MenuLeafSchema), validate=validate.Length(min=1, max=5))

    @validates_schema
    def _needs(self, data: dict[str, Any], **_: Any) -> None:
        if "sub_button" not in data:
            if "type" not in data:
                raise ValidationError("a button needs a type or sub_button", "type")
            super()._needs(data)
        if len(data.get("name", "").encode()) > 16:
            raise ValidationError("at most 16 bytes (5 Chinese characters)", "name")


class MenuUpdateSchema(StrictSchema):
    button = fields.List(
        fields.Nested(MenuButtonSchema), required=True, validate=validate.Length(min=1, max=3)
    )


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
    """``expire_seconds`` (60 s to 30 days; default 30 days) applies to a temporary code."""

    name = Text(required=True, validate=NAME)
    scene = Text(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_\-.]{1,64}$"))
    channel_type = Text(load_default="other", validate=validate.OneOf(["store", "staff", "event", "other"]))
    permanent = fields.Boolean(load_default=True)
    expire_seconds = fields.Integer(load_default=None, validate=validate.Range(min=60, max=30 * 24 * 3600))


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
    """The password: at least 10 characters, 4 different ones, not the username."""

    username = Text(
        required=True,
        validate=validate.Regexp(
            r"^[a-z0-9][a-z0-9_.@-]{2,63}$", error="3-64 lower-case letters, digits, . _ @ -"
        ),
    )
    password = Text(required=True, load_only=True, validate=validate.Length(min=10, max=256))
    display_name = Text(load_default="", validate=validate.Length(max=128))
    is_admin = fields.Boolean(load_default=False)

    @validates_schema
    def _strength(self, data: dict[str, Any], **_: Any) -> None:
        password = data.get("password", "")
        if password.lower() == data.get("username", "").lower() or len(set(password)) < 4:
            raise ValidationError("too weak: 4 different characters at least, not the username", "password")


class GrantSchema(Schema):
    id = fields.Integer()
    role = fields.String()
    can_approve = fields.Boolean()
    account_id = fields.Integer(allow_none=True)
    account = fields.String(allow_none=True)
    org_unit = fields.String(allow_none=True)


class GrantCreateSchema(StrictSchema):
    role = Text(required=True, validate=validate.OneOf(["account_manager", "marketer", "analyst", "support"]))
    account_id = fields.Integer(load_default=None, validate=ID)
    org_unit = Text(load_default=None, validate=ORG_CODE)
    can_approve = fields.Boolean(load_default=False)


class AuditQuerySchema(PageQuerySchema):
    user = fields.Integer(load_default=None, validate=ID)
    account = fields.Integer(load_default=None, validate=ID)
    action = Text(load_default=None, validate=validate.Length(max=64))


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


# -- answers of the list and order operations (the document says what they return) --------------


class PageSchema(Schema):
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)
    total = fields.Integer(required=True)


class AccountPageSchema(PageSchema):
    items = fields.List(fields.Nested(AccountSchema), required=True)


class SubscriberPageSchema(PageSchema):
    items = fields.List(fields.Nested(SubscriberSchema), required=True)


class EventPageSchema(PageSchema):
    items = fields.List(fields.Nested(EventSchema), required=True)


class AuditPageSchema(PageSchema):
    items = fields.List(fields.Nested(AuditSchema), required=True)
