"""Daily rollups per account per local day, written from the ledgers — incrementally every ten
minutes (new ledger rows since the watermarks mark their account's days dirty; those days are
recomputed whole) or for any range by `wechat-service metrics rebuild`. Both call the same
:func:`recompute`, so they give identical rows; recomputing a day twice changes nothing."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from accounts.models import Account
from metrics.models import ContractPeriod, MetricActiveDay, MetricDaily, MetricWatermark, PeriodStatus
from metrics.registry import DEFINITIONS_VERSION, FEEDS, REGISTRY, active_days
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, upsert
from wechat_service.extensions import db, get_redis
from wechat_service.facts import Bucket

log = logging.getLogger(__name__)

# Rows written less than LAG ago are read again by the next refresh: a transaction that took a
# lower id but committed later than a higher one (up to LAG) is still seen. Recomputing is idempotent.
LAG = timedelta(minutes=10)
LOCK_KEY = "wechat_service:metrics:rollups"
CUMULATIVE = "cumulative_followers"


def zone(name: str | None) -> ZoneInfo:
    return ZoneInfo(name or "Asia/Shanghai")


def local_day(ts: datetime, tz: str | None) -> date:
    return ts.astimezone(zone(tz)).date()


def today_in(tz: str | None, now: datetime | None = None) -> date:
    return local_day(now or utcnow(), tz)


def day_start(day: date, tz: str | None) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone(tz)).astimezone(UTC)


def segments(tz: str, d0: date, d1: date) -> list[tuple[datetime, datetime, int | None, date | None]]:
    """[d0, d1] cut into UTC ranges of constant UTC offset (local day = utc + offset), and single
    days on which the offset changes (their local day is fixed)."""
    out: list[tuple[datetime, datetime, int | None, date | None]] = []
    tzinfo = zone(tz)
    day = d0
    while day <= d1:
        start, end = day_start(day, tz), day_start(day + timedelta(days=1), tz)
        off_start = start.astimezone(tzinfo).utcoffset()
        off_end = (end - timedelta(microseconds=1)).astimezone(tzinfo).utcoffset()
        if off_start != off_end:
            out.append((start, end, None, day))
        else:
            seconds = int(off_start.total_seconds()) if off_start is not None else 0
            if out and out[-1][2] == seconds and out[-1][1] == start:
                out[-1] = (out[-1][0], end, seconds, None)
            else:
                out.append((start, end, seconds, None))
        day += timedelta(days=1)
    return out


def account_timezones() -> dict[int, str]:
    return _timezones(None)


def _timezones(account_ids: Iterable[int] | None) -> dict[int, str]:
    query = sa.select(Account.id, Account.timezone)
    if account_ids is not None:
        query = query.where(Account.id.in_(list(account_ids)))
    return {aid: tz or "Asia/Shanghai" for aid, tz in db.session.execute(query)}


@contextmanager
def rollup_lock(wait: float = 0) -> Any:
    """One writer of rollups at a time across processes (the cron job, a rebuild)."""
    lock = get_redis().lock(LOCK_KEY, timeout=3600, blocking_timeout=wait or None, blocking=wait > 0)
    if not lock.acquire():
        yield False
        return
    try:
        yield True
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - expired under a very long rebuild: nothing to give back
            log.warning("rollup lock had expired before release")


def recompute(account_ids: Sequence[int] | None, d0: date, d1: date) -> int:
    """Rewrite every stored metric of these accounts (None: all) for local days [d0, d1] from the
    ledgers, then the running totals from d0 on. Returns the rows now stored for the range;
    the caller commits."""
    tzs = _timezones(account_ids)
    if not tzs or d1 < d0:
        return 0
    ids = sorted(tzs)
    dialect = db.session.get_bind().dialect.name
    sourced = [m for m in REGISTRY.values() if m.source is not None]
    derived = [m for m in REGISTRY.values() if m.derived]
    D = MetricDaily
    cols = ["account_id", "metric", "day", "dim", "value"]
    db.session.execute(
        sa.delete(D).where(
            D.account_id.in_(ids), D.day >= d0, D.day <= d1, D.metric.in_([m.key for m in sourced + derived])
        )
    )
    A = MetricActiveDay
    db.session.execute(sa.delete(A).where(A.account_id.in_(ids), A.day >= d0, A.day <= d1))
    by_tz: dict[str, list[int]] = defaultdict(list)
    for aid, tz in tzs.items():
        by_tz[tz].append(aid)
    for tz, tz_ids in by_tz.items():
        for start, end, offset, fixed in segments(tz, d0, d1):
            bucket = Bucket(tuple(tz_ids), start, end, offset, fixed, dialect)
            db.session.execute(
                sa.insert(A).from_select(["account_id", "day", "subscriber_id"], active_days(bucket))
            )
            for metric in sourced:
                assert metric.source is not None
                sub = metric.source(bucket).subquery()
                rows = sa.select(
                    sub.c.account_id, sa.literal(metric.key, sa.String), sub.c.day, sub.c.dim, sub.c.value
                )
                db.session.execute(sa.insert(D).from_select(cols, rows))
    for metric in derived:
        combo = sa.case(*((D.metric == key, D.value * coef) for key, coef in metric.derived.items()), else_=0)
        total = sa.func.sum(combo)
        rows = (
            sa.select(
                D.account_id, sa.literal(metric.key, sa.String), D.day, sa.literal("", sa.String), total
            )
            .where(D.account_id.in_(ids), D.day >= d0, D.day <= d1, D.dim == "")
            .where(D.metric.in_(list(metric.derived)))
            .group_by(D.account_id, D.day)
            .having(total != 0)
        )
        db.session.execute(sa.insert(D).from_select(cols, rows))
    _running_totals(ids, d0)
    # Drivers disagree on rowcount for INSERT … SELECT (psycopg says -1): count what is stored.
    return (
        db.session.scalar(sa.select(sa.func.count()).where(D.account_id.in_(ids), D.day >= d0, D.day <= d1))
        or 0
    )


def _running_totals(ids: list[int], d0: date) -> int:
    """cumulative_followers from d0 on = its last value before d0 + the running sum of net follows;
    one row on every day net follows changed it (readers carry the last value forward)."""
    D = MetricDaily
    db.session.execute(sa.delete(D).where(D.account_id.in_(ids), D.metric == CUMULATIVE, D.day >= d0))
    n, c = sa.orm.aliased(MetricDaily), sa.orm.aliased(MetricDaily)
    base = (
        sa.select(c.value)
        .where(c.account_id == n.account_id, c.metric == CUMULATIVE, c.dim == "", c.day < d0)
        .order_by(c.day.desc())
        .limit(1)
        .scalar_subquery()
    )
    running = sa.func.sum(n.value).over(partition_by=n.account_id, order_by=n.day, rows=(None, 0))
    rows = sa.select(
        n.account_id,
        sa.literal(CUMULATIVE, sa.String),
        n.day,
        sa.literal("", sa.String),
        sa.func.coalesce(base, 0) + running,
    ).where(n.account_id.in_(ids), n.metric == "net_follows", n.dim == "", n.day >= d0)
    return (
        execute_dml(
            sa.insert(D).from_select(["account_id", "metric", "day", "dim", "value"], rows)
        ).rowcount
        or 0
    )


def _watermarks() -> dict[str, int]:
    return dict(db.session.execute(sa.select(MetricWatermark.feed, MetricWatermark.last_id)).all())


class _Dirty:
    """(account → first and last local day) to recompute."""

    def __init__(self, tzs: dict[int, str]) -> None:
        self.tzs = tzs
        self.spans: dict[int, tuple[date, date]] = {}

    def add(self, aid: int, lo: Any, hi: Any) -> None:
        if aid not in self.tzs or lo is None:
            return
        tz = self.tzs[aid]
        d_lo, d_hi = local_day(_aware(lo), tz), local_day(_aware(hi), tz)
        if aid in self.spans:
            d_lo, d_hi = min(d_lo, self.spans[aid][0]), max(d_hi, self.spans[aid][1])
        self.spans[aid] = (d_lo, d_hi)


def refresh(now: datetime | None = None) -> dict[str, Any]:
    """The incremental refresh: ledger rows above each watermark (deliveries: above the last change
    sequence read) mark dirty the local days they are bucketed on and the days of other rows whose
    figures they change (see registry.FEEDS); those ranges are recomputed whole; the watermarks
    move to the newest row older than LAG. However late it runs, nothing is skipped. The caller
    commits (rollups and watermarks in one transaction)."""
    now = now or utcnow()
    marks = _watermarks()
    tzs = _timezones(None)
    dirty = _Dirty(tzs)
    new_marks: dict[str, int] = {}
    rows_seen = 0
    for feed in FEEDS:
        new = feed.id_col > marks.get(feed.name, 0)
        for i, business in enumerate(feed.business):
            query = sa.select(feed.account_col, sa.func.min(business), sa.func.max(business), sa.func.count())
            if feed.select_from is not None:
                query = query.select_from(feed.select_from)
            for aid, lo, hi, count in db.session.execute(query.where(new).group_by(feed.account_col)):
                rows_seen += count if i == 0 else 0
                dirty.add(aid, lo, hi)
        for reach in feed.reaches:
            for aid, lo, hi in db.session.execute(reach(new)):
                dirty.add(aid, lo, hi)
        settled = sa.select(sa.func.max(feed.id_col))
        if feed.select_from is not None:
            settled = settled.select_from(feed.select_from)
        mark = db.session.scalar(settled.where(new, feed.changed < now - LAG))
        if mark is not None:
            new_marks[feed.name] = int(mark)
    ranges: dict[tuple[date, date], list[int]] = defaultdict(list)
    for aid, span in dirty.spans.items():
        ranges[span].append(aid)
    written = 0
    for (d0, d1), ids in sorted(ranges.items()):
        written += recompute(ids, d0, d1)
    if new_marks:
        upsert(
            MetricWatermark,
            [{"feed": f, "last_id": m, "updated_at": now} for f, m in new_marks.items()],
            conflict=["feed"],
            update=["last_id", "updated_at"],
        )
    return {
        "ledger_rows": rows_seen,
        "accounts": len(dirty.spans),
        "ranges": len(ranges),
        "rollup_rows": written,
    }


DEFINITIONS_MARK = "definitions"  # the version the rollups were last recomputed under
PROGRESS_MARK = "definitions_progress"  # the last account recomputed under the new version


def _mark(feed: str) -> int | None:
    return db.session.scalar(sa.select(MetricWatermark.last_id).where(MetricWatermark.feed == feed))


def _set_mark(feed: str, value: int, now: datetime) -> None:
    upsert(
        MetricWatermark,
        [{"feed": feed, "last_id": value, "updated_at": now}],
        conflict=["feed"],
        update=["last_id", "updated_at"],
    )


def apply_definitions(now: datetime | None = None, accounts: int | None = None) -> dict[str, Any] | None:
    """After an upgrade that changed the metric definitions: recompute every account from the
    first day of the earliest open contract period (at most a year back; at least the previous
    month) to today under the new ones — ``accounts`` accounts at a time (None: all), so a job
    can commit in steps and resume. Closed periods keep their frozen figures. Returns None when
    the rollups are current, else {"from": first day, "done": every account recomputed}. The
    caller commits."""
    if (_mark(DEFINITIONS_MARK) or 0) >= DEFINITIONS_VERSION:
        return None
    now = now or utcnow()
    today = today_in(None, now)
    first_open = db.session.scalar(
        sa.select(sa.func.min(ContractPeriod.starts_on)).where(ContractPeriod.status == PeriodStatus.open)
    )
    start = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    if first_open is not None:
        start = max(min(first_open, start), today - timedelta(days=366))
    pending = sorted(a for a in _timezones(None) if a > (_mark(PROGRESS_MARK) or 0))
    batch = pending if accounts is None else pending[:accounts]
    if batch:  # a day either side: every timezone's local days
        recompute(batch, start - timedelta(days=1), today + timedelta(days=1))
        _set_mark(PROGRESS_MARK, batch[-1], now)
    done = len(batch) == len(pending)
    if done:
        _set_mark(DEFINITIONS_MARK, DEFINITIONS_VERSION, now)
        db.session.execute(sa.delete(MetricWatermark).where(MetricWatermark.feed == PROGRESS_MARK))
    return {"from": start, "done": done}


def reroll(days: int, now: datetime | None = None) -> int:
    """Recompute the last ``days`` days whole, each account up to its own local today (an account
    east of Beijing is already on the next day). The caller commits."""
    by_day: dict[date, list[int]] = defaultdict(list)
    for aid, tz in _timezones(None).items():
        by_day[today_in(tz, now)].append(aid)
    return sum(recompute(ids, today - timedelta(days=days), today) for today, ids in sorted(by_day.items()))


def rebuild(d0: date, d1: date, account_ids: Sequence[int] | None = None) -> int:
    """Recompute [d0, d1] (local days) for every account; the caller commits."""
    return recompute(account_ids, d0, d1)


def _aware(ts: datetime) -> datetime:
    # Aggregates bypass the UTC column type on SQLite (naive strings come back).
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
