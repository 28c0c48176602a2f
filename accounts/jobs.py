"""RQ jobs of the account matrix: thin wrappers over services, ids in, one commit each."""

from __future__ import annotations

from accounts import sync
from wechat_service.extensions import db


def sync_followers(sync_id: int) -> dict[str, int | str | None]:
    done = sync.run_sync(sync_id)
    db.session.commit()
    return {"status": done.status, "synced": done.synced, "total": done.total} if done else {"status": None}
