"""marshmallow schemas of the campaign API: load schemas strict, dump schemas separate."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from accounts.schemas import ORG_CODE, StrictSchema
from templates_msg import services
from wechat_service.fields import Day, Instant, Text

ID = validate.Range(min=1, max=2**31 - 1)  # the id columns' range
IDS = validate.Length(max=500)


class TemplateSchema(Schema):
    id = fields.Integer()
    account_id = fields.Integer()
    template_id = fields.String()
    kind = fields.String()
    title = fields.String()
    content = fields.String()
    example = fields.String()
    fields_ = fields.List(fields.Dict(), data_key="fields", attribute="fields")
    synced_at = fields.DateTime()


class SegmentSchema(StrictSchema):
    tag_ids = fields.List(fields.Integer(validate=validate.Range(min=0, max=2**31 - 1)), validate=IDS)
    followed_after = Day()
    followed_before = Day()
    active_within_days = fields.Integer(validate=validate.Range(min=1, max=3650))
    inactive_for_days = fields.Integer(validate=validate.Range(min=1, max=3650))
    channel_ids = fields.List(fields.Integer(validate=ID), validate=IDS)
    bound_phone = fields.Boolean(allow_none=True)
    bought_product_ids = fields.List(fields.Integer(validate=ID), validate=IDS)
    not_bought_product_ids = fields.List(fields.Integer(validate=ID), validate=IDS)
    bought_within_days = fields.Integer(validate=validate.Range(min=1, max=3650))
    frequency_cap_days = fields.Integer(validate=validate.Range(min=1, max=365))


def _segment_out(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in data.items() if v is not None}


class CampaignFieldsSchema(StrictSchema):
    name = Text(validate=validate.Length(min=1, max=128))
    data = fields.Dict(
        keys=Text(validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")),
        values=Text(multiline=True, validate=validate.Length(max=2000)),
        validate=validate.Length(max=50),
        metadata={"maxProperties": 50},
    )
    link_url = fields.Url(allow_none=True, schemes={"http", "https"}, validate=validate.Length(max=1024))
    mp_appid = Text(allow_none=True, validate=validate.Length(max=32))
    mp_page = Text(allow_none=True, validate=validate.Length(max=512))
    segment = fields.Nested(SegmentSchema)
    dedup_unionid = fields.Boolean()
    sample_pct = fields.Integer(validate=validate.Range(min=1, max=100))
    control_pct = fields.Integer(validate=validate.Range(min=0, max=50))
    scheduled_at = Instant(allow_none=True)
    quiet_start = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=23))
    quiet_end = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=23))
    rate = fields.Integer(validate=validate.Range(min=0, max=10_000))
    error_threshold = fields.Float(validate=validate.Range(min=0.01, max=1))
    attribution_days = fields.Integer(validate=validate.Range(min=1, max=90))

    @validates_schema
    def _quiet(self, data: dict[str, Any], **_: Any) -> None:
        if ("quiet_start" in data) != ("quiet_end" in data):
            raise ValidationError("give both ends of the quiet hours", "quiet_end")


class CampaignCreateSchema(CampaignFieldsSchema):
    name = Text(required=True, validate=validate.Length(min=1, max=128))
    account_ids = fields.List(fields.Integer(validate=ID), validate=validate.Length(min=1, max=500))
    org_unit = Text(load_default=None, validate=ORG_CODE)
    template_id = Text(required=True, validate=validate.Length(min=1, max=128))

    @validates_schema
    def _targets(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("account_ids") and not data.get("org_unit"):
            raise ValidationError("give account_ids or an org_unit", "account_ids")


class CampaignUpdateSchema(CampaignFieldsSchema):
    version = fields.Integer(required=True, validate=validate.Range(min=0, max=2**31 - 1))


class ReasonSchema(StrictSchema):
    reason = Text(load_default="", validate=validate.Length(max=500), multiline=True)


class FullExportSchema(StrictSchema):
    """A deliveries CSV with full openids: asked for with a POST (so a link cannot trigger it),
    by a role with the reveal right on every account of the campaign, with a reason that goes
    in the audit log."""

    reason = Text(required=True, validate=validate.Length(min=3, max=200))


class AudienceQuerySchema(StrictSchema):
    account_ids = fields.List(
        fields.Integer(validate=ID), required=True, validate=validate.Length(min=1, max=500)
    )
    segment = fields.Nested(SegmentSchema, load_default=dict)
    sample_pct = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100))
    control_pct = fields.Integer(load_default=0, validate=validate.Range(min=0, max=50))


class AudienceSchema(Schema):
    matching = fields.Integer()
    sampled = fields.Integer()
    control = fields.Integer()
    recipients = fields.Integer()


class CampaignSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    kind = fields.String()
    state = fields.String()
    state_reason = fields.String(allow_none=True)
    template_title = fields.String()
    data = fields.Dict()
    link_url = fields.String(allow_none=True)
    mp_appid = fields.String(allow_none=True)
    mp_page = fields.String(allow_none=True)
    segment = fields.Dict()
    dedup_unionid = fields.Boolean()
    sample_pct = fields.Integer()
    control_pct = fields.Integer()
    scheduled_at = fields.DateTime(allow_none=True)
    quiet_start = fields.Integer(allow_none=True)
    quiet_end = fields.Integer(allow_none=True)
    rate = fields.Integer()
    error_threshold = fields.Float()
    attribution_days = fields.Integer()
    created_by = fields.Integer(allow_none=True)
    approved_by = fields.Integer(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    version = fields.Integer()
    account_ids = fields.Method("_account_ids", metadata={"type": "array", "items": {"type": "integer"}})

    def _account_ids(self, campaign: Any) -> list[int]:
        return services.account_ids_of(campaign.id)


class StatsSchema(Schema):
    class Meta:
        unknown = "include"

    campaign_id = fields.Integer()
    state = fields.String(allow_none=True)
    audience = fields.Integer()
    control = fields.Integer()
    pending = fields.Integer()
    sending = fields.Integer()
    sent = fields.Integer()
    failed = fields.Integer()
    skipped = fields.Integer()
    unknown = fields.Integer()  # type: ignore[assignment]  # a field, though Schema has an ``unknown``
    delivered = fields.Integer()
    user_block = fields.Integer()
    system_failed = fields.Integer()
    report_other = fields.Integer()
    failed_by_reason = fields.List(fields.Dict())
    clicks = fields.Integer()
    ctr = fields.Float()
    conversions = fields.Integer()
    revenue_fen = fields.Integer()
    conversion_rate = fields.Float()
    control_conversions = fields.Integer(allow_none=True)
    control_conversion_rate = fields.Float(allow_none=True)
    uplift = fields.Float(allow_none=True)
    sends_per_second = fields.Float()
    eta_seconds = fields.Integer(allow_none=True)
    left = fields.Integer()
    accounts = fields.List(fields.Dict())


class PreviewSchema(Schema):
    text = fields.String()


class CampaignPageSchema(Schema):
    items = fields.List(fields.Nested(CampaignSchema), required=True)
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)
    total = fields.Integer(required=True)


class SyncCountsSchema(Schema):
    added = fields.Integer()
    updated = fields.Integer()
    removed = fields.Integer()
