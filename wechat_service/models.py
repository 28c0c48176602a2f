"""Tables of the shell: the callback inbox and mini-program sessions."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wechat_service.dbtypes import EncryptedText, UTCDateTime, utcnow
from wechat_service.extensions import Model

# Ledger-sized primary keys: BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER autoincrements).
BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def str_enum(enum_cls: type[enum.Enum], length: int = 32) -> sa.Enum:
    """Enums stored as checked VARCHARs: portable, and a new member is a one-line migration."""
    return sa.Enum(
        enum_cls,
        native_enum=False,
        length=length,
        create_constraint=True,
        validate_strings=True,
        values_callable=lambda e: [m.value for m in e],
        name=enum_cls.__name__.lower(),
    )


class InboxState(enum.StrEnum):
    processed = "processed"  # handled inline, in the request's own transaction
    queued = "queued"  # a job will handle it
    processing = "processing"  # a worker has claimed it
    stored = "stored"  # no handler yet: kept for later handlers
    failed = "failed"


class CallbackInbox(Model):
    """Every accepted callback, once: the unique (account, dedup key) is the real dedup guard."""

    __tablename__ = "callback_inbox"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "dedup_key"),
        sa.Index("ix_callback_inbox_state_received", "state", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    dedup_key: Mapped[str] = mapped_column(sa.String(256))
    msg_type: Mapped[str] = mapped_column(sa.String(32))
    event: Mapped[str | None] = mapped_column(sa.String(64))
    openid: Mapped[str | None] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_time: Mapped[int | None] = mapped_column(sa.BigInteger)  # WeChat's CreateTime
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[InboxState] = mapped_column(str_enum(InboxState, 16))
    reply: Mapped[str | None] = mapped_column(sa.Text)  # plaintext reply XML; a retry gets the same
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a worker last claimed it: a 'processing' row is given up on by this, not by receipt.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MpSession(Model):
    """A mini-program login; the session key never leaves the server."""

    __tablename__ = "mp_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    session_key: Mapped[str] = mapped_column(EncryptedText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(default=False)
