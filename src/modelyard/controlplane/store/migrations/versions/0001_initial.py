"""Models, endpoints, revisions, replicas, events and invocation counters.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "endpoints",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("target_revision", sa.Integer(), nullable=False),
        sa.Column("active_revision", sa.Integer(), nullable=True),
        sa.Column("deleting", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "endpoint_revisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "endpoint",
            sa.String(63),
            sa.ForeignKey("endpoints.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("endpoint", "number"),
    )
    op.create_index("ix_endpoint_revisions_endpoint", "endpoint_revisions", ["endpoint"])
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "endpoint",
            sa.String(63),
            sa.ForeignKey("endpoints.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_started_at", sa.Float(), nullable=True),
        sa.Column("address", sa.String(255), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("ever_ready", sa.Boolean(), nullable=False),
        sa.Column("last_exit_code", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.Column("next_start_at", sa.Float(), nullable=True),
        sa.Column("stop_requested_at", sa.Float(), nullable=True),
        sa.Column("signalled", sa.Integer(), nullable=False),
    )
    op.create_index("ix_replicas_endpoint", "replicas", ["endpoint"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_index("ix_events_endpoint", "events", ["endpoint"])
    op.create_table(
        "invocation_counters",
        sa.Column("endpoint", sa.String(63), primary_key=True),
        sa.Column("variant", sa.String(63), primary_key=True),
        sa.Column("invocations", sa.Integer(), nullable=False),
        sa.Column("errors_4xx", sa.Integer(), nullable=False),
        sa.Column("errors_5xx", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    for table in (
        "invocation_counters",
        "events",
        "replicas",
        "endpoint_revisions",
        "endpoints",
        "models",
    ):
        op.drop_table(table)
