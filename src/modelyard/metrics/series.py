"""Time series of endpoint metrics: points, how they merge, and the statistics read from them.

A point summarises one metric of one endpoint (variant, replica) over one interval of
``resolution`` seconds starting at ``at``: how many observations (``count``), their ``sum``,
``min`` and ``max``, and for latencies the count in each histogram bucket (``buckets``, upper
bounds in :data:`LATENCY_BOUNDS_MS`, the last one unbounded). Counters (invocations, errors,
cold starts) are points whose ``sum`` is the number of events. A distribution (batch sizes) has
only ``count`` and ``sum`` (model calls and their rows): its average, no extremes, no
percentiles. Points merge exactly (sums of
counts and sums, min of mins, max of maxes, bucket by bucket), so a 1-minute roll-up of six
10-second points is the same point the minute would have had.

Percentiles are read from the buckets: the bucket holding the wanted rank, interpolated linearly
inside it (and clamped to the points' min and max), as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: upper bounds of the latency buckets (milliseconds); one more bucket holds the rest
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip
N_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
RESOLUTION_S = 10
ROLLUP_S = 60

#: A gateway's counts of one variant (its "slot", dataplane/gateway_metrics.py), as it sends them
#: to the control plane: [invocations, 4xx, 5xx, cold starts, cold-start ms], then a histogram
#: for each latency metric at its offset here, each [sum ms, max ms, *buckets]. Slots from an
#: older gateway may end early (a histogram missing is no data).
HISTOGRAM_SIZE = 2 + N_BUCKETS
SLOT_HISTOGRAMS: dict[str, int] = {
    "latency_ms": 5,
    "model_latency_ms": 5 + HISTOGRAM_SIZE,
    "overhead_latency_ms": 5 + 2 * HISTOGRAM_SIZE,
}
#: then a shadow variant's copies: [compared with production, agreed, shed]
SLOT_SHADOW: dict[str, int] = {
    "shadow_compared": 5 + 3 * HISTOGRAM_SIZE,
    "shadow_agreed": 6 + 3 * HISTOGRAM_SIZE,
    "shadow_shed": 7 + 3 * HISTOGRAM_SIZE,
}
SLOT_SIZE = 8 + 3 * HISTOGRAM_SIZE

#: every metric kept, with what it measures and its kind
METRICS: dict[str, tuple[str, str]] = {
    "invocations": ("counter", "requests answered by the gateway"),
    "errors_4xx": ("counter", "requests answered with a 4xx status"),
    "errors_5xx": ("counter", "requests answered with a 5xx status"),
    "latency_ms": ("histogram", "time from a request's arrival to its answer, at the gateway"),
    "model_latency_ms": (
        "histogram",
        "time a replica took to answer, seen from the gateway (request sent to answer received)",
    ),
    "overhead_latency_ms": (
        "histogram",
        "latency_ms minus model_latency_ms: the gateway's own time (a cold-start hold included)",
    ),
    "concurrent_requests": ("gauge", "requests in progress at the gateway (sampled)"),
    "cold_starts": ("counter", "serverless requests held while a replica started"),
    "replicas": ("gauge", "replicas ready to serve"),
    "cpu_percent": ("gauge", "a replica's CPU use (100 = one core)"),
    "memory_mb": ("gauge", "a replica's resident memory"),
    "batch_size": ("distribution", "rows per model call at a replica (count: calls, sum: rows)"),
    "shadow_compared": ("counter", "a shadow variant's answers compared with production's"),
    "shadow_agreed": ("counter", "a shadow variant's answers that agreed with production's"),
    "shadow_shed": ("counter", "copies for a shadow variant dropped: too many in flight"),
    "async_backlog": ("gauge", "async requests queued or running"),
    "async_oldest_age_s": ("gauge", "age of the oldest queued async request"),
}
STATISTICS = ("avg", "sum", "min", "max", "sample_count", "p50", "p90", "p99")


@dataclass(slots=True)
class Point:
    at: float
    count: float = 0.0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    buckets: list[float] | None = field(default=None)

    def add(self, value: float, weight: float = 1.0) -> None:
        """One observation (a gauge sample, a latency)."""
        self.count += weight
        self.sum += value * weight
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)

    def add_events(self, n: float) -> None:
        """``n`` counted events (a counter)."""
        self.count += 1
        self.sum += n

    def merge(self, other: Point) -> None:
        self.count += other.count
        self.sum += other.sum
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)
        if other.max is not None:
            self.max = other.max if self.max is None else max(self.max, other.max)
        if other.buckets is not None:
            if self.buckets is None:
                self.buckets = [0.0] * len(other.buckets)
            for i, n in enumerate(other.buckets):
                self.buckets[i] += n


def bucket_of(value_ms: float) -> int:
    """The latency bucket a value falls in (bounds are inclusive upper bounds)."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, value_ms)


def merged(points: Iterable[Point], at: float) -> Point:
    out = Point(at)
    for point in points:
        out.merge(point)
    return out


def statistic(point: Point, stat: str, kind: str) -> float | None:
    """A statistic of one (merged) point; None when the point has no data for it. A counter
    has only a sum (its events in the period); only a histogram has percentiles."""
    if stat not in STATISTICS:
        raise ValueError(f"unknown statistic {stat!r}; one of {', '.join(STATISTICS)}")
    if stat == "sum":
        return point.sum
    if kind == "counter":
        return None
    if stat == "sample_count":
        return point.count
    if point.count <= 0:
        return None
    if stat == "avg":
        return point.sum / point.count
    if stat == "min":
        return point.min
    if stat == "max":
        return point.max
    if stat in ("p50", "p90", "p99"):
        q = {"p50": 0.5, "p90": 0.9, "p99": 0.99}[stat]
        if kind != "histogram" or point.buckets is None:
            return None  # a gauge or a distribution keeps no buckets
        return quantile(point.buckets, q, point.min, point.max)
    return None


def quantile(
    buckets: Sequence[float], q: float, low: float | None, high: float | None
) -> float | None:
    """The ``q`` quantile of a bucketed distribution (see the module docstring)."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(buckets):
        if n <= 0:
            continue
        if seen + n >= rank:
            lower = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0.0
            upper = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else (high or lower)
            value = lower + (upper - lower) * ((rank - seen) / n)
            if low is not None:
                value = max(value, low)
            return value if high is None else min(value, high)
        seen += n
    return high


def periods(
    points: Iterable[Point], period_s: int, start: float, end: float
) -> list[tuple[float, Point | None]]:
    """The points merged into consecutive periods ``[start, end)`` of ``period_s`` seconds:
    one entry a period, None for a period without any point (missing data)."""
    count = max(0, math.ceil((end - start) / period_s))
    groups: list[list[Point]] = [[] for _ in range(count)]
    for point in points:
        if start <= point.at < end:
            groups[int((point.at - start) // period_s)].append(point)
    return [
        (start + i * period_s, merged(group, start + i * period_s) if group else None)
        for i, group in enumerate(groups)
    ]
