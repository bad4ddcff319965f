"""Alarms: their specs and states, their history of transitions, and alarm webhooks in the
notification outbox.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state_since", sa.Float(), nullable=False),
        sa.Column("evaluated_at", sa.Float(), nullable=True),
        sa.Column("evaluation", sa.Text(), nullable=False),
        sa.Column("webhook_secret", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "alarm_transitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("alarm", sa.String(63), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("old_state", sa.String(24), nullable=False),
        sa.Column("new_state", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_alarm_transitions_alarm", "alarm_transitions", ["alarm"])
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("alarm", sa.String(63), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("alarm")
    op.drop_index("ix_alarm_transitions_alarm", "alarm_transitions")
    op.drop_table("alarm_transitions")
    op.drop_table("alarms")
