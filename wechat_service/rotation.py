"""Re-encrypt every stored secret under the current master key (after prepending a new one)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from flask import Flask, current_app

from wechat_service.dbtypes import EncryptedText
from wechat_service.extensions import db
from wechat_service.secrets import reseal


def encrypted_columns() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table in db.metadata.sorted_tables:
        cols = [c.name for c in table.columns if isinstance(c.type, EncryptedText)]
        if cols:
            out[table.name] = cols
    return out


def reseal_all() -> dict[str, int]:
    counts: dict[str, int] = {}
    for table_name, cols in encrypted_columns().items():
        # Read the raw ciphertext: a plain Text view of the table bypasses the decrypting type.
        raw = sa.table(table_name, sa.column("id"), *(sa.column(c, sa.Text) for c in cols))
        n = 0
        for row in db.session.execute(sa.select(raw)).mappings():
            values = {c: reseal(row[c]) for c in cols if row[c]}
            if values:
                db.session.execute(sa.update(raw).where(raw.c.id == row["id"]).values(**values))
                n += len(values)
        counts[table_name] = n
    return counts


def rekey_with(app: Flask, name: str, fn: Callable[[], int]) -> None:
    """A domain's step of ``secrets rotate`` beyond re-sealing columns (e.g. look-up hashes keyed
    by the master key): ``fn`` returns how many values it redid."""
    app.extensions.setdefault("rekey", {})[name] = fn


def rotate_all() -> dict[str, int]:
    """Re-seal every encrypted column, then run each domain's re-keying step."""
    counts = reseal_all()
    for name, fn in current_app.extensions.get("rekey", {}).items():
        counts[name] = fn()
    return counts
