"""campaign edit history: every edit of a draft is an event with its changes

Revision ID: b71d50281084
Revises: 33989cfd7c2f
Create Date: 2026-12-03 15:10:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "b71d50281084"
down_revision = "33989cfd7c2f"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("campaign_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("changes", sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table("campaign_events", schema=None) as batch_op:
        batch_op.drop_column("changes")
