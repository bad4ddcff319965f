"""Deployments: each rollout of a revision, its progress and its outcome.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("from_revision", sa.Integer(), nullable=True),
        sa.Column("to_revision", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(24), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("step_started_at", sa.Float(), nullable=True),
        sa.Column("restored", sa.Float(), nullable=False),
        sa.Column("rollback_batch", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("alarm", sa.String(63), nullable=True),
        sa.Column("abort_by", sa.String(128), nullable=True),
        sa.Column("log", sa.JSON(), nullable=False),
    )
    op.create_index("ix_deployments_endpoint_id", "deployments", ["endpoint", "id"])


def downgrade() -> None:
    op.drop_index("ix_deployments_endpoint_id", "deployments")
    op.drop_table("deployments")
