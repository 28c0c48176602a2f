"""Re-encrypt every stored secret under the current master key (after prepending a new one)."""

from __future__ import annotations

import sqlalchemy as sa

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
