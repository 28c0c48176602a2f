"""Dialect-aware statements that PostgreSQL and SQLite both support."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from wechat_service.extensions import db


def upsert(
    model: Any, rows: Sequence[dict[str, Any]], conflict: Sequence[str], update: Sequence[str] = ()
) -> None:
    """INSERT … ON CONFLICT (conflict) DO UPDATE SET update (or DO NOTHING) in one statement."""
    if not rows:
        return
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(model).values(list(rows))
    if update:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    db.session.execute(stmt)
