"""The campaign JSON API under /api/v1 (session + CSRF, like the console API), in the OpenAPI doc."""

from __future__ import annotations

from typing import Any

from flask import Response, request, stream_with_context
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Unauthorized

from accounts import access as acl
from accounts.front_doors.console import (
    check_url_ids,
    client_ip,
    current_access,
    load_user,
    page_body,
    paginate,
)
from accounts.schemas import PageQuerySchema
from templates_msg import operations, reports, services
from templates_msg.models import Campaign
from templates_msg.schemas import (
    AudienceQuerySchema,
    AudienceSchema,
    CampaignCreateSchema,
    CampaignPageSchema,
    CampaignSchema,
    CampaignUpdateSchema,
    FullExportSchema,
    PreviewSchema,
    ReasonSchema,
    StatsSchema,
    SyncCountsSchema,
    TemplateSchema,
    _segment_out,
)
from wechat_service.extensions import ApiBlueprint as Blueprint
from wechat_service.extensions import db

blp = Blueprint(
    "campaigns_api", __name__, url_prefix="/api/v1", description="Template messages and campaigns"
)


@blp.before_request
def _authorise_first() -> None:
    if load_user() is None:
        raise Unauthorized("sign in to the console first")
    check_url_ids()
    args = request.view_args or {}
    if args.get("account_id") is not None:
        acl.account_for(current_access(), args["account_id"], acl.VIEW)
    if args.get("campaign_id") is not None:
        operations.campaign_for(current_access(), args["campaign_id"], acl.VIEW)


@blp.get("/accounts/<int:account_id>/templates")
@blp.response(200, TemplateSchema(many=True))
def template_list(account_id: int) -> ResponseReturnValue:
    return list(db.session.scalars(services.templates_query([account_id])))


@blp.post("/accounts/<int:account_id>/templates/sync")
@blp.response(200, SyncCountsSchema)
def template_sync(account_id: int) -> ResponseReturnValue:
    counts = operations.sync_templates(current_access(), account_id, client_ip())
    db.session.commit()
    return counts


@blp.post("/campaigns/audience")
@blp.arguments(AudienceQuerySchema)
@blp.response(200, AudienceSchema)
def audience(data: dict[str, Any]) -> ResponseReturnValue:
    access = current_access()
    for aid in data["account_ids"]:
        acl.account_for(access, aid, acl.CAMPAIGN_PREPARE)
    return services.audience(
        data["account_ids"], _segment_out(data["segment"]), data["sample_pct"], data["control_pct"]
    )


@blp.get("/campaigns")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, CampaignPageSchema)
def campaign_list(query: dict[str, Any]) -> ResponseReturnValue:
    page = paginate(
        services.campaigns_query(current_access().account_ids()), query["page"], query["per_page"]
    )
    return page_body(list(page.items), page)


@blp.post("/campaigns")
@blp.arguments(CampaignCreateSchema)
@blp.response(201, CampaignSchema)
def campaign_create(data: dict[str, Any]) -> Campaign:
    if "segment" in data:
        data["segment"] = _segment_out(data["segment"])
    campaign = operations.create(current_access(), data, client_ip())
    db.session.commit()
    return campaign


@blp.get("/campaigns/<int:campaign_id>")
@blp.response(200, CampaignSchema)
def campaign_get(campaign_id: int) -> Campaign:
    return services.campaign_by_id(campaign_id)


@blp.patch("/campaigns/<int:campaign_id>")
@blp.arguments(CampaignUpdateSchema)
@blp.response(200, CampaignSchema)
def campaign_update(data: dict[str, Any], campaign_id: int) -> Campaign:
    if "segment" in data:
        data["segment"] = _segment_out(data["segment"])
    campaign = operations.update(current_access(), campaign_id, data, client_ip())
    db.session.commit()
    return campaign


@blp.post("/campaigns/<int:campaign_id>/<any(submit, approve, reject, pause, resume, cancel):action>")
@blp.arguments(ReasonSchema)
@blp.response(200, CampaignSchema)
def campaign_action(data: dict[str, Any], campaign_id: int, action: str) -> Campaign:
    campaign = operations.act(current_access(), campaign_id, action, client_ip(), data.get("reason", ""))
    db.session.commit()
    return campaign


@blp.get("/campaigns/<int:campaign_id>/preview")
@blp.response(200, PreviewSchema)
def campaign_preview(campaign_id: int) -> ResponseReturnValue:
    campaign = services.campaign_by_id(campaign_id)
    first = services.campaign_accounts(campaign_id)[0]
    tpl = services.template_for(first.account_id, first.template_id)
    return {"text": services.preview(tpl.content, campaign.data or {})}


@blp.get("/campaigns/<int:campaign_id>/stats")
@blp.response(200, StatsSchema)
def campaign_stats(campaign_id: int) -> ResponseReturnValue:
    out = reports.stats(campaign_id)
    out["accounts"] = reports.per_account(campaign_id)
    return out


@blp.get("/campaigns/<int:campaign_id>/deliveries.csv")
@blp.response(200, {"type": "string"}, content_type="text/csv", description="every delivery as CSV")
def campaign_csv(campaign_id: int) -> ResponseReturnValue:
    """Openids masked as the console masks them, or left out for roles that may not see
    subscribers."""
    show = operations.export_openids(current_access(), campaign_id, "masked", "", client_ip())
    return deliveries_csv(campaign_id, show)


@blp.post("/campaigns/<int:campaign_id>/deliveries.csv")
@blp.arguments(FullExportSchema)
@blp.response(200, {"type": "string"}, content_type="text/csv", description="every delivery as CSV")
def campaign_csv_full(body: dict[str, Any], campaign_id: int) -> ResponseReturnValue:
    """Full openids: a POST (a link cannot trigger it), the reveal right on every account of the
    campaign, audited and committed before any row leaves."""
    show = operations.export_openids(current_access(), campaign_id, "full", body["reason"], client_ip())
    db.session.commit()
    return deliveries_csv(campaign_id, show)


def deliveries_csv(campaign_id: int, show: dict[int, str]) -> Response:
    """The deliveries CSV streamed with openids shown per account as ``show`` says."""
    return Response(
        stream_with_context(reports.export_csv(campaign_id, openids=show)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="campaign-{campaign_id}-deliveries.csv"'},
    )
