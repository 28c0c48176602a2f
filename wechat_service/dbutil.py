"""Dialect-aware statements that PostgreSQL and SQLite both support."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.sql import Executable

from wechat_service.extensions import db

F = TypeVar("F", bound=Callable[..., Any])


def step_boundary(why: str) -> Callable[[F], F]:
    """Marks a function that commits its own work, and says why. Views, API handlers, jobs and
    commands commit; services only flush — except at a step boundary: a step of a longer piece of
    work whose outcome must be durable before the next one starts (money reserved before the
    provider is asked, rows claimed before they are sent, a notification stored before it is
    handled). The ladder check (tests/ladder.py) counts commits outside such functions."""

    def mark(fn: F) -> F:
        fn.__step_boundary__ = why  # type: ignore[attr-defined]  # read by people and the ladder check
        return fn

    return mark


def upsert(
    model: Any,
    rows: Sequence[dict[str, Any]],
    conflict: Sequence[str],
    update: Sequence[str] = (),
    keep_existing: Sequence[str] = (),
    returning: Sequence[str] = (),
    custom: dict[str, Callable[[Any, Any], Any]] | None = None,
) -> list[Any]:
    """INSERT … ON CONFLICT (conflict) DO UPDATE in one statement.

    ``update`` columns take the new value; ``keep_existing`` columns keep a non-null old value
    (first-seen facts); with neither, conflicting rows are left alone (DO NOTHING, and then
    RETURNING only yields the inserted rows).
    """
    if not rows:
        return []
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = model.__table__
    # Core on the table (not the ORM's bulk path), and one row as a plain VALUES: both keep the
    # compiled statement in SQLAlchemy's cache instead of compiling it on every call.
    stmt = insert(table).values(rows[0] if len(rows) == 1 else list(rows))
    set_: dict[str, Any] = {c: stmt.excluded[c] for c in update}
    set_.update({c: sa.func.coalesce(table.c[c], stmt.excluded[c]) for c in keep_existing})
    # custom: column -> f(existing columns, excluded columns), for conditional updates.
    set_.update({c: f(table.c, stmt.excluded) for c, f in (custom or {}).items()})
    if set_:
        stmt = stmt.on_conflict_do_update(index_elements=list(conflict), set_=set_)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    if returning:
        return list(db.session.execute(stmt.returning(*(table.c[c] for c in returning))).all())
    db.session.execute(stmt)
    return []


def execute_dml(stmt: Executable) -> CursorResult[Any]:
    """``db.session.execute`` for an UPDATE, DELETE or INSERT, typed as what it answers there: a
    CursorResult, whose ``rowcount`` the conditional updates check (Session.execute says Result)."""
    return cast("CursorResult[Any]", db.session.execute(stmt))
