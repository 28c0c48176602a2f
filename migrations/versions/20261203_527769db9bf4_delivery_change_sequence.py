"""deliveries: a change sequence stamped by the database on every insert and update

Revision ID: 527769db9bf4
Revises: 5e1c7a9b3d42
Create Date: 2026-12-03 15:30:00.000000

The metrics refresh reads changed deliveries by this sequence instead of a wall-clock look-back
(review #18). PostgreSQL draws it from a sequence in a BEFORE trigger; SQLite (one writer at a
time) takes max + 1 in an AFTER trigger. Existing rows are numbered in the order of their latest
step; the refresh's watermark starts after the rows whose latest step is more than a day old (the
last day is read again, which is harmless: recomputing is idempotent).
"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "527769db9bf4"
down_revision = "5e1c7a9b3d42"
branch_labels = None
depends_on = None

STAMP_SQLITE = (
    "UPDATE deliveries SET change_seq = (SELECT coalesce(max(change_seq), 0) + 1 FROM deliveries), "
    "changed_at = strftime('%Y-%m-%d %H:%M:%f000', 'now') WHERE id = NEW.id;"
)
TRIGGERS = {
    "postgresql": (
        "CREATE OR REPLACE FUNCTION deliveries_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.change_seq := nextval('deliveries_change_seq'); NEW.changed_at := clock_timestamp(); "
        "RETURN NEW; END $$",
        "CREATE TRIGGER deliveries_stamp_change BEFORE INSERT OR UPDATE ON deliveries "
        "FOR EACH ROW EXECUTE FUNCTION deliveries_stamp_change()",
    ),
    "sqlite": (
        f"CREATE TRIGGER deliveries_stamp_insert AFTER INSERT ON deliveries BEGIN {STAMP_SQLITE} END",
        "CREATE TRIGGER deliveries_stamp_update AFTER UPDATE ON deliveries "
        f"WHEN NEW.change_seq IS OLD.change_seq BEGIN {STAMP_SQLITE} END",
    ),
}


def upgrade():
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("change_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True))
    cutoff = datetime.now(UTC) - timedelta(days=1)
    if dialect == "postgresql":
        latest = "greatest(created_at, sent_at, reported_at, first_clicked_at)"
        now = "now()"
        op.execute("CREATE SEQUENCE IF NOT EXISTS deliveries_change_seq OWNED BY deliveries.change_seq")
    else:
        latest = (
            "max(created_at, coalesce(sent_at, created_at), coalesce(reported_at, created_at), "
            "coalesce(first_clicked_at, created_at))"
        )
        now = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
        cutoff = cutoff.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    op.execute(
        f"UPDATE deliveries SET change_seq = numbered.n, changed_at = {now} FROM "
        f"(SELECT id, row_number() OVER (ORDER BY {latest}, id) AS n FROM deliveries) AS numbered "
        "WHERE deliveries.id = numbered.id"
    )
    if dialect == "postgresql":
        op.execute(
            "SELECT setval('deliveries_change_seq', (SELECT coalesce(max(change_seq), 0) + 1 FROM deliveries), false)"
        )
    for statement in TRIGGERS[dialect]:
        op.execute(statement)
    op.create_index("ix_deliveries_change_seq", "deliveries", ["change_seq"], unique=False)
    op.get_bind().execute(
        sa.text(
            "INSERT INTO metric_watermarks (feed, last_id, updated_at) "
            f"SELECT 'deliveries', coalesce(max(change_seq), 0), {now} FROM deliveries "
            f"WHERE {latest} < :cutoff"
        ),
        {"cutoff": cutoff},
    )


def downgrade():
    dialect = op.get_bind().dialect.name
    op.execute("DELETE FROM metric_watermarks WHERE feed = 'deliveries'")
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS deliveries_stamp_change ON deliveries")
        op.execute("DROP FUNCTION IF EXISTS deliveries_stamp_change()")
    else:
        op.execute("DROP TRIGGER IF EXISTS deliveries_stamp_insert")
        op.execute("DROP TRIGGER IF EXISTS deliveries_stamp_update")
    op.drop_index("ix_deliveries_change_seq", table_name="deliveries")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("changed_at")
        batch_op.drop_column("change_seq")
    if dialect == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS deliveries_change_seq")
