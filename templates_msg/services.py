"""Templates (sync, fields, preview), campaigns (editing, the state machine) and segments.

Services take plain arguments and never read the request; callers commit.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa

from accounts import subscribers
from accounts.models import Account, Subscriber
from accounts.services import api_client
from store import orders
from store import services as store_services
from templates_msg.errors import TemplateMsgErrorCode
from templates_msg.models import (
    Campaign,
    CampaignAccount,
    CampaignEvent,
    CampaignState,
    Delivery,
    DeliveryStatus,
    MessageTemplate,
    OptOut,
    TemplateKind,
)
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml
from wechat_service.errors import ConflictError, ErrorCode, InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import after_commit, db, enqueue_after_commit, get_queue, get_redis

# -- templates -------------------------------------------------------------------------------------

_FIELD = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_]*)\.DATA\s*\}\}")

log = logging.getLogger(__name__)


def parse_fields(content: str) -> list[dict[str, str]]:
    """Fields of a template's content, in order, each with the label written before it on its line
    ("商品名称：{{thing1.DATA}}" → {name: thing1, label: 商品名称})."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for line in content.splitlines() or [content]:
        pos = 0
        for m in _FIELD.finditer(line):
            name = m.group(1)
            label = line[pos : m.start()].strip().rstrip(":：").strip()
            pos = m.end()
            if name not in seen:
                seen.add(name)
                out.append({"name": name, "label": label or name})
    return out


def sync_templates(account_id: int) -> dict[str, int]:
    """Fetch the account's private templates from WeChat; templates gone from WeChat are marked."""

    result = api_client(account_id).get("template/get_all_private_template")
    remote = {t["template_id"]: t for t in result.get("template_list") or []}
    existing = {
        t.template_id: t
        for t in db.session.scalars(
            sa.select(MessageTemplate).where(MessageTemplate.account_id == account_id)
        )
    }
    kind = _account_kind(account_id)
    counts = {"added": 0, "updated": 0, "removed": 0}
    now = utcnow()
    for tid, t in remote.items():
        row = existing.get(tid)
        if row is None:
            row = MessageTemplate(account_id=account_id, template_id=tid)
            db.session.add(row)
            counts["added"] += 1
        else:
            counts["updated"] += 1
        row.kind = kind
        row.title = str(t.get("title") or "")[:128]
        row.content = str(t.get("content") or "")
        row.example = str(t.get("example") or "")
        row.fields = parse_fields(row.content)
        row.removed = False
        row.synced_at = now
    for tid, row in existing.items():
        if tid not in remote and not row.removed:
            row.removed = True
            counts["removed"] += 1
    db.session.flush()
    return counts


def _account_kind(account_id: int) -> TemplateKind:
    kind = db.session.scalar(sa.select(Account.kind).where(Account.id == account_id))
    return TemplateKind.subscribe if kind and kind.value == "mini_program" else TemplateKind.official


def templates_query(account_ids: list[int] | None) -> sa.Select[Any]:
    query = sa.select(MessageTemplate).where(MessageTemplate.removed.is_(False))
    if account_ids is not None:
        query = query.where(MessageTemplate.account_id.in_(account_ids))
    return query.order_by(MessageTemplate.account_id, MessageTemplate.title)


def template_for(account_id: int, template_id: str) -> MessageTemplate:
    row = db.session.scalar(
        sa.select(MessageTemplate).where(
            MessageTemplate.account_id == account_id,
            MessageTemplate.template_id == template_id,
            MessageTemplate.removed.is_(False),
        )
    )
    if row is None:
        raise NotFoundError(f"no template {template_id} on account {account_id}; sync templates first")
    return row


# Per-recipient variables a field value may use, as {{name}}.
VARIABLES = ("openid", "account_name", "channel", "tags", "follow_date")
_VAR = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def render_value(text: str, variables: dict[str, str]) -> str:
    return _VAR.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def uses_variables(data: dict[str, Any]) -> bool:
    return any(_VAR.search(str(v)) for v in data.values())


def render_data(data: dict[str, Any], variables: dict[str, str]) -> dict[str, dict[str, str]]:
    """The template send's ``data``: {field: {"value": …}} with the variables filled in."""
    return {k: {"value": render_value(str(v), variables)} for k, v in data.items()}


SAMPLE_VARIABLES = {
    "openid": "oSAMPLE0000000000000000000",
    "account_name": "示例账号",
    "channel": "门店A",
    "tags": "VIP",
    "follow_date": "2026-01-01",
}


