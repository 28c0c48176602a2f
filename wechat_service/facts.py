"""The shape of a metric source, shared by every domain's ``facts.py`` and the metrics domain
that composes them (DESIGN.md "The ladder": metrics reads facts, not other domains' tables).

A source takes a :class:`Bucket` (some accounts, a UTC range and how to turn a timestamp into the
account's local day) and returns a SELECT of ``(account_id, day, dim, value)`` rows over its own
domain's tables. A :class:`Feed` says how the incremental refresh finds a ledger's new or changed
rows, and which other rows' days they change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import ColumnElement, FromClause

COUNT = sa.func.count()


@dataclass(frozen=True)
class Bucket:
    """Accounts of one timezone and a UTC range [start, end) in which the local day of a
    timestamp is ``timestamp + offset`` (constant UTC offset), or always ``day`` (a day on which
    the offset changes, e.g. daylight saving)."""

    account_ids: tuple[int, ...]
    start: datetime
    end: datetime
    offset: int | None
    day: date | None
    dialect: str

    def day_of(self, col: Any) -> ColumnElement[Any]:
        if self.day is not None:  # inlined: a bound parameter cannot be grouped by on PostgreSQL
            fixed = sa.literal_column(f"'{self.day.isoformat()}'", sa.String)
            return sa.cast(fixed, sa.Date) if self.dialect == "postgresql" else fixed
        if self.dialect == "postgresql":
            return sa.cast(
                sa.func.timezone("UTC", col) + sa.literal(timedelta(seconds=self.offset or 0), sa.Interval),
                sa.Date,
            )
        return sa.func.date(col, f"{self.offset or 0:+d} seconds")

    def grouped(
        self,
        account_col: Any,
        time_col: Any,
        value: ColumnElement[Any],
        *filters: ColumnElement[bool],
        dim: sa.ColumnExpressionArgument[Any] | None = None,
        select_from: FromClause | None = None,
    ) -> sa.Select[Any]:
        """``value`` per account, local day (and ``dim``) over rows of this bucket."""
        day = self.day_of(time_col).label("day")
        dim_col = (sa.cast(dim, sa.String) if dim is not None else sa.literal("", sa.String)).label("dim")
        query = sa.select(account_col.label("account_id"), day, dim_col, value.label("value"))
        if select_from is not None:
            query = query.select_from(select_from)
        return query.where(
            account_col.in_(self.account_ids), time_col >= self.start, time_col < self.end, *filters
        ).group_by(account_col, day, dim_col)


Source = Callable[[Bucket], sa.Select[Any]]
Reach = Callable[[Any], sa.Select]  # rows of (account_id, earliest, latest)


@dataclass(frozen=True)
class Feed:
    """A ledger read by a monotonic column: rows with ``id_col`` above the watermark are new (or,
    for deliveries, changed); ``changed`` is when it was set (for the safety lag), ``business``
    the times metrics bucket the row by, ``reaches`` selects ``(account_id, first, last)`` business
    times of other rows the new ones (a WHERE clause) change."""

    name: str
    id_col: Any
    changed: Any
    business: tuple[Any, ...]
    account_col: Any
    select_from: Any = None
    reaches: tuple[Reach, ...] = ()
