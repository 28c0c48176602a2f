"""Follower backfill of 25,000 followers by a real worker; idempotent and resumable."""

from __future__ import annotations

import requests
import sqlalchemy as sa

from accounts import services
from accounts.models import FollowerSync, Person, Subscriber, SubscriberTag
from tests import helpers
from tests.live.conftest import Live
from wechat_service.extensions import db


def _count(live: Live, model: type, account_id: int | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(model)
    if account_id is not None:
        query = query.where(model.account_id == account_id)
    return live.scalar(query)


def test_sync_25000_followers_through_the_worker(live: Live) -> None:
    fields, _ = live.create_account("safe")
    appid = fields["appid"]
    requests.post(
        f"{live.sim}/_sim/accounts/{appid}/followers",
        json={"count": 25000, "prefix": "oS" + appid[-6:], "tagid_list": [101]},
        timeout=30,
    ).raise_for_status()
    out = helpers.run_checked(helpers.cli("account", "sync-followers", appid, "--json"), live.env)
    assert '"queued"' in out.stdout
    account_id = live.in_app(lambda: services.account_by_appid(appid).id)
    sync = live.wait_for(
        lambda: live.scalar(
            sa.select(FollowerSync).where(
                FollowerSync.account_id == account_id, FollowerSync.status == "done"
            )
        ),
        240,
        "sync to finish",
    )
    assert sync.synced == 25000 and sync.total == 25000
    assert _count(live, Subscriber, account_id) == 25000
    assert (
        live.scalar(
            sa.select(sa.func.count())
            .select_from(Subscriber)
            .where(
                Subscriber.account_id == account_id,
                Subscriber.following.is_(True),
                Subscriber.person_id.is_not(None),
            )
        )
        == 25000
    )
    assert _count(live, Person) == 25000
    assert _count(live, SubscriberTag) == 12500  # the simulator tags every other follower
    calls = live.sim_state(appid)["stats"]["api_calls"]
    assert calls == 1 + 3 + 250  # tags/get, three user/get pages (the last one empty), 250 batchgets

    # Running it again changes nothing.
    helpers.run_checked(helpers.cli("account", "sync-followers", appid, "--wait"), live.env, timeout=300)
    assert _count(live, Subscriber, account_id) == 25000 and _count(live, Person) == 25000
    assert _count(live, SubscriberTag) == 12500


def test_sync_resumes_from_its_cursor(live: Live) -> None:
    fields, _ = live.create_account("plain")
    appid = fields["appid"]
    prefix = "oR" + appid[-6:]
    requests.post(
        f"{live.sim}/_sim/accounts/{appid}/followers",
        json={"count": 12000, "prefix": prefix, "with_unionid": False},
        timeout=30,
    ).raise_for_status()

    def interrupted() -> int:
        # A sync that committed its first page (cursor = the page's last openid) and was then killed.
        account = services.account_by_appid(appid)
        db.session.add(
            FollowerSync(
                account_id=account.id,
                status="running",
                cursor=f"{prefix}{9999:08d}",
                synced=10000,
                total=12000,
            )
        )
        db.session.commit()
        return account.id

    account_id = live.in_app(interrupted)
    helpers.run_checked(helpers.cli("account", "sync-followers", appid, "--wait"), live.env, timeout=300)
    # Only the second page was fetched: the first 10,000 (not in the DB here) were not asked again.
    assert _count(live, Subscriber, account_id) == 2000
    sync = live.scalar(sa.select(FollowerSync).where(FollowerSync.account_id == account_id))
    assert sync.status == "done" and sync.synced == 12000
