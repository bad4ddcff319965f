"""What target-tracking and step policies read from metric points: loads per metric, the
window, no data, a variant's share, an alarm's breach."""

from __future__ import annotations

import pytest

from modelyard.controlplane.autoscale.readings import (
    MetricReading,
    read_alarm,
    read_metric,
    window_of,
)
from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.metrics.series import N_BUCKETS, Point, bucket_of
from modelyard.spec.alarms import AlarmSpec

T0 = 1_800_000_000.0  # a multiple of 10
ONE = {"v": 1.0}


def gauge(at: float, *values: float) -> Point:
    point = Point(at)
    for value in values:
        point.add(value)
    return point


def counter(at: float, n: float) -> Point:
    point = Point(at)
    point.add_events(n)
    return point


def key(metric: str, variant: str = "v", replica: str = "") -> SeriesKey:
    return SeriesKey(metric, "e", variant, replica)


def heartbeat(intervals: int, variant: str = "v") -> dict[SeriesKey, list[Point]]:
    """The recorder's replicas gauge for ``intervals`` 10 s intervals from T0."""
    return {key("replicas", variant): [gauge(T0 + 10 * i, 1) for i in range(intervals)]}


def test_the_window_ends_at_the_latest_settled_interval() -> None:
    assert window_of(T0 + 4.9, 60) == (T0 - 70, T0 - 10)
    assert window_of(T0 + 5.0, 60) == (T0 - 60, T0)
    assert window_of(T0 + 14.9, 30) == (T0 - 30, T0)


def test_invocations_per_instance_is_per_minute_and_counts_quiet_intervals_as_zero() -> None:
    series = {
        **heartbeat(6),  # one minute sampled
        key("invocations"): [counter(T0, 300), counter(T0 + 20, 300)],  # 4 intervals without
    }
    reading = read_metric("invocations_per_instance", series, "v", 2, ONE)
    assert reading == MetricReading(300.0, 600.0)  # 600 a minute, for 2 instances


def test_invocations_over_part_of_the_window_are_a_rate_over_what_was_sampled() -> None:
    series = {**heartbeat(2), key("invocations"): [counter(T0, 100), counter(T0 + 10, 100)]}
    reading = read_metric("invocations_per_instance", series, "v", 1, ONE)
    assert reading is not None and reading.load == 600.0


def test_invocations_without_samples_are_no_data() -> None:
    series = {key("invocations"): [counter(T0, 100)]}
    assert read_metric("invocations_per_instance", series, "v", 1, ONE) is None


def test_concurrency_is_the_average_of_the_endpoints_samples() -> None:
    series = {key("concurrent_requests", ""): [gauge(T0, 2, 4, 6), gauge(T0 + 10, 0, 0, 0)]}
    reading = read_metric("concurrent_requests_per_replica", series, "v", 2, ONE)
    assert reading == MetricReading(1.0, 2.0)


def test_concurrency_is_shared_by_the_variants_invocations() -> None:
    series = {
        key("concurrent_requests", ""): [gauge(T0, 8)],
        key("invocations", "a"): [counter(T0, 30)],
        key("invocations", "b"): [counter(T0, 10)],
    }
    weights = {"a": 1.0, "b": 1.0}
    assert read_metric("concurrent_requests_per_replica", series, "a", 1, weights) == (
        MetricReading(6.0, 6.0)
    )
    reading_b = read_metric("concurrent_requests_per_replica", series, "b", 1, weights)
    assert reading_b is not None and reading_b.load == 2.0


def test_concurrency_without_invocations_is_shared_by_weight() -> None:
    series = {key("concurrent_requests", ""): [gauge(T0, 4)]}
    weights = {"a": 3.0, "b": 1.0}
    reading = read_metric("concurrent_requests_per_replica", series, "a", 1, weights)
    assert reading is not None and reading.load == 3.0


def test_cpu_sums_the_replicas_of_each_interval_then_averages() -> None:
    series = {
        key("cpu_percent", replica="r1"): [gauge(T0, 80), gauge(T0 + 10, 60)],
        key("cpu_percent", replica="r2"): [gauge(T0, 40), gauge(T0 + 10, 20)],
        key("cpu_percent", "other", replica="r3"): [gauge(T0, 100)],
    }
    reading = read_metric("cpu_utilization", series, "v", 2, ONE)
    assert reading == MetricReading(50.0, 100.0)  # (120 + 80) / 2 intervals, over 2 replicas


def test_async_backlog_counts_unsampled_backlog_as_zero() -> None:
    series = {**heartbeat(4, "v"), key("async_backlog", ""): [gauge(T0, 12), gauge(T0 + 10, 4)]}
    reading = read_metric("async_backlog_per_instance", series, "v", 2, ONE)
    assert reading == MetricReading(2.0, 4.0)  # 16 over 4 intervals, for 2 instances


def test_async_backlog_at_zero_capacity_still_has_a_load() -> None:
    series = {**heartbeat(1), key("async_backlog", ""): [gauge(T0, 5)]}
    reading = read_metric("async_backlog_per_instance", series, "v", 0, ONE)
    assert reading == MetricReading(5.0, 5.0)


def latency(at: float, *values_ms: float) -> Point:
    buckets = [0.0] * N_BUCKETS
    for value in values_ms:
        buckets[bucket_of(value)] += 1
    return Point(at, len(values_ms), sum(values_ms), min(values_ms), max(values_ms), buckets)


def test_p90_latency_is_read_from_the_merged_model_latency_histograms() -> None:
    series = {
        key("model_latency_ms"): [latency(T0, *[40.0] * 9), latency(T0 + 10, 400.0)],
        # the total (a cold-start hold, a queue at the gateway) is not what replicas shorten
        key("latency_ms"): [latency(T0, *[4000.0] * 10)],
    }
    reading = read_metric("p90_latency_ms", series, "v", 3, ONE)
    assert reading is not None and reading.load is None
    assert 20 <= reading.value <= 50
    only_total = {key("latency_ms"): [latency(T0, *[4000.0] * 10)]}
    assert read_metric("p90_latency_ms", only_total, "v", 3, ONE) is None


@pytest.mark.parametrize(
    "metric",
    [
        "concurrent_requests_per_replica",
        "cpu_utilization",
        "p90_latency_ms",
        "async_backlog_per_instance",
    ],
)
def test_no_points_is_no_data(metric: str) -> None:
    assert read_metric(metric, {}, "v", 1, ONE) is None


def test_an_alarms_breach_is_its_latest_value_with_data_past_the_threshold() -> None:
    spec = AlarmSpec.model_validate(
        {
            "metric": "invocations",
            "dimensions": {"endpoint": "e"},
            "statistic": "sum",
            "period_s": 10,
            "evaluation_periods": 3,
            "comparison": "greater_than",
            "threshold": 50,
        }
    )
    now = T0 + 35.0  # evaluates [T0, T0 + 30)
    points = [counter(T0, 70), counter(T0 + 10, 80)]  # the last period has no data
    reading = read_alarm(spec, "ALARM", points, now)
    assert (reading.state, reading.breach) == ("ALARM", 30.0)
    assert read_alarm(spec, "OK", [], now).breach is None
