"""What the policies read: target-tracking metrics over the window, and step alarms' breaches.

Pure functions of metric points (metrics/series.py) and specs. The **window** is the last
``window_s`` seconds (60 by default) of complete 10 s intervals: it ends at the latest multiple
of 10 s that is at least :data:`~modelyard.alarms.evaluate.SETTLE_S` (5 s) in the past, so the
recorder has written its points.

Each metric is read as a *load* — the variant's total over its replicas, averaged over the
window — divided by the current capacity for the value per instance (the policy's desired
capacity is then ``ceil(load / target)``, which is ``ceil(capacity × value / target)``):

- ``invocations_per_instance``: the variant's invocations in the window, per minute. A counter
  writes nothing for an interval without requests, so an interval counts as 0 when the recorder
  sampled the variant then (its ``replicas`` gauge has a point); with no such point there is no
  data.
- ``concurrent_requests_per_replica``: the endpoint's requests in progress at the gateway
  (sampled at every gateway sync), averaged; with several variants, the variant's share is its
  share of the window's invocations (by weight when there were none).
- ``cpu_utilization``: per 10 s interval, the sum of the variant's replicas' CPU (100 = one core),
  averaged over the intervals with samples.
- ``async_backlog_per_instance``: the endpoint's async requests queued or running, averaged over
  the intervals the recorder sampled (none in an interval: 0).
- ``p90_latency_ms`` is no load: its value is the 90th percentile of the variant's *model*
  latency over the window (``model_latency_ms``, the replicas' time as the gateway sees it, from
  the merged histograms: what more replicas can shorten, unlike a cold-start hold or a request
  refused at the gateway), and the desired capacity ``ceil(capacity × p90 / target)``. Without
  requests that reached a replica there is no data.

No data means the policy does not vote.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from modelyard.alarms.evaluate import SETTLE_S, period_values, window
from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.metrics.series import RESOLUTION_S, Point, merged, statistic
from modelyard.spec.alarms import AlarmSpec

DEFAULT_WINDOW_S = 60.0

Series = Mapping[SeriesKey, list[Point]]


@dataclass(frozen=True, slots=True)
class MetricReading:
    """A target-tracking metric over the window: ``value`` as the policy's metric reads it (per
    instance, or the p90 in ms); ``load`` the total it came from (None for latency)."""

    value: float
    load: float | None


@dataclass(frozen=True, slots=True)
class AlarmReading:
    """A step policy's alarm: its state ("" when there is no such alarm) and how far its latest
    period's value is past the threshold (value − threshold; None without data)."""

    state: str
    breach: float | None = None


def window_of(now: float, window_s: float = DEFAULT_WINDOW_S) -> tuple[float, float]:
    """``[start, end)`` of the complete 10 s intervals read at ``now``."""
    end = float(math.floor((now - SETTLE_S) / RESOLUTION_S) * RESOLUTION_S)
    return end - window_s, end


def _points(series: Series, metric: str, variant: str | None = None) -> list[Point]:
    return [
        point
        for key, points in series.items()
        if key.metric == metric and (variant is None or key.variant == variant)
        for point in points
    ]


def _sampled(series: Series, variant: str) -> int:
    """10 s intervals in which the recorder sampled the variant (its replicas gauge)."""
    return len({point.at for point in _points(series, "replicas", variant)})


def _share(series: Series, variant: str, weights: Mapping[str, float]) -> float:
    """The variant's share of the endpoint's traffic in the window."""
    if len(weights) <= 1:
        return 1.0
    total = sum(p.sum for p in _points(series, "invocations"))
    if total > 0:
        return sum(p.sum for p in _points(series, "invocations", variant)) / total
    weight_sum = sum(w for w in weights.values() if w > 0)
    return max(0.0, weights.get(variant, 0.0)) / weight_sum if weight_sum > 0 else 0.0


def _load(metric: str, series: Series, variant: str, weights: Mapping[str, float]) -> float | None:
    if metric == "invocations_per_instance":
        sampled = _sampled(series, variant)
        if not sampled:
            return None
        calls = sum(p.sum for p in _points(series, "invocations", variant))
        return calls * 60.0 / (sampled * RESOLUTION_S)
    if metric == "concurrent_requests_per_replica":
        point = merged(_points(series, "concurrent_requests"), 0.0)
        if point.count <= 0:
            return None
        return point.sum / point.count * _share(series, variant, weights)
    if metric == "cpu_utilization":
        per_interval: dict[float, float] = {}
        for key, points in series.items():
            if key.metric == "cpu_percent" and key.variant == variant:
                for p in points:
                    if p.count > 0:
                        per_interval[p.at] = per_interval.get(p.at, 0.0) + p.sum / p.count
        if not per_interval:
            return None
        return sum(per_interval.values()) / len(per_interval)
    if metric == "async_backlog_per_instance":
        backlog = _points(series, "async_backlog")
        sampled = max(_sampled(series, variant), len({p.at for p in backlog}))
        if not sampled:
            return None
        return sum(p.sum / p.count for p in backlog if p.count > 0) / sampled
    raise ValueError(f"not a load metric: {metric!r}")


def read_metric(
    metric: str,
    series: Series,
    variant: str,
    capacity: int,
    weights: Mapping[str, float],
) -> MetricReading | None:
    """``metric`` of ``variant`` over the window's points ``series`` (every series of its
    endpoint), or None without data. ``weights``: every variant's weight."""
    if metric == "p90_latency_ms":
        model = merged(_points(series, "model_latency_ms", variant), 0.0)
        p90 = statistic(model, "p90", "histogram")
        return None if p90 is None else MetricReading(p90, None)
    load = _load(metric, series, variant, weights)
    if load is None:
        return None
    return MetricReading(load / max(1, capacity), load)


def read_alarm(spec: AlarmSpec, state: str, points: Iterable[Point], now: float) -> AlarmReading:
    """A step policy's alarm: ``state`` as the evaluator stored it, and the breach of the latest
    period with data among those the alarm evaluates at ``now``."""
    start, end = window(spec, now)
    values = [v for v in period_values(spec, points, start, end) if v is not None]
    return AlarmReading(state, values[-1] - spec.threshold if values else None)
