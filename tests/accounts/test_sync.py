"""Follower sync against WeChat's snapshot (the simulator): a snapshot never undoes a newer
unfollow the callbacks recorded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import requests
import sqlalchemy as sa
from flask import Flask

from accounts import subscribers, sync
from accounts.models import Subscriber
from accounts.subscribers import touch
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db


def test_follower_sync_never_undoes_a_newer_unfollow(app: Flask, create_account: Any, simulator: str) -> None:
    account, fields, _ = create_account("plain")
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/followers",
        json={"count": 1, "prefix": "oSYNC"},
        timeout=5,
    )  # WeChat's snapshot: subscribed a day ago
    sub = touch(account.id, "oSYNC00000000", None)
    subscribers.follow(sub, utcnow() - timedelta(days=2), scene="store-1", channel_id=None)
    subscribers.unfollow(touch(account.id, "oSYNC00000000", None), utcnow() - timedelta(minutes=1))
    run = sync.start_sync(account.id)
    db.session.commit()
    sync.run_sync(run.id)
    db.session.expire_all()
    row = db.session.scalar(sa.select(Subscriber).where(Subscriber.openid == "oSYNC00000000"))
    assert row.following is False  # the unfollow callback is newer than the snapshot's follow
    assert row.first_followed_at < row.last_followed_at  # the snapshot's later follow time is kept
