"""payments: Alipay as a provider

Revision ID: 8c3d1f2a4b6e
Revises: 462a77877225
Create Date: 2026-11-22 03:55:00

"""
from alembic import op

revision = '8c3d1f2a4b6e'
down_revision = '462a77877225'
branch_labels = None
depends_on = None

TABLES = ("merchants", "payment_transactions")


def _set(values: str) -> None:
    # Enum values live in CHECK constraints (native_enum=False); autogenerate cannot see them.
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f'ck_{table}_provider'), type_='check')
            batch_op.create_check_constraint('provider', f"provider IN ({values})")


def upgrade():
    _set("'wechatpay_v3', 'alipay'")


def downgrade():
    _set("'wechatpay_v3'")
