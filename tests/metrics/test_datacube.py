"""Reconciliation of follows/unfollows/followers against WeChat's datacube, served by the
simulator (over HTTP) from the follows and unfollows it drove."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from accounts.models import Subscriber, SubscriberEvent
from metrics import datacube, rollups
from wechat_service.extensions import db


def test_datacube_differences_are_flagged(create_account: Any, simulator: str) -> None:
    account, fields, _ = create_account("plain")
    today = rollups.today_in("Asia/Shanghai")
    d1 = today - timedelta(days=1)
    d0 = d1 - timedelta(days=9)  # two datacube calls (7 + 3 days)
    base = datetime.combine(d0, datetime.min.time(), tzinfo=UTC) + timedelta(hours=2)  # 10:00 Beijing

    def drive(action: str, openid: str, at: datetime) -> None:
        requests.post(
            f"{simulator}/_sim/accounts/{fields['appid']}/drive",
            json={"action": action, "openid": openid, "create_time": int(at.timestamp()), "timeout": 0.2},
            timeout=10,
        )

    ours = []
    for i in range(5):  # follows on days 0..4, one unfollow on day 6
        at = base + timedelta(days=i)
        drive("follow", f"odc{i}", at)
        ours.append((f"odc{i}", "follow", at))
    drive("unfollow", "odc0", base + timedelta(days=6))
    ours.append(("odc0", "unfollow", base + timedelta(days=6)))
    # Our ledger missed the follow of day 3 (a callback lost for good).
    for openid, kind, at in ours:
        if openid == "odc3" and kind == "follow":
            continue
        sub = db.session.query(Subscriber).filter_by(account_id=account.id, openid=openid).first()
        if sub is None:
            sub = Subscriber(account_id=account.id, openid=openid)
            db.session.add(sub)
            db.session.flush()
        db.session.add(
            SubscriberEvent(
                account_id=account.id,
                subscriber_id=sub.id,
                kind=kind,
                occurred_at=at,
                recorded_at=at,
                detail={},
            )
        )
    db.session.commit()
    rollups.rebuild(d0, today)
    rows = datacube.reconcile_account(account, d0, d1)
    db.session.commit()
    assert len(rows) == 10 * 3
    flagged = {
        (r.day - d0).days: (r.metric, r.ours, r.theirs) for r in rows if r.flagged and r.metric == "follows"
    }
    assert flagged == {3: ("follows", 0, 1)}
    cumulative = {
        (r.day - d0).days: (r.ours, r.theirs, r.flagged) for r in rows if r.metric == "cumulative_followers"
    }
    assert cumulative[2] == (3, 3, False)
    assert cumulative[3] == (3, 4, True) and cumulative[9] == (3, 4, True)  # the gap persists
    unfollows = [r for r in rows if r.metric == "unfollows" and r.ours]
    assert [(r.day - d0).days for r in unfollows] == [6] and not unfollows[0].flagged
    # Re-running replaces, never duplicates.
    assert len(datacube.reconcile_account(account, d0, d1)) == 30


def test_simulator_datacube_enforces_wechats_limits(create_account: Any, simulator: str) -> None:
    from wechat_service.gateway import WeChatAPIError, client_for

    account, _, _ = create_account("plain")
    client = client_for(account.appid, account.app_secret)
    today = rollups.today_in("Asia/Shanghai")
    for d0, d1 in ((today - timedelta(days=8), today - timedelta(days=1)), (today, today)):
        try:
            client.datacube.get_user_summary(d0, d1)
        except WeChatAPIError as exc:
            assert exc.errcode == 61501
        else:
            raise AssertionError("more than 7 days, or today, must be refused")