def preview(content: str, data: dict[str, Any], variables: dict[str, str] | None = None) -> str:
    """The template's text as a subscriber would read it, with sample data where nothing is given."""
    values = {k: render_value(str(v), variables or SAMPLE_VARIABLES) for k, v in data.items()}
    return _FIELD.sub(lambda m: values.get(m.group(1), f"[{m.group(1)}]"), content)


# -- campaigns: editing ----------------------------------------------------------------------------

EDITABLE = (
    "name",
    "data",
    "link_url",
    "mp_appid",
    "mp_page",
    "segment",
    "dedup_unionid",
    "sample_pct",
    "control_pct",
    "scheduled_at",
    "quiet_start",
    "quiet_end",
    "rate",
    "error_threshold",
    "attribution_days",
)


def create_campaign(
    actor_id: int | None, account_ids: list[int], template_id: str, fields: dict[str, Any]
) -> Campaign:
    """A draft for one or several accounts. ``template_id`` is the first account's; the others use
    their own template of the same title (templates are per account)."""
    if not account_ids:
        raise InvalidInputError("pick at least one account", fields={"account_ids": ["required"]})
    first = template_for(account_ids[0], template_id)
    campaign = Campaign(created_by=actor_id, kind=first.kind, template_title=first.title)
    _apply(campaign, fields, first)
    db.session.add(campaign)
    db.session.flush()
    for aid in dict.fromkeys(account_ids):
        tpl = first if aid == account_ids[0] else _same_title(aid, first)
        db.session.add(CampaignAccount(campaign_id=campaign.id, account_id=aid, template_id=tpl.template_id))
    _event(campaign.id, None, CampaignState.draft, actor_id, None)
    db.session.flush()
    return campaign


def _same_title(account_id: int, first: MessageTemplate) -> MessageTemplate:
    tpl = db.session.scalar(
        sa.select(MessageTemplate).where(
            MessageTemplate.account_id == account_id,
            MessageTemplate.title == first.title,
            MessageTemplate.removed.is_(False),
        )
    )
    if tpl is None:
        raise InvalidInputError(
            f"account {account_id} has no template titled {first.title!r}",
            fields={"account_ids": [f"account {account_id} lacks the template"]},
        )
    return tpl


def _apply(campaign: Campaign, fields: dict[str, Any], template: MessageTemplate | None) -> None:
    for key in EDITABLE:
        if key in fields:
            setattr(campaign, key, fields[key])
    if template is not None:
        names = {f["name"] for f in template.fields}
        unknown = sorted(set(campaign.data or {}) - names)
        if unknown:
            raise InvalidInputError(
                "the template has no such fields", fields={"data": [f"unknown field {n}" for n in unknown]}
            )
    if (campaign.quiet_start is None) != (campaign.quiet_end is None):
        raise InvalidInputError("quiet hours need a start and an end", fields={"quiet_end": ["required"]})
    if campaign.link_url and not str(campaign.link_url).startswith(("http://", "https://")):
        raise InvalidInputError("the link must be an http(s) URL", fields={"link_url": ["not a URL"]})


