"""RQ jobs of the account matrix: thin wrappers over services, ids in, one commit each."""

from __future__ import annotations

import logging

from accounts import sync
from accounts.services import active_token_accounts
from wechat_service.extensions import db
from wechat_service.gateway import token_manager

log = logging.getLogger(__name__)


def sync_followers(sync_id: int) -> dict[str, int | str | None]:
    done = sync.run_sync(sync_id)
    db.session.commit()
    return {"status": done.status, "synced": done.synced, "total": done.total} if done else {"status": None}


def refresh_tokens() -> int:
    """Cron: refresh access tokens before they expire, so no callback-time call waits on one."""
    tm = token_manager()
    n = 0
    for appid, secret in active_token_accounts():
        if tm.cached(appid) is None:
            try:
                tm.refresh(appid, secret)
                n += 1
            except Exception as exc:  # noqa: BLE001 - health records it; the next run retries
                log.warning("token refresh for %s failed: %s", appid, exc)
    return n
