"""Datasets' records, fine-tuning jobs with worker leases, and their events.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("input_dim", sa.Integer),
        sa.Column("output_dim", sa.Integer),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("filename", sa.String(200)),
    )
    op.create_index("datasets_by_project", "datasets", ["project_id", "created_at"])
    op.create_table(
        "jobs",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("adapter_name", sa.String(200), nullable=False),
        sa.Column("training_dataset", sa.String(64), nullable=False),
        sa.Column("validation_dataset", sa.String(64)),
        sa.Column("hyperparameters", sa.Text, nullable=False),
        sa.Column("progress", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("worker_id", sa.String(64)),
        sa.Column("lease_expires_ms", sa.BigInteger),
    )
    op.create_index("jobs_by_status", "jobs", ["status", "seq"])
    op.create_index("jobs_by_project", "jobs", ["project_id", "seq"])
    op.create_table(
        "job_events",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.Text),
    )
    op.create_index("job_events_by_job", "job_events", ["job_id", "seq"])


def downgrade() -> None:
    for table in ("job_events", "jobs", "datasets"):
        op.drop_table(table)
