"""Serverless and async endpoints: request activity, webhook secrets, cold-start counters, the
async queue and the notification outbox.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("last_request_at", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("webhook_secret", sa.String(64), nullable=False, server_default="")
        )
    with op.batch_alter_table("invocation_counters") as batch:
        batch.add_column(sa.Column("cold_starts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cold_start_ms", sa.Float(), nullable=False, server_default="0"))
    op.create_table(
        "async_invocations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("input_uri", sa.Text(), nullable=False),
        sa.Column("input_owned", sa.Boolean(), nullable=False),
        sa.Column("input_bytes", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("accept", sa.Text(), nullable=False),
        sa.Column("custom_attributes", sa.Text(), nullable=False),
        sa.Column("client_inference_id", sa.Text(), nullable=False),
        sa.Column("output_location", sa.Text(), nullable=False),
        sa.Column("failure_location", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("replica_id", sa.String(32), nullable=True),
        sa.Column("dispatcher", sa.String(32), nullable=True),
        sa.Column("output_bytes", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_async_invocations_endpoint_state", "async_invocations", ["endpoint", "state"]
    )
    op.create_index(
        "ix_async_invocations_state_expires_at", "async_invocations", ["state", "expires_at"]
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("inference_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_notifications_endpoint", "notifications", ["endpoint"])
    op.create_index("ix_notifications_state_next_at", "notifications", ["state", "next_at"])


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("async_invocations")
    with op.batch_alter_table("invocation_counters") as batch:
        batch.drop_column("cold_start_ms")
        batch.drop_column("cold_starts")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("webhook_secret")
        batch.drop_column("last_request_at")
