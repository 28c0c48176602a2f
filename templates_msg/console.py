"""Console pages of campaigns: templates, the editor (live audience count, rendered preview), the
approval queue, live progress with pause/resume/cancel, results with charts (inline SVG).

Thin: parse → authorise/change/audit (operations) → commit → render."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from accounts import access as acl
from accounts.front_doors.console import (
    client_ip,
    console_blueprint,
    current_access,
    load_user,
    login_required,
    paginate,
)
from accounts.models import Account
from templates_msg import operations, reports, services
from templates_msg.api import deliveries_csv
from templates_msg.models import CampaignState
from templates_msg.schemas import CampaignCreateSchema, FullExportSchema, _segment_out
from wechat_service.errors import ServiceError
from wechat_service.extensions import db

bp = console_blueprint("campaigns_console", __name__)
# The pages' scripts are static files (templates_msg/static), never inline: CSP without 'unsafe-inline'.
bp.static_folder = "static"
bp.static_url_path = "/static/campaigns"


@bp.before_request
def _hide_other_campaigns() -> None:
    """A campaign of accounts the user cannot see is a 404 too (the factory checks account ids)."""
    campaign_id = (request.view_args or {}).get("campaign_id")
    if campaign_id is not None and load_user() is not None:
        operations.campaign_for(current_access(), campaign_id, acl.VIEW)


@bp.route("/accounts/<int:account_id>/templates", methods=["GET", "POST"])
@login_required
def template_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    if request.method == "POST":
        try:
            counts = operations.sync_templates(access, account.id, client_ip())
            db.session.commit()
            flash(
                f"Templates synced: {counts['added']} new, {counts['updated']} updated, "
                f"{counts['removed']} removed.",
                "success",
            )
        except ServiceError as exc:
            db.session.rollback()
            flash(exc.message, "error")
        return redirect(url_for(".template_list", account_id=account.id))
    templates = list(db.session.scalars(services.templates_query([account.id])))
    previews = {t.id: services.preview(t.content, {}) for t in templates}
    return render_template(
        "templates_msg/templates.html",
        account=account,
        templates=templates,
        previews=previews,
        can_sync=access.can(acl.CAMPAIGN_PREPARE, account.id),
    )


@bp.get("/campaigns")
@login_required
def campaign_list() -> ResponseReturnValue:
    access = current_access()
    state = request.args.get("state") or None
    page = paginate(services.campaigns_query(access.account_ids(), state))
    return render_template(
        "templates_msg/campaigns.html",
        page=page,
        campaigns=page.items,
        state=state,
        can_prepare=access.any(acl.CAMPAIGN_PREPARE),
    )


def _form_fields(form: Any) -> dict[str, Any]:
    """The editor's flat form → the API's shape (one validation path for both)."""
    data = {k[len("f_") :]: v for k, v in form.items() if k.startswith("f_") and v != ""}
    segment: dict[str, Any] = {}
    if form.get("tag_ids"):
        segment["tag_ids"] = [int(t) for t in form["tag_ids"].replace(" ", "").split(",") if t]
    if form.get("bound_phone") in ("yes", "no"):
        segment["bound_phone"] = form["bound_phone"] == "yes"
    for key in (
        "frequency_cap_days",
        "active_within_days",
        "inactive_for_days",
        "followed_after",
        "followed_before",
    ):
        if form.get(key):
            segment[key] = form[key]
    for key in ("channel_ids", "bought_product_ids", "not_bought_product_ids"):
        if form.get(key):
            segment[key] = [int(t) for t in form[key].replace(" ", "").split(",") if t]
    out: dict[str, Any] = {
        "name": form.get("name", ""),
        "account_ids": [int(a) for a in form.getlist("account_ids")],
        "template_id": form.get("template_id", ""),
        "data": data,
        "segment": segment,
        "dedup_unionid": form.get("dedup_unionid") == "1",
        "sample_pct": form.get("sample_pct") or 100,
        "control_pct": form.get("control_pct") or 0,
        "rate": form.get("rate") or 20,
    }
    if form.get("link_url"):
        out["link_url"] = form["link_url"]
    if form.get("quiet_start") and form.get("quiet_end"):
        out["quiet_start"], out["quiet_end"] = form["quiet_start"], form["quiet_end"]
    if form.get("scheduled_at"):
        out["scheduled_at"] = form["scheduled_at"]
    return out


@bp.route("/campaigns/new", methods=["GET", "POST"])
@login_required
def campaign_new() -> ResponseReturnValue:
    access = current_access()
    accounts = list(db.session.scalars(acl.scoped_accounts(access, acl.CAMPAIGN_PREPARE)))
    if not accounts:
        raise acl.ForbiddenError("your role does not allow preparing campaigns")
    errors: dict[str, Any] = {}
    if request.method == "POST":
        try:
            fields = CampaignCreateSchema().load(_form_fields(request.form))
            fields["segment"] = _segment_out(fields.get("segment") or {})
            campaign = operations.create(access, fields, client_ip())
            db.session.commit()
        except ValidationError as exc:
            db.session.rollback()
            errors = exc.messages if isinstance(exc.messages, dict) else {"_": exc.messages}
            flash("Please correct the marked fields.", "error")
        except ServiceError as exc:
            db.session.rollback()
            errors = exc.fields
            flash(exc.message, "error")
        else:
            flash(f"Draft {campaign.name} saved.", "success")
            return redirect(url_for(".campaign_detail", campaign_id=campaign.id))
    templates = list(db.session.scalars(services.templates_query([a.id for a in accounts])))
    return render_template(
        "templates_msg/editor.html",
        accounts=accounts,
        templates=templates,
        form=request.form,
        errors=errors,
        # Rendered with |tojson inside <script type="application/json">: template content comes
        # from WeChat and may hold "</script>"; tojson escapes <, >, & and ' so it stays data.
        templates_data={
            t.template_id: {"content": t.content, "fields": t.fields, "account_id": t.account_id}
            for t in templates
        },
        variables=services.VARIABLES,
    )


@bp.get("/campaigns/<int:campaign_id>")
@login_required
def campaign_detail(campaign_id: int) -> ResponseReturnValue:
    access = current_access()
    campaign = services.campaign_by_id(campaign_id)
    ids = services.account_ids_of(campaign_id)
    first = services.campaign_accounts(campaign_id)[0]
    try:
        text = services.preview(
            services.template_for(first.account_id, first.template_id).content, campaign.data or {}
        )
    except ServiceError:
        text = "(the template is gone from WeChat)"
    stats = reports.stats(campaign_id)
    names = dict(db.session.execute(sa.select(Account.id, Account.name).where(Account.id.in_(ids))).all())
    history = services.history(campaign_id)
    return render_template(
        "templates_msg/campaign.html",
        campaign=campaign,
        preview=text,
        stats=stats,
        names=names,
        per_account=reports.per_account(campaign_id),
        history=history,
        changes=_changes_text(history),
        can_prepare=all(access.can(acl.CAMPAIGN_PREPARE, a) for a in ids),
        can_approve=all(access.can(acl.CAMPAIGN_APPROVE, a) for a in ids),
        can_reveal=all(access.can(acl.REVEAL, a) for a in ids),
        barred=services.approval_barred(campaign, access.user_id),
        S=CampaignState,
    )


@bp.post("/campaigns/<int:campaign_id>/deliveries.csv")
@login_required
def campaign_csv_full(campaign_id: int) -> ResponseReturnValue:
    """The console's form for the full-openid export (CSRF-checked like every console form)."""
    try:
        body = FullExportSchema().load({"reason": request.form.get("reason", "")})
    except ValidationError as exc:
        flash("; ".join(f"{k}: {', '.join(v)}" for k, v in exc.normalized_messages().items()), "error")
        return redirect(url_for(".campaign_detail", campaign_id=campaign_id))
    show = operations.export_openids(current_access(), campaign_id, "full", body["reason"], client_ip())
    db.session.commit()
    return deliveries_csv(campaign_id, show)


def _changes_text(history: list[Any]) -> dict[int, list[tuple[str, str, str]]]:
    """Each edit's changed fields as (field, before, after) text (Jinja escapes it)."""

    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)

    return {
        e.id: [(name, text(old), text(new)) for name, (old, new) in sorted(e.changes.items())]
        for e in history
        if e.changes
    }


@bp.post("/campaigns/<int:campaign_id>/<any(submit, approve, reject, pause, resume, cancel):action>")
@login_required
def campaign_action(campaign_id: int, action: str) -> ResponseReturnValue:
    try:
        operations.act(current_access(), campaign_id, action, client_ip(), request.form.get("reason", ""))
        db.session.commit()
    except ServiceError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        flash(exc.message, "error")
    else:
        flash(f"Campaign {action} done.", "success")
    return redirect(url_for(".campaign_detail", campaign_id=campaign_id))
