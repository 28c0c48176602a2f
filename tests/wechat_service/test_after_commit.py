"""The base's one after-commit mechanism: work queued by a transaction runs when it commits and
is dropped when it rolls back — also for the campaign engine's signals to running send jobs."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Flask
from redis import Redis

from templates_msg import services
from templates_msg.models import CampaignState
from wechat_service.extensions import after_commit, db, get_queue


def _some_write() -> None:
    db.session.execute(sa.text("SELECT 1"))


def test_callbacks_run_on_commit_and_are_dropped_on_rollback(app: Flask) -> None:
    ran: list[str] = []
    after_commit(lambda: ran.append("rolled back"))
    _some_write()
    db.session.rollback()
    after_commit(lambda: ran.append("committed"))
    _some_write()
    db.session.commit()
    assert ran == ["committed"]
    _some_write()
    db.session.commit()  # and nothing runs twice
    assert ran == ["committed"]


def test_same_key_keeps_the_last(app: Flask) -> None:
    ran: list[int] = []
    after_commit(lambda: ran.append(1), key="k")
    after_commit(lambda: ran.append(2), key="k")
    _some_write()
    db.session.commit()
    assert ran == [2]


def test_a_campaign_signal_of_a_rolled_back_transaction_is_never_sent(app: Flask, redis_conn: Redis) -> None:
    halt = services.HALT.format(4242)
    services._signal(4242, CampaignState.paused)  # what pause() queues for the running jobs
    _some_write()
    db.session.rollback()  # … but the pause did not happen
    _some_write()
    db.session.commit()  # another transaction of the same session commits
    assert redis_conn.get(halt) is None
    services._signal(4242, CampaignState.cancelled)
    _some_write()
    db.session.commit()
    assert redis_conn.get(halt) == b"cancelled"


def test_a_job_of_a_rolled_back_transaction_is_never_enqueued(app: Flask) -> None:
    from wechat_service.extensions import enqueue_after_commit

    enqueue_after_commit("low", print, "rolled back")
    _some_write()
    db.session.rollback()
    _some_write()
    db.session.commit()
    assert get_queue("low").count == 0
