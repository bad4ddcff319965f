"""Batch transform jobs.

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
    op.create_table(
        "transform_jobs",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("model", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=True),
        sa.Column("total_records", sa.BigInteger(), nullable=True),
        sa.Column("cursor", sa.JSON(), nullable=False),
        sa.Column("failure_bytes", sa.BigInteger(), nullable=False),
        sa.Column("records_done", sa.BigInteger(), nullable=False),
        sa.Column("records_failed", sa.BigInteger(), nullable=False),
        sa.Column("replicas", sa.JSON(), nullable=False),
        sa.Column("run_seconds", sa.Float(), nullable=False),
    )
    op.create_index("ix_transform_jobs_status", "transform_jobs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_transform_jobs_status", "transform_jobs")
    op.drop_table("transform_jobs")
