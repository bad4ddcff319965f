"""Metrics as time series: points at 10 s, rolled up to 1 min.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_points",
        sa.Column("metric", sa.String(48), primary_key=True),
        sa.Column("endpoint", sa.String(63), primary_key=True),
        sa.Column("variant", sa.String(63), primary_key=True),
        sa.Column("replica", sa.String(32), primary_key=True),
        sa.Column("resolution", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), primary_key=True),
        sa.Column("count", sa.Float(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("buckets", sa.JSON(), nullable=True),
    )
    op.create_index(
        "ix_metric_points_endpoint_resolution_at",
        "metric_points",
        ["endpoint", "resolution", "at"],
    )
    op.create_index(
        "ix_metric_points_endpoint_metric_at", "metric_points", ["endpoint", "metric", "at"]
    )


def downgrade() -> None:
    op.drop_index("ix_metric_points_endpoint_metric_at", "metric_points")
    op.drop_index("ix_metric_points_endpoint_resolution_at", "metric_points")
    op.drop_table("metric_points")
