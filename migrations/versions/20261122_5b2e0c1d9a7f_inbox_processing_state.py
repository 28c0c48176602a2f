"""callback inbox: a 'processing' state for rows a worker has claimed

Revision ID: 5b2e0c1d9a7f
Revises: 4ca408115c1c
Create Date: 2026-11-22 03:40:00

"""
from alembic import op

revision = '5b2e0c1d9a7f'
down_revision = '4ca408115c1c'
branch_labels = None
depends_on = None

OLD = "state IN ('processed', 'queued', 'stored', 'failed')"
NEW = "state IN ('processed', 'queued', 'processing', 'stored', 'failed')"


def upgrade():
    # Enum values live in a CHECK constraint (native_enum=False); autogenerate cannot see them.
    with op.batch_alter_table('callback_inbox', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_callback_inbox_inboxstate'), type_='check')
        batch_op.create_check_constraint('inboxstate', NEW)


def downgrade():
    with op.batch_alter_table('callback_inbox', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_callback_inbox_inboxstate'), type_='check')
        batch_op.create_check_constraint('inboxstate', OLD)
