"""Tables of the campaign engine. Deliveries are the source of truth for what was sent."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wechat_service.dbtypes import UTCDateTime, utcnow
from wechat_service.extensions import Model
from wechat_service.i18n import TitledEnum, _
from wechat_service.models import BigId, str_enum


class TemplateKind(enum.StrEnum):
    official = "official"  # official-account template message
    subscribe = "subscribe"  # mini-program subscribe message (one-time authorisations)


class MessageTemplate(Model):
    """A private template of an account, as last synced from WeChat."""

    __tablename__ = "message_templates"
    __table_args__ = (sa.UniqueConstraint("account_id", "template_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    template_id: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[TemplateKind] = mapped_column(str_enum(TemplateKind, 16), default=TemplateKind.official)
    title: Mapped[str] = mapped_column(sa.String(128), default="")
    content: Mapped[str] = mapped_column(sa.Text, default="")
    example: Mapped[str] = mapped_column(sa.Text, default="")
    fields: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)  # [{name, label}]
    removed: Mapped[bool] = mapped_column(default=False)  # gone from WeChat at the last sync
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CampaignState(TitledEnum):
    draft = "draft"
    pending_approval = "pending_approval"
    scheduled = "scheduled"
    sending = "sending"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"
    failed = "failed"

    __titles__ = {
        "draft": _("Draft"),
        "pending_approval": _("Awaiting approval"),
        "scheduled": _("Scheduled"),
        "sending": _("Sending"),
        "paused": _("Paused"),
        "completed": _("Completed"),
        "cancelled": _("Cancelled"),
        "failed": _("Failed"),
    }


class Campaign(Model):
    __tablename__ = "campaigns"
    __table_args__ = (
        sa.CheckConstraint("rate >= 0", name="rate_non_negative"),
        sa.CheckConstraint("sample_pct > 0 AND sample_pct <= 100", name="sample_pct_range"),
        sa.CheckConstraint("control_pct >= 0 AND control_pct < 100", name="control_pct_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[TemplateKind] = mapped_column(str_enum(TemplateKind, 16), default=TemplateKind.official)
    state: Mapped[CampaignState] = mapped_column(
        str_enum(CampaignState, 24), default=CampaignState.draft, index=True
    )
    state_reason: Mapped[str | None] = mapped_column(sa.Text)
    template_title: Mapped[str] = mapped_column(sa.String(128), default="")
    # Field values; "{{nickname}}"-style variables are filled per recipient (services.VARIABLES).
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    link_url: Mapped[str | None] = mapped_column(sa.String(1024))  # H5 target, through /t/<token>
    mp_appid: Mapped[str | None] = mapped_column(sa.String(32))
    mp_page: Mapped[str | None] = mapped_column(sa.String(512))
    segment: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    dedup_unionid: Mapped[bool] = mapped_column(default=False)
    sample_pct: Mapped[int] = mapped_column(default=100)
    control_pct: Mapped[int] = mapped_column(default=0)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: as soon as approved
    quiet_start: Mapped[int | None]  # local hour the night begins (e.g. 21), account's timezone
    quiet_end: Mapped[int | None]  # local hour it ends (e.g. 8)
    rate: Mapped[int] = mapped_column(default=20)  # messages/s per account; 0 = unthrottled
    error_threshold: Mapped[float] = mapped_column(default=0.2)  # failure share that pauses
    attribution_days: Mapped[int] = mapped_column(default=7)
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    submitted_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    approved_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    planned: Mapped[bool] = mapped_column(default=False)  # every account's recipients materialised
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}


class CampaignAccount(Model):
    """One account of a campaign: its template id, planning cursor, and pause (quota, quiet hours)."""

    __tablename__ = "campaign_accounts"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "account_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    template_id: Mapped[str] = mapped_column(sa.String(128))
    plan_cursor: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # last subscriber id planned
    next_batch: Mapped[int] = mapped_column(default=0)
    planned: Mapped[bool] = mapped_column(default=False)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pause_reason: Mapped[str | None] = mapped_column(sa.String(128))


class CampaignEvent(Model):
    """Every state change of a campaign, with who (None: the engine) and why; and every edit of a
    draft (from_state = to_state = draft) with the fields it changed, before → after."""

    __tablename__ = "campaign_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(sa.String(24))
    to_state: Mapped[str] = mapped_column(sa.String(24))
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    # An edit: {field: [before, after]} (JSON values); None for a state change.
    changes: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    sending = "sending"  # claimed by a send job; resolved from Redis marks if the job died
    sent = "sent"
    failed = "failed"
    skipped = "skipped"
    unknown = "unknown"  # may have reached WeChat: never sent again automatically


class ReportStatus(enum.StrEnum):
    delivered = "delivered"
    user_block = "user_block"
    system_failed = "system_failed"
    other = "other"


class Delivery(Model):
    """One message to one openid: a campaign's recipient, or a transactional message."""

    __tablename__ = "deliveries"
    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "account_id", "openid"),
        sa.Index("ix_deliveries_account_msgid", "account_id", "msgid"),
        sa.Index("ix_deliveries_campaign_batch", "campaign_id", "account_id", "batch_no", "status"),
        sa.Index("ix_deliveries_campaign_person", "campaign_id", "person_id"),
        sa.Index("ix_deliveries_subscriber_sent", "subscriber_id", "sent_at"),
        sa.Index("ix_deliveries_account_sent", "account_id", "sent_at"),
        sa.Index("ix_deliveries_campaign_status", "campaign_id", "status"),
        sa.Index("ix_deliveries_change_seq", "change_seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int | None] = mapped_column(sa.ForeignKey("subscribers.id", ondelete="SET NULL"))
    person_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    openid: Mapped[str] = mapped_column(sa.String(64))
    batch_no: Mapped[int] = mapped_column(default=0)
    control: Mapped[bool] = mapped_column(default=False)  # held out to measure uplift: never sent
    status: Mapped[DeliveryStatus] = mapped_column(
        str_enum(DeliveryStatus, 16), default=DeliveryStatus.pending
    )
    claim: Mapped[str | None] = mapped_column(sa.String(80))  # "<redis run_id>:<uuid>" of the send job
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    msgid: Mapped[int | None] = mapped_column(sa.BigInteger)
    errcode: Mapped[int | None]
    reason: Mapped[str | None] = mapped_column(sa.String(256))
    attempts: Mapped[int] = mapped_column(default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    report: Mapped[ReportStatus | None] = mapped_column(str_enum(ReportStatus, 16))
    report_raw: Mapped[str | None] = mapped_column(sa.String(128))
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    clicks: Mapped[int] = mapped_column(default=0)
    first_clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Transactional messages: what to send, and the key that makes them once-only.
    kind: Mapped[str] = mapped_column(sa.String(24), default="campaign")
    idem_key: Mapped[str | None] = mapped_column(sa.String(128), unique=True)
    payload: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Stamped by the database on every insert and update (triggers below), whoever writes the row:
    # the metrics refresh reads changed rows by this sequence, which a late run cannot skip.
    change_seq: Mapped[int | None] = mapped_column(
        sa.BigInteger, server_default=sa.FetchedValue(), server_onupdate=sa.FetchedValue()
    )
    changed_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, server_default=sa.FetchedValue(), server_onupdate=sa.FetchedValue()
    )


# PostgreSQL: a sequence drawn in a BEFORE trigger. SQLite has no sequences, but it has one writer
# at a time, so max + 1 (indexed) read inside the writing transaction is as monotonic. The same
# statements are in the migration that added the columns.
_STAMP_SQLITE = (
    "UPDATE deliveries SET change_seq = (SELECT coalesce(max(change_seq), 0) + 1 FROM deliveries), "
    "changed_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f000', 'now') WHERE id = NEW.id;"
)
DELIVERY_CHANGE_DDL = {
    "postgresql": (
        "CREATE SEQUENCE IF NOT EXISTS deliveries_change_seq OWNED BY deliveries.change_seq",
        "CREATE OR REPLACE FUNCTION deliveries_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.change_seq := nextval('deliveries_change_seq'); NEW.changed_at := clock_timestamp(); "
        "RETURN NEW; END $$",
        "CREATE TRIGGER deliveries_stamp_change BEFORE INSERT OR UPDATE ON deliveries "
        "FOR EACH ROW EXECUTE FUNCTION deliveries_stamp_change()",
    ),
    "sqlite": (
        f"CREATE TRIGGER deliveries_stamp_insert AFTER INSERT ON deliveries BEGIN {_STAMP_SQLITE} END",
        "CREATE TRIGGER deliveries_stamp_update AFTER UPDATE ON deliveries "
        f"WHEN NEW.change_seq IS OLD.change_seq BEGIN {_STAMP_SQLITE} END",
    ),
}
for _dialect, _statements in DELIVERY_CHANGE_DDL.items():
    for _statement in _statements:
        sa.event.listen(Delivery.__table__, "after_create", sa.DDL(_statement).execute_if(dialect=_dialect))


class EarlyReport(Model):
    """A delivery report that arrived before its send result was committed; applied later."""

    __tablename__ = "early_reports"

    account_id: Mapped[int] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    msgid: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    raw: Mapped[str] = mapped_column(sa.String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OptOut(Model):
    """Suppression list: opted out, refused (43101), not following (43004), bad openid (40003)."""

    __tablename__ = "campaign_opt_outs"
    __table_args__ = (sa.UniqueConstraint("account_id", "openid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    openid: Mapped[str] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.String(64), default="opt_out")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SubscribeAuthorization(Model):
    """A mini-program user's one-time authorisations per template (each accept adds one)."""

    __tablename__ = "subscribe_authorizations"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "openid", "template_id"),
        sa.CheckConstraint("remaining >= 0", name="remaining_non_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    openid: Mapped[str] = mapped_column(sa.String(64))
    template_id: Mapped[str] = mapped_column(sa.String(128))
    remaining: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TransactionalTemplate(Model):
    """Which template an account uses for a transactional notice (order_paid, order_fulfilled, …)."""

    __tablename__ = "transactional_templates"
    __table_args__ = (sa.UniqueConstraint("account_id", "notice"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    notice: Mapped[str] = mapped_column(sa.String(32))
    template_id: Mapped[str] = mapped_column(sa.String(128))
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)  # field → text with {variables}
