"""Deferred handlers run from the inbox by a job; lost jobs are re-queued; tokens kept fresh."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask

from simulator.driver import message_xml, signed_request
from wechat_service import jobs
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db, get_queue
from wechat_service.models import CallbackInbox, InboxState
from wechat_service.router import CallbackContext, router

SEEN: list[tuple[int, str]] = []


@router.register("x_test_deferred", inline=False)
def _slow_handler(ctx: CallbackContext) -> None:
    """A handler that would be too slow for the request: it runs later, from the job."""
    SEEN.append((ctx.inbox_id or 0, ctx.message.get("Content", "")))


def _post(app: Flask, target: Any, content: str) -> Any:
    xml = message_xml(
        target,
        "oDEF",
        {"CreateTime": 1_900_000_000, "MsgType": "x_test_deferred", "Content": content, "MsgId": 31337},
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
    assert jobs.refresh_tokens() >= 1
    assert token_manager().cached(fields["appid"]) is not None
    before = requests.get(f"{simulator}/_sim/accounts/{fields['appid']}", timeout=5).json()["stats"][
        "stable_token"
    ]
    jobs.refresh_tokens()  # fresh tokens are left alone
    after = requests.get(f"{simulator}/_sim/accounts/{fields['appid']}", timeout=5).json()["stats"][
        "stable_token"
    ]
    assert before == after == 1
