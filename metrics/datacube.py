"""Daily check of our follow figures against WeChat's own statistics (datacube/getusersummary
and getusercumulate, at most 7 days per call, available up to yesterday in Beijing time).
Every compared day is stored; a difference is flagged, never silently corrected."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa

from accounts.models import Account, AccountKind, AccountStatus
from metrics.models import MetricReconciliation
from metrics.queries import daily_series
from metrics.rollups import today_in
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary, upsert
from wechat_service.extensions import db
from wechat_service.gateway import WeChatAPIError, client_for

log = logging.getLogger(__name__)

SPAN = 7  # days per datacube call (WeChat's limit for these two)
COMPARED = {"follows": "new_user", "unfollows": "cancel_user", "cumulative_followers": "cumulate_user"}


def spans(d0: date, d1: date, size: int = SPAN) -> list[tuple[date, date]]:
    out, start = [], d0
    while start <= d1:
        end = min(start + timedelta(days=size - 1), d1)
        out.append((start, end))
        start = end + timedelta(days=1)
    return out


def wechat_figures(account: Account, d0: date, d1: date) -> dict[date, dict[str, int]]:
    """{day: {new_user, cancel_user, cumulate_user}} from WeChat, 7 days per call."""
    client = client_for(account.appid, account.app_secret)
    out: dict[date, dict[str, int]] = defaultdict(
        lambda: {"new_user": 0, "cancel_user": 0, "cumulate_user": 0}
    )
    for start, end in spans(d0, d1):
        for row in client.datacube.get_user_summary(start, end):  # one row per day and user_source
            day = date.fromisoformat(row["ref_date"])
            out[day]["new_user"] += int(row.get("new_user", 0))
            out[day]["cancel_user"] += int(row.get("cancel_user", 0))
        for row in client.datacube.get_user_cumulate(start, end):
            out[date.fromisoformat(row["ref_date"])]["cumulate_user"] = int(row.get("cumulate_user", 0))
    return dict(out)


def reconcile_account(account: Account, d0: date, d1: date) -> list[MetricReconciliation]:
    """Compare [d0, d1] and store one row per day and metric (re-running replaces them)."""
    theirs = wechat_figures(account, d0, d1)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for ours_key, their_key in COMPARED.items():
        for day, ours in daily_series([account.id], ours_key, d0, d1):
            their = theirs.get(day, {}).get(their_key, 0)
            rows.append(
                {
                    "account_id": account.id,
                    "day": day,
                    "metric": ours_key,
                    "ours": int(ours),
                    "theirs": their,
                    "diff": int(ours) - their,
                    "flagged": int(ours) != their,
                    "checked_at": now,
                }
            )
    upsert(
        MetricReconciliation,
        rows,
        conflict=["account_id", "day", "metric"],
        update=["ours", "theirs", "diff", "flagged", "checked_at"],
    )
    return results(account.id, d0, d1)


def results(
    account_id: int, d0: date | None = None, d1: date | None = None, flagged_only: bool = False
) -> list[MetricReconciliation]:
    R = MetricReconciliation
    query = sa.select(R).where(R.account_id == account_id)
    if d0:
        query = query.where(R.day >= d0)
    if d1:
        query = query.where(R.day <= d1)
    if flagged_only:
        query = query.where(R.flagged.is_(True))
    return list(db.session.scalars(query.order_by(R.day.desc(), R.metric)))


def flagged_counts(account_ids: list[int]) -> dict[int, int]:
    R = MetricReconciliation
    return dict(
        db.session.execute(
            sa.select(R.account_id, sa.func.count())
            .where(R.account_id.in_(account_ids), R.flagged.is_(True))
            .group_by(R.account_id)
        ).all()
    )


@step_boundary("one account-day at a time: a failing account does not lose the others' results")
def reconcile_recent(days: int = SPAN) -> dict[str, Any]:
    """Every active official account, the last ``days`` days up to yesterday (Beijing time)."""
    yesterday = today_in("Asia/Shanghai") - timedelta(days=1)
    d0 = yesterday - timedelta(days=days - 1)
    done, failed, flagged = 0, 0, 0
    accounts = db.session.scalars(
        sa.select(Account)
        .where(Account.status == AccountStatus.active, Account.kind != AccountKind.mini_program)
        .order_by(Account.id)
    ).all()
    for account in accounts:
        try:
            flagged += sum(r.flagged for r in reconcile_account(account, d0, yesterday))
            db.session.commit()
            done += 1
        except WeChatAPIError as exc:
            db.session.rollback()
            failed += 1
            log.warning("datacube reconciliation of %s failed: %s", account.appid, exc)
    return {
        "accounts": done,
        "failed": failed,
        "flagged": flagged,
        "from": d0.isoformat(),
        "to": yesterday.isoformat(),
    }
