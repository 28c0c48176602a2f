"""RQ jobs of the shell: thin wrappers over services, taking ids only."""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa

from wechat_service import callbacks
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db, get_queue
from wechat_service.models import CallbackInbox, InboxState

log = logging.getLogger(__name__)


def process_inbox(inbox_id: int) -> None:
    callbacks.run_deferred(inbox_id)


def requeue_stale_inbox(older_than_seconds: int = 120) -> int:
    """Cron: a queued inbox row whose job vanished (Redis lost), or a row claimed by a worker that
    died (still 'processing' ten minutes after its claim — not its receipt: a row received long
    ago may have been claimed just now, and its job is running), is queued again."""
    now = utcnow()
    db.session.execute(
        sa.update(CallbackInbox)
        .where(
            CallbackInbox.state == InboxState.processing,
            # Rows claimed before claimed_at existed fall back on their receipt time.
            sa.func.coalesce(CallbackInbox.claimed_at, CallbackInbox.received_at)
            < now - timedelta(minutes=10),
        )
        .values(state=InboxState.queued)
    )
    db.session.commit()
    ids = db.session.scalars(
        sa.select(CallbackInbox.id)
        .where(
            CallbackInbox.state == InboxState.queued,
            CallbackInbox.received_at < now - timedelta(seconds=older_than_seconds),
            CallbackInbox.attempts < callbacks.MAX_ATTEMPTS,
        )
        .limit(1000)
    ).all()
    queue = get_queue("high")
    for inbox_id in ids:
        queue.enqueue(process_inbox, inbox_id, job_id=f"inbox-{inbox_id}-{int(now.timestamp()) // 60}")
    return len(ids)
