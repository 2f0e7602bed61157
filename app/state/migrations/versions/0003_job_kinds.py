"""Jobs of two kinds: fine-tuning (every job so far) and composition (POST /v1/adapters/compose
of a composition too large to make during the request).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite alters a table by copying it
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="fine_tuning")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("kind")
