"""The repository's queries on autoscaling: variants' capacities and their scaling activities
(a mixin of :class:`Repo`; see controlplane/autoscale/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelyard.controlplane.store.rows import ScalingActivityRow, VariantCapacityRow

#: activities kept per endpoint (older ones are forgotten as new ones come)
ACTIVITIES_KEPT = 500


@dataclass(frozen=True, slots=True)
class CapacityRecord:
    endpoint: str
    variant: str
    config: dict[str, Any]
    capacity: int
    min: int
    max: int
    configured_at: float
    scheduled_at: float | None
    last_scale_out_at: float | None
    last_scaling_at: float | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class ScalingActivityRecord:
    id: int
    endpoint: str
    variant: str
    at: float
    from_capacity: int
    to_capacity: int
    cause: str
    details: dict[str, Any]


_CAPACITY_FIELDS = CapacityRecord.__dataclass_fields__


def _capacity(row: VariantCapacityRow) -> CapacityRecord:
    return CapacityRecord(**{name: getattr(row, name) for name in _CAPACITY_FIELDS})


class AutoscaleQueries:
    s: Session

    def list_capacities(self, endpoint: str | None = None) -> list[CapacityRecord]:
        query = select(VariantCapacityRow).order_by(
            VariantCapacityRow.endpoint, VariantCapacityRow.variant
        )
        if endpoint is not None:
            query = query.where(VariantCapacityRow.endpoint == endpoint)
        return [_capacity(row) for row in self.s.scalars(query)]

    def put_capacity(self, record: CapacityRecord) -> None:
        """Create or replace the capacity of ``record``'s endpoint and variant."""
        row = self.s.get(VariantCapacityRow, (record.endpoint, record.variant))
        if row is None:
            self.s.add(
                VariantCapacityRow(**{name: getattr(record, name) for name in _CAPACITY_FIELDS})
            )
            return
        for name in _CAPACITY_FIELDS:
            setattr(row, name, getattr(record, name))

    def delete_capacity(self, endpoint: str, variant: str | None = None) -> None:
        """Forget a variant's capacity (every variant's without ``variant``)."""
        query = delete(VariantCapacityRow).where(VariantCapacityRow.endpoint == endpoint)
        if variant is not None:
            query = query.where(VariantCapacityRow.variant == variant)
        self.s.execute(query)

    def add_scaling_activity(
        self,
        endpoint: str,
        variant: str,
        at: float,
        from_capacity: int,
        to_capacity: int,
        cause: str,
        details: dict[str, Any],
    ) -> None:
        self.s.add(
            ScalingActivityRow(
                endpoint=endpoint,
                variant=variant,
                at=at,
                from_capacity=from_capacity,
                to_capacity=to_capacity,
                cause=cause,
                details=details,
            )
        )
        self.s.flush()
        oldest_kept = self.s.scalar(
            select(ScalingActivityRow.id)
            .where(ScalingActivityRow.endpoint == endpoint)
            .order_by(ScalingActivityRow.id.desc())
            .offset(ACTIVITIES_KEPT - 1)
            .limit(1)
        )
        if oldest_kept is not None:
            self.s.execute(
                delete(ScalingActivityRow).where(
                    ScalingActivityRow.endpoint == endpoint, ScalingActivityRow.id < oldest_kept
                )
            )

    def list_scaling_activities(
        self, endpoint: str, limit: int = 20, variant: str | None = None
    ) -> list[ScalingActivityRecord]:
        """An endpoint's most recent activities, newest first."""
        query = select(ScalingActivityRow).where(ScalingActivityRow.endpoint == endpoint)
        if variant is not None:
            query = query.where(ScalingActivityRow.variant == variant)
        rows = self.s.scalars(query.order_by(ScalingActivityRow.id.desc()).limit(limit))
        return [
            ScalingActivityRecord(
                r.id,
                r.endpoint,
                r.variant,
                r.at,
                r.from_capacity,
                r.to_capacity,
                r.cause,
                r.details,
            )
            for r in rows
        ]

    def delete_scaling_activities(self, endpoint: str) -> None:
        self.s.execute(delete(ScalingActivityRow).where(ScalingActivityRow.endpoint == endpoint))
