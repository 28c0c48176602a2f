"""staff sessions revocable server-side (session generation) and single-use TOTP codes

Revision ID: 5e1c7a9b3d42
Revises: 338a005ccf0d
Create Date: 2026-12-03 15:10:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "5e1c7a9b3d42"
down_revision = "338a005ccf0d"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("staff_users") as batch_op:
        batch_op.add_column(sa.Column("session_generation", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table("staff_users") as batch_op:
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("session_generation")
