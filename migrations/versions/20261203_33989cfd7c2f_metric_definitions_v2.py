"""metric definitions v2: money on the provider's time, distinct active subscribers, versioned periods

Revision ID: 33989cfd7c2f
Revises: 527769db9bf4
Create Date: 2026-12-03 15:40:00.000000

payment_transactions.moved_at (the provider's payment or refund time, filled from the raw record
as reconciliation reads it), metric_active_days (distinct active subscribers over any period),
metric_contract_periods.definitions (periods closed before this are version 1), and the indexes
the refresh's look-ups of later rows need (review #17, #19).
"""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "33989cfd7c2f"
down_revision = "527769db9bf4"
branch_labels = None
depends_on = None

CHINA = ZoneInfo("Asia/Shanghai")


def _provider_time(raw, recorded):
    """As payments.reconciliation.provider_time_of at the time of this migration."""
    raw = raw if isinstance(raw, dict) else {}
    for key in ("success_time", "gmt_refund_pay", "gmt_payment", "time_end"):
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            continue
        try:
            if key == "time_end":
                return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=CHINA).astimezone(UTC)
            parsed = datetime.fromisoformat(value)
        except ValueError:
            continue
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=CHINA)).astimezone(UTC)
    return recorded


def upgrade():
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    with op.batch_alter_table("payment_transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("moved_at", sa.DateTime(timezone=True), nullable=True))
    txns = sa.table(
        "payment_transactions",
        sa.column("id", sa.BigInteger),
        sa.column("raw", sa.JSON),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("moved_at", sa.DateTime(timezone=True)),
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(txns.c.id, txns.c.raw, txns.c.created_at)
            .where(txns.c.id > last)
            .order_by(txns.c.id)
            .limit(2000)
        ).all()
        if not rows:
            break
        for row in rows:
            recorded = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            moved = _provider_time(row.raw, recorded).astimezone(UTC)
            bind.execute(
                sa.update(txns)
                .where(txns.c.id == row.id)
                .values(moved_at=moved.replace(tzinfo=None) if sqlite else moved)
            )
        last = rows[-1].id
    with op.batch_alter_table("payment_transactions", schema=None) as batch_op:
        batch_op.alter_column("moved_at", existing_type=sa.DateTime(timezone=True), nullable=False)

    op.create_table(
        "metric_active_days",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("subscriber_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_metric_active_days_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "day", "subscriber_id", name=op.f("pk_metric_active_days")),
    )
    with op.batch_alter_table("metric_contract_periods", schema=None) as batch_op:
        batch_op.add_column(sa.Column("definitions", sa.Integer(), nullable=True))
    op.execute("UPDATE metric_contract_periods SET definitions = 1 WHERE status = 'closed'")
    op.create_index(
        "ix_subscriber_events_subscriber_occurred", "subscriber_events", ["subscriber_id", "occurred_at"]
    )
    op.create_index("ix_fulfilments_source", "fulfilments", ["source", "source_id"])


def downgrade():
    op.drop_index("ix_fulfilments_source", table_name="fulfilments")
    op.drop_index("ix_subscriber_events_subscriber_occurred", table_name="subscriber_events")
    with op.batch_alter_table("metric_contract_periods", schema=None) as batch_op:
        batch_op.drop_column("definitions")
    op.drop_table("metric_active_days")
    with op.batch_alter_table("payment_transactions", schema=None) as batch_op:
        batch_op.drop_column("moved_at")
