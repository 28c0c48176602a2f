"""Deferred handlers run from the inbox by a job; lost jobs are re-queued; tokens kept fresh."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from rq import SimpleWorker

from accounts import jobs as account_jobs
from simulator.driver import message_xml, signed_request
from wechat_service import callbacks, jobs
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db, get_queue
from wechat_service.models import CallbackInbox, InboxState
from wechat_service.router import CallbackContext, router

SEEN: list[tuple[int, str]] = []


@router.register("x_test_deferred", inline=False)
def _slow_handler(ctx: CallbackContext) -> None:
    """A handler that would be too slow for the request: it runs later, from the job."""
    SEEN.append((ctx.inbox_id or 0, ctx.message.get("Content", "")))


SWEEPS_DURING_JOB: list[tuple[int, str]] = []


@router.register("x_test_sweep", inline=False)
def _handler_during_a_sweep(ctx: CallbackContext) -> None:
    """The cron's stale-inbox sweep runs while this job is running."""
    requeued = jobs.requeue_stale_inbox()
    state = db.session.scalar(sa.select(CallbackInbox.state).where(CallbackInbox.id == ctx.inbox_id))
    SWEEPS_DURING_JOB.append((requeued, state.value))


@router.register("x_test_broken", inline=False)
def _always_fails(ctx: CallbackContext) -> None:
    raise RuntimeError("the handler is broken")


def _post(app: Flask, target: Any, content: str, msg_type: str = "x_test_deferred") -> Any:
    xml = message_xml(
        target,
        "oDEF",
        {"CreateTime": 1_900_000_000, "MsgType": msg_type, "Content": content, "MsgId": 31337},
    )
    args, body = signed_request(target, xml, timestamp=None)
    return app.test_client().post(f"/wechat/{target.appid}/callback", query_string=args, data=body)


def test_deferred_handler_runs_from_the_queued_job(app: Flask, create_account: Any) -> None:
    _, _, target = create_account("plain")
    resp = _post(app, target, "slow work")
    assert resp.get_data(as_text=True) == "success"
    row = db.session.scalar(sa.select(CallbackInbox).where(CallbackInbox.dedup_key == "msg:31337"))
    assert row.state is InboxState.queued
    queued = get_queue("high").jobs
    assert any(j.func_name == "wechat_service.jobs.process_inbox" and j.args == (row.id,) for j in queued)
    jobs.process_inbox(row.id)
    db.session.refresh(row)
    assert row.state is InboxState.processed and row.attempts == 1 and row.processed_at is not None
    assert (row.id, "slow work") in SEEN
    jobs.process_inbox(row.id)  # a second run (a re-queued copy) does nothing
    assert SEEN.count((row.id, "slow work")) == 1


def test_stale_queued_rows_are_queued_again(app: Flask, create_account: Any) -> None:
    _, _, target = create_account("plain")
    _post(app, target, "lost job")
    row = db.session.scalar(sa.select(CallbackInbox).where(CallbackInbox.dedup_key == "msg:31337"))
    get_queue("high").empty()  # Redis lost the job
    row.received_at = utcnow() - timedelta(minutes=10)
    db.session.commit()
    assert jobs.requeue_stale_inbox() == 1
    assert [j.args for j in get_queue("high").jobs] == [(row.id,)]
    jobs.process_inbox(row.id)
    assert jobs.requeue_stale_inbox() == 0


def test_token_keeper_refreshes_missing_tokens(app: Flask, create_account: Any, simulator: str) -> None:
    import requests

    from wechat_service.gateway import token_manager

    _, fields, _ = create_account("plain")
    assert token_manager().cached(fields["appid"]) is None
    assert account_jobs.refresh_tokens() >= 1
    assert token_manager().cached(fields["appid"]) is not None
    before = requests.get(f"{simulator}/_sim/accounts/{fields['appid']}", timeout=5).json()["stats"][
        "stable_token"
    ]
    account_jobs.refresh_tokens()  # fresh tokens are left alone
    after = requests.get(f"{simulator}/_sim/accounts/{fields['appid']}", timeout=5).json()["stats"][
        "stable_token"
    ]
    assert before == after == 1


def test_a_row_received_long_ago_but_claimed_now_is_not_requeued_while_its_job_runs(
    app: Flask, create_account: Any
) -> None:
    _, _, target = create_account("plain")
    _post(app, target, "late", msg_type="x_test_sweep")
    row = db.session.scalar(sa.select(CallbackInbox).where(CallbackInbox.dedup_key == "msg:31337"))
    row.received_at = utcnow() - timedelta(hours=1)  # its first job was lost long ago
    db.session.commit()
    get_queue("high").empty()
    SWEEPS_DURING_JOB.clear()
    jobs.process_inbox(row.id)  # claimed now; the sweep runs meanwhile
    assert SWEEPS_DURING_JOB == [(0, "processing")]
    db.session.refresh(row)
    assert row.state is InboxState.processed and row.attempts == 1 and row.claimed_at is not None
    assert get_queue("high").count == 0


def test_a_claim_abandoned_ten_minutes_ago_is_queued_again(app: Flask, create_account: Any) -> None:
    _, _, target = create_account("plain")
    _post(app, target, "abandoned")
    row = db.session.scalar(sa.select(CallbackInbox).where(CallbackInbox.dedup_key == "msg:31337"))
    get_queue("high").empty()
    row.state, row.attempts = InboxState.processing, 1  # a worker claimed it, then died
    row.received_at = row.claimed_at = utcnow() - timedelta(minutes=11)
    db.session.commit()
    assert jobs.requeue_stale_inbox() == 1
    db.session.refresh(row)
    assert row.state is InboxState.queued and [j.args for j in get_queue("high").jobs] == [(row.id,)]


def test_a_handler_that_always_fails_is_retried_then_marked_failed(app: Flask, create_account: Any) -> None:
    """Each attempt is a job run by an RQ worker (in this process); the cron sweep queues the
    row again after a failure, until its attempts are used up: then it stays failed, with the
    handler's error, and nothing queues it again."""
    _, _, target = create_account("plain")
    _post(app, target, "never works", msg_type="x_test_broken")
    row = db.session.scalar(sa.select(CallbackInbox).where(CallbackInbox.dedup_key == "msg:31337"))
    queue = get_queue("high")
    worker = SimpleWorker([queue], connection=queue.connection)
    for attempt in range(1, callbacks.MAX_ATTEMPTS + 1):
        assert queue.count >= 1
        worker.work(burst=True)
        assert queue.count == 0
        db.session.refresh(row)
        assert row.attempts == attempt and row.error == "RuntimeError: the handler is broken"
        final = attempt == callbacks.MAX_ATTEMPTS
        assert row.state is (InboxState.failed if final else InboxState.queued)
        row.received_at = utcnow() - timedelta(minutes=5)  # the sweep's next run
        db.session.commit()
        assert jobs.requeue_stale_inbox() == (0 if final else 1)
    assert len(queue.failed_job_registry) >= 1
    jobs.process_inbox(row.id)  # a stray copy of the job does nothing
    db.session.refresh(row)
    assert row.state is InboxState.failed and row.attempts == callbacks.MAX_ATTEMPTS
