"""The repository's queries on metric points (a mixin of :class:`Repo`; see metrics/series.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelyard.controlplane.store.rows import MetricPointRow
from modelyard.metrics.series import Point


@dataclass(frozen=True, slots=True)
class SeriesKey:
    metric: str
    endpoint: str
    variant: str
    replica: str


class MetricQueries:
    s: Session

    def add_metric_points(self, points: list[tuple[SeriesKey, int, Point]]) -> None:
        """Store points (key, resolution, point); a point already stored for the same series
        and interval is merged with (a late report of an interval adds to it)."""
        for key, resolution, point in points:
            row = self.s.get(
                MetricPointRow,
                (key.metric, key.endpoint, key.variant, key.replica, resolution, point.at),
            )
            if row is None:
                self.s.add(
                    MetricPointRow(
                        metric=key.metric,
                        endpoint=key.endpoint,
                        variant=key.variant,
                        replica=key.replica,
                        resolution=resolution,
                        at=point.at,
                        count=point.count,
                        sum=point.sum,
                        min=point.min,
                        max=point.max,
                        buckets=point.buckets,
                    )
                )
                continue
            stored = _point(row)
            stored.merge(point)
            row.count, row.sum, row.min, row.max = stored.count, stored.sum, stored.min, stored.max
            row.buckets = stored.buckets
        self.s.flush()

    def metric_points(
        self,
        endpoint: str,
        since: float,
        until: float,
        *,
        metric: str | None = None,
        variant: str | None = None,
        resolution: int | None = None,
    ) -> dict[SeriesKey, list[Point]]:
        """The points of an endpoint's series in ``[since, until)``, oldest first."""
        query = select(MetricPointRow).where(
            MetricPointRow.endpoint == endpoint,
            MetricPointRow.at >= since,
            MetricPointRow.at < until,
        )
        if metric is not None:
            query = query.where(MetricPointRow.metric == metric)
        if variant is not None:
            query = query.where(MetricPointRow.variant == variant)
        if resolution is not None:
            query = query.where(MetricPointRow.resolution == resolution)
        out: dict[SeriesKey, list[Point]] = defaultdict(list)
        for row in self.s.scalars(query.order_by(MetricPointRow.at)):
            out[SeriesKey(row.metric, row.endpoint, row.variant, row.replica)].append(_point(row))
        return dict(out)

    def roll_up_metrics(self, before: float, source: int, target: int, limit: int = 5000) -> int:
        """Merge up to ``limit`` points of resolution ``source`` older than ``before`` into
        points of resolution ``target``, and delete them. Returns how many were rolled up."""
        rows = list(
            self.s.scalars(
                select(MetricPointRow)
                .where(MetricPointRow.resolution == source, MetricPointRow.at < before)
                .order_by(MetricPointRow.at)
                .limit(limit)
            )
        )
        merged: dict[tuple[SeriesKey, float], Point] = {}
        for row in rows:
            key = SeriesKey(row.metric, row.endpoint, row.variant, row.replica)
            at = row.at - row.at % target
            merged.setdefault((key, at), Point(at)).merge(_point(row))
            self.s.delete(row)
        self.s.flush()
        self.add_metric_points([(key, target, point) for (key, _), point in merged.items()])
        return len(rows)

    def purge_metrics(self, resolution: int, before: float) -> int:
        result: Any = self.s.execute(
            delete(MetricPointRow).where(
                MetricPointRow.resolution == resolution, MetricPointRow.at < before
            )
        )
        return int(result.rowcount or 0)


def _point(row: MetricPointRow) -> Point:
    return Point(
        row.at,
        row.count,
        row.sum,
        row.min,
        row.max,
        list(row.buckets) if row.buckets is not None else None,
    )
