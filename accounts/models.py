"""Account matrix tables. Every tenant row carries ``account_id``."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from wechat_service.dbtypes import EncryptedText, UTCDateTime, utcnow
from wechat_service.extensions import Model
from wechat_service.models import BigId, str_enum


class OrgKind(enum.StrEnum):
    group = "group"
    province = "province"
    city = "city"
    other = "other"


class AccountKind(enum.StrEnum):
    service = "service"
    subscription = "subscription"
    mini_program = "mini_program"


class MessageMode(enum.StrEnum):
    plain = "plain"
    compatible = "compatible"
    safe = "safe"


class AccountStatus(enum.StrEnum):
    active = "active"
    disabled = "disabled"


class OrgUnit(Model):
    __tablename__ = "org_units"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[OrgKind] = mapped_column(str_enum(OrgKind, 16))
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("org_units.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    parent: Mapped[OrgUnit | None] = relationship(remote_side=[id])


class Account(Model):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[AccountKind] = mapped_column(str_enum(AccountKind, 16))
    appid: Mapped[str] = mapped_column(sa.String(32), unique=True)
    original_id: Mapped[str | None] = mapped_column(sa.String(32))
    app_secret: Mapped[str] = mapped_column(EncryptedText)
    token: Mapped[str | None] = mapped_column(EncryptedText)
    aes_key: Mapped[str | None] = mapped_column(EncryptedText)
    previous_aes_key: Mapped[str | None] = mapped_column(EncryptedText)
    aes_key_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message_mode: Mapped[MessageMode] = mapped_column(str_enum(MessageMode, 16), default=MessageMode.plain)
    status: Mapped[AccountStatus] = mapped_column(str_enum(AccountStatus, 16), default=AccountStatus.active)
    timezone: Mapped[str] = mapped_column(sa.String(64), default="Asia/Shanghai")
    org_unit_id: Mapped[int | None] = mapped_column(sa.ForeignKey("org_units.id"), index=True)
    # Bumped by every change that a callback's in-process caches depend on (keys, rules, menu).
    config_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    org_unit: Mapped[OrgUnit | None] = relationship()


class Person(Model):
    """One human across the matrix, linked by WeChat's unionid."""

    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    unionid: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Subscriber(Model):
    __tablename__ = "subscribers"
    __table_args__ = (sa.UniqueConstraint("account_id", "openid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    openid: Mapped[str] = mapped_column(sa.String(64))
    unionid: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    person_id: Mapped[int | None] = mapped_column(sa.ForeignKey("persons.id"), index=True)
    following: Mapped[bool] = mapped_column(default=False)
    first_followed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_followed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_unfollowed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    subscribe_scene: Mapped[str | None] = mapped_column(sa.String(64))
    qr_scene: Mapped[str | None] = mapped_column(sa.String(64))
    channel_id: Mapped[int | None] = mapped_column(sa.ForeignKey("channel_qrcodes.id"), index=True)
    last_interaction_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Tag(Model):
    __tablename__ = "tags"
    __table_args__ = (sa.UniqueConstraint("account_id", "wechat_tag_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    wechat_tag_id: Mapped[int]
    name: Mapped[str] = mapped_column(sa.String(64))


class SubscriberTag(Model):
    __tablename__ = "subscriber_tags"

    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(
        sa.ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class EventKind(enum.StrEnum):
    follow = "follow"
    unfollow = "unfollow"
    scan = "scan"
    click = "click"
    view = "view"
    message = "message"
    location = "location"


class SubscriberEvent(Model):
    """The append-only subscriber ledger: rows are inserted, never updated or deleted."""

    __tablename__ = "subscriber_events"
    __table_args__ = (
        sa.Index("ix_subscriber_events_account_occurred", "account_id", "occurred_at"),
        # A subscriber's own history (is this follow a re-follow; which later follows a late one
        # changes): metrics read it by subscriber.
        sa.Index("ix_subscriber_events_subscriber_occurred", "subscriber_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    # One ledger entry per accepted callback, whatever WeChat re-sends.
    inbox_id: Mapped[int | None] = mapped_column(sa.ForeignKey("callback_inbox.id"), unique=True)
    kind: Mapped[EventKind] = mapped_column(str_enum(EventKind, 16))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)  # WeChat's CreateTime
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    channel_id: Mapped[int | None] = mapped_column(sa.ForeignKey("channel_qrcodes.id"), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)


class ChannelQRCode(Model):
    """A parametric QR code for a channel (a store, a staff member); follows through it are attributed."""

    __tablename__ = "channel_qrcodes"
    __table_args__ = (sa.UniqueConstraint("account_id", "scene"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    channel_type: Mapped[str] = mapped_column(sa.String(32), default="other")  # store, staff, event, other
    scene: Mapped[str] = mapped_column(sa.String(64))
    permanent: Mapped[bool] = mapped_column(default=False)
    expire_seconds: Mapped[int | None]
    ticket: Mapped[str | None] = mapped_column(sa.String(256))
    url: Mapped[str | None] = mapped_column(sa.String(512))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RuleKind(enum.StrEnum):
    keyword = "keyword"
    welcome = "welcome"
    default = "default"


class MatchMode(enum.StrEnum):
    exact = "exact"
    contains = "contains"
    regex = "regex"


class ReplyType(enum.StrEnum):
    text = "text"
    news = "news"
    image = "image"


class ReplyRule(Model):
    __tablename__ = "reply_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[RuleKind] = mapped_column(str_enum(RuleKind, 16), default=RuleKind.keyword)
    keywords: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    match_mode: Mapped[MatchMode] = mapped_column(str_enum(MatchMode, 16), default=MatchMode.exact)
    priority: Mapped[int] = mapped_column(default=0)
    active_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    active_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reply_type: Mapped[ReplyType] = mapped_column(str_enum(ReplyType, 16), default=ReplyType.text)
    # text: {"content"}; image: {"media_id"}; news: {"articles": [{title, description, url, image}]}
    reply: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Menu(Model):
    """The account's menu tree as validated, and what was last published to WeChat."""

    __tablename__ = "menus"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), unique=True)
    tree: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    published_tree: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FollowerSync(Model):
    """Progress of a follower backfill, committed page by page so a restart resumes."""

    __tablename__ = "follower_syncs"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="running")  # running, done, failed
    cursor: Mapped[str | None] = mapped_column(sa.String(64))  # next_openid of the next page
    total: Mapped[int | None]
    synced: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- operator staff, roles and the audit trail -------------------------------------------------


class Role(enum.StrEnum):
    account_manager = "account_manager"  # settings, menus, replies, QR codes of granted accounts
    marketer = "marketer"  # prepares campaigns; sending needs the approve right
    analyst = "analyst"  # read-only metrics
    support = "support"  # subscriber and order look-up, personal data masked, audited reveal


class StaffUser(Model):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(128), default="")
    password_hash: Mapped[str] = mapped_column(sa.String(256))
    is_admin: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    totp_secret: Mapped[str | None] = mapped_column(EncryptedText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Sessions carry the generation they were signed in under; bumping it (logout, password
    # change, "sign out everywhere") ends every session issued before, whatever cookies survive.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    # The last TOTP time step accepted (unix time // 30): a code is good once, never replayed.
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    # How pages speak to them: a language (zh_CN, en; None: as the browser asks, else Chinese) and
    # the timezone times are shown in (None: Asia/Shanghai).
    locale: Mapped[str | None] = mapped_column(sa.String(8))
    timezone: Mapped[str | None] = mapped_column(sa.String(64))


class Grant(Model):
    """A role on one account, or on an org unit and so on every account under it."""

    __tablename__ = "grants"
    __table_args__ = (sa.CheckConstraint("(account_id IS NULL) <> (org_unit_id IS NULL)", name="one_scope"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(str_enum(Role, 32))
    account_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    org_unit_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("org_units.id", ondelete="CASCADE"), index=True
    )
    can_approve: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditLog(Model):
    """Every console write and every reveal of personal data; written in the change's transaction."""

    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_account_at", "account_id", "at"),
        sa.Index("ix_audit_log_user_at", "user_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    target: Mapped[str] = mapped_column(sa.String(256), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    ip: Mapped[str | None] = mapped_column(sa.String(64))