def _json_value(value: Any) -> Any:
    """A field's value as the edit history stores it (JSON: datetimes as ISO text)."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def update_campaign(
    campaign_id: int, fields: dict[str, Any], version: int | None = None, actor_id: int | None = None
) -> tuple[Campaign, dict[str, list[Any]]]:
    """Edit a draft. ``version`` is what the editor loaded: someone else's save since → 409.

    Every edit that changes something is an event in the campaign's history with its editor and
    each changed field, before → after: the four-eyes check reads it (see ``approval_barred``).
    Returns the campaign and those changes."""
    campaign = campaign_by_id(campaign_id)
    if version is not None and version != campaign.version:
        raise ConflictError("someone else changed this campaign; reload it")
    if campaign.state is not CampaignState.draft:
        raise ConflictError("only drafts can be edited")
    first = db.session.scalar(
        sa.select(CampaignAccount)
        .where(CampaignAccount.campaign_id == campaign.id)
        .order_by(CampaignAccount.id)
    )
    before = {k: _json_value(getattr(campaign, k)) for k in EDITABLE if k in fields}
    _apply(campaign, fields, template_for(first.account_id, first.template_id) if first else None)
    changes = {
        k: [old, new] for k, old in before.items() if (new := _json_value(getattr(campaign, k))) != old
    }
    if changes:
        _event(campaign.id, S.draft, S.draft, actor_id, "edited", changes=changes)
    db.session.flush()
    return campaign, changes


def campaign_by_id(campaign_id: int) -> Campaign:
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFoundError("no such campaign")
    return campaign


def campaign_accounts(campaign_id: int) -> list[CampaignAccount]:
    return list(
        db.session.scalars(
            sa.select(CampaignAccount)
            .where(CampaignAccount.campaign_id == campaign_id)
            .order_by(CampaignAccount.id)
        )
    )


def account_ids_of(campaign_id: int) -> list[int]:
    return [ca.account_id for ca in campaign_accounts(campaign_id)]


def campaigns_query(account_ids: list[int] | None, state: str | None = None) -> sa.Select[Any]:
    """Campaigns whose every account is in ``account_ids`` (None: all)."""
    query = sa.select(Campaign).order_by(Campaign.id.desc())
    if account_ids is not None:
        outside = sa.select(CampaignAccount.id).where(
            CampaignAccount.campaign_id == Campaign.id, CampaignAccount.account_id.not_in(account_ids or [-1])
        )
        query = query.where(~sa.exists(outside))
    if state:
        query = query.where(Campaign.state == state)
    return query


# -- the state machine -----------------------------------------------------------------------------

S = CampaignState
ALLOWED: dict[CampaignState, set[CampaignState]] = {
    S.draft: {S.pending_approval, S.cancelled},
    S.pending_approval: {S.scheduled, S.draft, S.cancelled},
    S.scheduled: {S.sending, S.cancelled, S.draft},
    S.sending: {S.paused, S.completed, S.cancelled, S.failed},
    S.paused: {S.sending, S.cancelled, S.failed},
}


class InvalidTransitionError(ServiceError):
    code = ErrorCode.invalid_transition
    status = 409


def transition(
    campaign_id: int,
    source: CampaignState,
    target: CampaignState,
    actor_id: int | None = None,
    reason: str | None = None,
    **values: Any,
) -> bool:
    """Move the campaign from ``source`` to ``target`` with a conditional UPDATE and record the
    event; False if it was no longer in ``source``. A move the machine does not allow raises."""
    if target not in ALLOWED.get(source, set()):
        raise InvalidTransitionError(f"{source.value} → {target.value} is not allowed")
    moved = execute_dml(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.state == source)
        .values(state=target, state_reason=reason, version=Campaign.version + 1, **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved == 1:
        _event(campaign_id, source, target, actor_id, reason)
        _signal(campaign_id, target)
    return moved == 1


def _event(
    campaign_id: int,
    source: CampaignState | None,
    target: CampaignState,
    actor: int | None,
    reason: str | None,
    changes: dict[str, Any] | None = None,
) -> None:
    event = CampaignEvent(
        campaign_id=campaign_id,
        from_state=source.value if source else None,
        to_state=target.value,
        actor_id=actor,
        reason=reason,
        at=utcnow(),
    )
    if changes:  # else SQL NULL (assigning None to a JSON column would store JSON null)
        event.changes = changes
    db.session.add(event)


def _signal(campaign_id: int, target: CampaignState) -> None:
    """After commit, tell running send jobs at once (they check this Redis flag per message; the
    database state, read at every chunk, stays the truth when Redis forgets)."""
    signal_after_commit(campaign_id, target.value)


def submit(campaign_id: int, actor_id: int) -> Campaign:
    campaign = campaign_by_id(campaign_id)
    if not campaign.data:
        raise InvalidInputError("fill in the template's fields first", fields={"data": ["required"]})
    if not transition(campaign_id, S.draft, S.pending_approval, actor_id, submitted_by=actor_id):
        raise InvalidTransitionError(f"the campaign is {campaign.state.value}, not a draft")
    return _reloaded(campaign)


def editors_since_approval(campaign_id: int) -> set[int]:
    """Everyone who changed the campaign's content since it was last approved (or, never
    approved, since it was drafted)."""
    approved = (
        sa.select(sa.func.max(CampaignEvent.id))
        .where(
            CampaignEvent.campaign_id == campaign_id,
            CampaignEvent.from_state == S.pending_approval.value,
            CampaignEvent.to_state == S.scheduled.value,
        )
        .scalar_subquery()
    )
    return set(
        db.session.scalars(
            sa.select(CampaignEvent.actor_id).where(
                CampaignEvent.campaign_id == campaign_id,
                CampaignEvent.changes.is_not(None),
                CampaignEvent.actor_id.is_not(None),
                CampaignEvent.id > sa.func.coalesce(approved, 0),
            )
        )
    )


def approval_barred(campaign: Campaign, actor_id: int) -> str | None:
    """Why ``actor_id`` may not approve this version (None: they may). Four eyes: whoever
    drafted, submitted or edited what is to be approved is one pair of them."""
    if actor_id in (campaign.created_by, campaign.submitted_by):
        return "the approver must be someone other than who prepared it"
    if actor_id in editors_since_approval(campaign.id):
        return "you edited this version: someone else must approve it"
    return None


def approve(campaign_id: int, actor_id: int) -> Campaign:
    """A different user than anyone who prepared it; the right is checked by the caller (access)."""
    campaign = campaign_by_id(campaign_id)
    barred = approval_barred(campaign, actor_id)
    if barred:
        raise ServiceError(barred, code=TemplateMsgErrorCode.four_eyes, status=403)
    if not transition(campaign_id, S.pending_approval, S.scheduled, actor_id, approved_by=actor_id):
        raise InvalidTransitionError(f"the campaign is {campaign.state.value}, not pending approval")

    campaign = _reloaded(campaign)
    if campaign.scheduled_at is None or campaign.scheduled_at <= utcnow():
        enqueue_after_commit("default", "templates_msg.jobs.start_campaign", campaign_id)
    else:
        # RQ's scheduler (in every worker) starts it on time; the cron tick is the safety net.
        start_after_commit(campaign_id, campaign.scheduled_at)
    return campaign


def reject(campaign_id: int, actor_id: int, reason: str) -> Campaign:
    if not transition(campaign_id, S.pending_approval, S.draft, actor_id, reason or "sent back"):
        raise InvalidTransitionError("the campaign is not pending approval")
    return _reloaded(campaign_by_id(campaign_id))


def pause(campaign_id: int, actor_id: int | None, reason: str = "paused by staff") -> Campaign:
    if not transition(campaign_id, S.sending, S.paused, actor_id, reason):
        raise InvalidTransitionError("only a sending campaign can be paused")
    return _reloaded(campaign_by_id(campaign_id))


def resume(campaign_id: int, actor_id: int | None) -> Campaign:
    if not transition(campaign_id, S.paused, S.sending, actor_id, "resumed"):
        raise InvalidTransitionError("only a paused campaign can be resumed")

    enqueue_after_commit("default", "templates_msg.jobs.kick_campaign", campaign_id)
    return _reloaded(campaign_by_id(campaign_id))


def cancel(campaign_id: int, actor_id: int | None, reason: str = "cancelled by staff") -> Campaign:
    campaign = campaign_by_id(campaign_id)
    if campaign.state not in ALLOWED or S.cancelled not in ALLOWED[campaign.state]:
        raise InvalidTransitionError(f"a {campaign.state.value} campaign cannot be cancelled")
    if not transition(campaign_id, campaign.state, S.cancelled, actor_id, reason, finished_at=utcnow()):
        raise InvalidTransitionError("the campaign changed meanwhile; reload it")
    return _reloaded(campaign)


def _reloaded(campaign: Campaign) -> Campaign:
    db.session.refresh(campaign)
    return campaign


def history(campaign_id: int) -> list[CampaignEvent]:
    return list(
        db.session.scalars(
            sa.select(CampaignEvent)
            .where(CampaignEvent.campaign_id == campaign_id)
            .order_by(CampaignEvent.id)
        )
    )


# -- segments --------------------------------------------------------------------------------------

SEGMENT_KEYS = {
    "tag_ids",  # any of these tags
    "followed_after",  # ISO dates, first follow
    "followed_before",
    "active_within_days",  # last interaction within N days
    "inactive_for_days",  # no interaction for N days
    "channel_ids",  # followed through one of these channel QR codes
    "bound_phone",  # true / false
    "bought_product_ids",  # bought one of these (paid orders)
    "not_bought_product_ids",
    "bought_within_days",  # window for the two above (default 90)
    "frequency_cap_days",  # skip who got any campaign message in the last N days
}


def segment_query(account_id: int, segment: dict[str, Any], exclude_campaign: int | None = None) -> sa.Select:
    """Following subscribers of the account matching the segment, minus the suppression list.
    Columns: id, openid, person_id. Keyset-paginate it by id."""
    s = Subscriber
    query = sa.select(s.id, s.openid, s.person_id).where(s.account_id == account_id, s.following.is_(True))
    tag_ids = [int(t) for t in segment.get("tag_ids") or []]
    if tag_ids:
        query = query.where(subscribers.tagged(s.id, tag_ids))
    if segment.get("followed_after"):
        query = query.where(s.first_followed_at >= _date(segment["followed_after"]))
    if segment.get("followed_before"):
        query = query.where(s.first_followed_at < _date(segment["followed_before"]))
    now = utcnow()
    if segment.get("active_within_days"):
        query = query.where(s.last_interaction_at >= now - timedelta(days=int(segment["active_within_days"])))
    if segment.get("inactive_for_days"):
        cutoff = now - timedelta(days=int(segment["inactive_for_days"]))
        query = query.where(sa.or_(s.last_interaction_at.is_(None), s.last_interaction_at < cutoff))
    if segment.get("channel_ids"):
        query = query.where(s.channel_id.in_([int(c) for c in segment["channel_ids"]]))
    if segment.get("bound_phone") is not None:
        # The store's selectable: a segment is one query, and one EXISTS beats fetching every
        # bound id through a service.
        bound = store_services.phone_bound(s.id)
        query = query.where(bound if segment["bound_phone"] else ~bound)
    within = now - timedelta(days=int(segment.get("bought_within_days") or 90))
    if segment.get("bought_product_ids"):
        query = query.where(orders.bought(s.id, [int(p) for p in segment["bought_product_ids"]], within))
    if segment.get("not_bought_product_ids"):
        query = query.where(~orders.bought(s.id, [int(p) for p in segment["not_bought_product_ids"]], within))
    if segment.get("frequency_cap_days"):
        since = now - timedelta(days=int(segment["frequency_cap_days"]))
        recent = sa.exists().where(
            Delivery.subscriber_id == s.id,
            Delivery.kind == "campaign",
            Delivery.sent_at >= since,
            Delivery.status == DeliveryStatus.sent,
        )
        if exclude_campaign is not None:
            recent = recent.where(Delivery.campaign_id != exclude_campaign)
        query = query.where(~recent)
    opted_out = sa.exists().where(OptOut.account_id == account_id, OptOut.openid == s.openid)
    return query.where(~opted_out)


def _date(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInputError("dates are YYYY-MM-DD", fields={"segment": [f"bad date {value!r}"]}) from None


def check_segment(segment: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(segment) - SEGMENT_KEYS)
    if unknown:
        raise InvalidInputError("unknown segment keys", fields={"segment": unknown})
    return segment


def bucket(campaign_id: int, openid: str) -> int:
    """A stable 0..9999 per (campaign, recipient): the sample and the control group are the same
    whoever plans, however often."""
    digest = hashlib.blake2b(f"{campaign_id}:{openid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000


def audience(
    account_ids: list[int], segment: dict[str, Any], sample_pct: int = 100, control_pct: int = 0
) -> dict[str, int]:
    """The audience size the editor shows: matching subscribers, the sample, the held-out group."""
    check_segment(segment)
    total = 0
    for aid in account_ids:
        q = segment_query(aid, segment)
        total += db.session.scalar(sa.select(sa.func.count()).select_from(q.subquery())) or 0
    sampled = total * sample_pct // 100
    control = sampled * control_pct // 100
    return {"matching": total, "sampled": sampled, "control": control, "recipients": sampled - control}


# -- signals to running jobs, and scheduled starts, after commit ------------------------------------

HALT = "tm:halt:{}"


def signal_after_commit(campaign_id: int, state: str) -> None:
    """Tell running send jobs of the campaign's new state once it commits (the last state of the
    transaction wins); nothing is told if the transaction rolls back."""
    after_commit(lambda: _signal_jobs(campaign_id, state), key=("campaign_signal", campaign_id))


def start_after_commit(campaign_id: int, at: datetime) -> None:
    """Have RQ's scheduler start the campaign at ``at``, once the approval commits."""
    after_commit(lambda: _schedule_start(campaign_id, at))


def _signal_jobs(campaign_id: int, state: str) -> None:
    try:
        conn = get_redis()
        if state in ("paused", "cancelled", "failed", "completed"):
            conn.set(HALT.format(campaign_id), state, ex=7 * 86400)
        else:
            conn.delete(HALT.format(campaign_id))
    except redis.RedisError:
        log.warning("redis unavailable: running jobs see the change at their next chunk")


def _schedule_start(campaign_id: int, at: datetime) -> None:
    try:
        get_queue("default").enqueue_at(at, "templates_msg.jobs.start_campaign", campaign_id)
    except redis.RedisError:
        log.warning("redis unavailable: the cron tick starts campaign %s when due", campaign_id)
