"""callback inbox: claimed_at, so a stuck 'processing' row is judged by its claim, not its receipt

Revision ID: b3e91c4d7a25
Revises: b71d50281084
Create Date: 2026-12-03 15:30:00

"""
import sqlalchemy as sa
from alembic import op

revision = 'b3e91c4d7a25'
down_revision = "b71d50281084"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('callback_inbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('callback_inbox', schema=None) as batch_op:
        batch_op.drop_column('claimed_at')
