"""Autoscaling: each variant's capacity and bounds, and its scaling activities.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "variant_capacities",
        sa.Column("endpoint", sa.String(63), primary_key=True),
        sa.Column("variant", sa.String(63), primary_key=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("min", sa.Integer(), nullable=False),
        sa.Column("max", sa.Integer(), nullable=False),
        sa.Column("configured_at", sa.Float(), nullable=False),
        sa.Column("scheduled_at", sa.Float(), nullable=True),
        sa.Column("last_scale_out_at", sa.Float(), nullable=True),
        sa.Column("last_scaling_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "scaling_activities",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("variant", sa.String(63), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("from_capacity", sa.Integer(), nullable=False),
        sa.Column("to_capacity", sa.Integer(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_scaling_activities_endpoint_id", "scaling_activities", ["endpoint", "id"])


def downgrade() -> None:
    op.drop_index("ix_scaling_activities_endpoint_id", "scaling_activities")
    op.drop_table("scaling_activities")
    op.drop_table("variant_capacities")
