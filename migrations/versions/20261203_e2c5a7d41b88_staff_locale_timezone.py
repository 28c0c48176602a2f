"""staff: their language and timezone (the console speaks zh_CN unless they choose English)

Revision ID: e2c5a7d41b88
Revises: d7b3f0a6c912
Create Date: 2026-12-03 19:20:00

"""
import sqlalchemy as sa
from alembic import op

revision = 'e2c5a7d41b88'
down_revision = 'd7b3f0a6c912'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('staff_users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('staff_users', schema=None) as batch_op:
        batch_op.drop_column('timezone')
        batch_op.drop_column('locale')
