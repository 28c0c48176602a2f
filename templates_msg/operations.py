"""Console operations on campaigns: authorise on every account of the campaign, change, audit —
in one transaction (the pages and the JSON API both call these; callers commit)."""

from __future__ import annotations

from typing import Any

from accounts import access as acl
from accounts import staff
from accounts.access import Access
from accounts.models import Account
from accounts.services import org_unit_by_code, subtree_ids
from templates_msg import services
from templates_msg.models import Campaign
from templates_msg.schemas import CampaignSchema
from wechat_service.errors import NotFoundError
from wechat_service.extensions import db


def _authorise(access: Access, account_ids: list[int], permission: str) -> None:
    for aid in account_ids:
        acl.account_for(access, aid, permission)


def campaign_for(access: Access, campaign_id: int, permission: str = acl.VIEW) -> Campaign:
    """The campaign if the user may ``permission`` on every one of its accounts; a campaign
    touching an account they cannot see is a 404."""
    campaign = services.campaign_by_id(campaign_id)
    ids = services.account_ids_of(campaign.id)
    if not all(access.visible(a) for a in ids):
        raise NotFoundError("no such campaign")
    _authorise(access, ids, permission)
    return campaign


def _audit(access: Access, action: str, campaign: Campaign, ip: str, **extra: Any) -> None:
    ids = services.account_ids_of(campaign.id)
    staff.audit(
        access.user_id,
        action,
        account_id=ids[0] if ids else None,
        target=f"campaign {campaign.id} {campaign.name}"[:256],
        after={"state": campaign.state.value, "accounts": ids, **extra},
        ip=ip,
    )


def resolve_accounts(access: Access, account_ids: list[int] | None, org_unit: str | None) -> list[int]:
    if org_unit:
        import sqlalchemy as sa

        unit = org_unit_by_code(org_unit)
        units = subtree_ids(unit.id)
        found = list(
            db.session.scalars(
                sa.select(Account.id).where(Account.org_unit_id.in_(units)).order_by(Account.id)
            )
        )
        account_ids = [*(account_ids or []), *found]
    return list(dict.fromkeys(account_ids or []))


def create(access: Access, fields: dict[str, Any], ip: str) -> Campaign:
    account_ids = resolve_accounts(access, fields.pop("account_ids", None), fields.pop("org_unit", None))
    _authorise(access, account_ids, acl.CAMPAIGN_PREPARE)
    template_id = fields.pop("template_id")
    campaign = services.create_campaign(access.user_id, account_ids, template_id, fields)
    _audit(access, "campaign.create", campaign, ip, template=template_id)
    return campaign


def update(access: Access, campaign_id: int, fields: dict[str, Any], ip: str) -> Campaign:
    campaign_for(access, campaign_id, acl.CAMPAIGN_PREPARE)
    version = fields.pop("version", None)
    campaign, changes = services.update_campaign(campaign_id, fields, version, access.user_id)
    _audit(access, "campaign.update", campaign, ip, changed=sorted(changes), changes=changes)
    return campaign


ACTIONS = {
    "submit": acl.CAMPAIGN_PREPARE,
    "approve": acl.CAMPAIGN_APPROVE,
    "reject": acl.CAMPAIGN_APPROVE,
    "pause": acl.CAMPAIGN_PREPARE,
    "resume": acl.CAMPAIGN_APPROVE,  # resuming sends again: the approve right, like starting
    "cancel": acl.CAMPAIGN_PREPARE,
}


def act(access: Access, campaign_id: int, action: str, ip: str, reason: str = "") -> Campaign:
    if action not in ACTIONS:
        raise NotFoundError("no such action")
    campaign_for(access, campaign_id, ACTIONS[action])
    uid = access.user_id
    if action == "submit":
        campaign = services.submit(campaign_id, uid)
    elif action == "approve":
        campaign = services.approve(campaign_id, uid)
    elif action == "reject":
        campaign = services.reject(campaign_id, uid, reason)
    elif action == "pause":
        campaign = services.pause(campaign_id, uid, reason or "paused by staff")
    elif action == "resume":
        campaign = services.resume(campaign_id, uid)
    else:
        campaign = services.cancel(campaign_id, uid, reason or "cancelled by staff")
    _audit(access, f"campaign.{action}", campaign, ip, reason=reason or None)
    return campaign


def export_openids(access: Access, campaign_id: int, mode: str, reason: str, ip: str) -> dict[int, str]:
    """How the deliveries CSV shows openids, per account of the campaign: ``full`` only when
    asked for explicitly, by a role with the reveal right on every account, and audited (the
    entry commits before any row leaves); else ``masked`` where the role may see subscribers
    (as the subscriber pages show them) and ``none`` where it may not."""
    ids = services.account_ids_of(campaign_id)
    if mode == "full":
        campaign = campaign_for(access, campaign_id, acl.REVEAL)
        _audit(access, "campaign.export_openids", campaign, ip, reason=reason[:200])
        return dict.fromkeys(ids, "full")
    return {a: "masked" if access.can(acl.SUBSCRIBERS, a) else "none" for a in ids}


def sync_templates(access: Access, account_id: int, ip: str) -> dict[str, int]:
    account = acl.account_for(access, account_id, acl.CAMPAIGN_PREPARE)
    counts = services.sync_templates(account.id)
    staff.audit(
        access.user_id, "templates.sync", account_id=account.id, target="templates", after=counts, ip=ip
    )
    return counts


def dump(campaign: Campaign) -> dict[str, Any]:
    """The campaign as JSON-ready data, for answers built by hand (lists)."""

    return CampaignSchema().dump(campaign)
