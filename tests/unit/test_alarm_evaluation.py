"""Alarm evaluation on synthetic series (alarms/evaluate.py): which periods are looked at, each
statistic of a period, each comparison, M of N, and each treatment of missing data."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.alarms.evaluate import (
    ALARM,
    INSUFFICIENT_DATA,
    OK,
    decide,
    evaluate,
    window,
)
from modelyard.alarms.evaluator import next_tick
from modelyard.errors import SpecError
from modelyard.metrics.series import N_BUCKETS, Point, bucket_of
from modelyard.spec import parse_document
from modelyard.spec.alarms import AlarmSpec

#: a multiple of 10, 60 and 3600: the end of the last complete period for every period_s used
END = 1_800_000_000.0
NOW = END + 5.0  # 5 s after the end: the period [END - period_s, END) is complete and written


def spec(**fields: Any) -> AlarmSpec:
    base: dict[str, Any] = {
        "metric": "invocations",
        "dimensions": {"endpoint": "e"},
        "statistic": "sum",
        "period_s": 10,
        "evaluation_periods": 1,
        "comparison": "greater_than",
        "threshold": 5,
    }
    return AlarmSpec.model_validate({**base, **fields})


def events(at: float, n: float) -> Point:
    point = Point(at)
    point.add_events(n)
    return point


def samples(at: float, *values: float) -> Point:
    point = Point(at)
    for value in values:
        point.add(value)
    return point


def latencies(at: float, values_ms: list[float]) -> Point:
    """A latency point as the recorder writes it: count, sum, max and buckets (no min)."""
    buckets = [0.0] * N_BUCKETS
    for value in values_ms:
        buckets[bucket_of(value)] += 1
    return Point(at, len(values_ms), sum(values_ms), None, max(values_ms), buckets)


def per_period(values: list[float | None], period_s: int = 10) -> list[Point]:
    """One counter point per period, oldest first, ending at END (None: no point)."""
    start = END - len(values) * period_s
    return [events(start + i * period_s, v) for i, v in enumerate(values) if v is not None]


# -- which periods ---------------------------------------------------------------------------


def test_the_window_is_the_last_n_periods_that_ended_at_least_5_s_ago() -> None:
    three_minutes = spec(period_s=60, evaluation_periods=3)
    assert window(three_minutes, END + 5.0) == (END - 180, END)
    assert window(three_minutes, END + 4.9) == (END - 240, END - 60)  # [END-60, END) not settled
    assert window(three_minutes, END + 64.9) == (END - 180, END)
    assert window(spec(), END + 15.0) == (END, END + 10)


def test_the_period_in_progress_and_an_unsettled_one_are_not_evaluated() -> None:
    alarm = spec(evaluation_periods=2, datapoints_to_alarm=1)
    points = [events(END - 20, 1), events(END - 10, 2), events(END, 100), events(END + 3, 100)]
    result = evaluate(alarm, points, END + 5.0, INSUFFICIENT_DATA)
    assert (result.start, result.end, result.values) == (END - 20, END, (1.0, 2.0))
    assert result.state == OK
    earlier = evaluate(alarm, points, END + 4.9, INSUFFICIENT_DATA)
    assert earlier.values == (None, 1.0)  # [END-10, END) ended 4.9 s ago: not yet


def test_ticks_fall_5_s_after_each_10_s_boundary() -> None:
    assert next_tick(END) == END + 5
    assert next_tick(END + 4.99) == END + 5
    assert next_tick(END + 5) == END + 15
    assert next_tick(END + 14.5) == END + 15


# -- each statistic ----------------------------------------------------------------------------

# 100 latencies: 90 at 8 ms (bucket 5–10), 9 at 80 ms (50–100), 1 at 700 ms (500–1000)
LATENCIES = [8.0] * 90 + [80.0] * 9 + [700.0]


@pytest.mark.parametrize(
    ("metric", "statistic", "points", "expected"),
    [
        ("invocations", "sum", [events(END - 10, 3), events(END - 10, 4)], 7.0),
        ("cpu_percent", "avg", [samples(END - 10, 10, 20, 30)], 20.0),
        ("cpu_percent", "sum", [samples(END - 10, 10, 20, 30)], 60.0),
        ("cpu_percent", "min", [samples(END - 10, 10, 20, 30)], 10.0),
        ("cpu_percent", "max", [samples(END - 10, 10, 20, 30)], 30.0),
        ("cpu_percent", "sample_count", [samples(END - 10, 10, 20, 30)], 3.0),
        ("latency_ms", "avg", [latencies(END - 10, LATENCIES)], (720 + 720 + 700) / 100),
        ("latency_ms", "max", [latencies(END - 10, LATENCIES)], 700.0),
        ("latency_ms", "sample_count", [latencies(END - 10, LATENCIES)], 100.0),
        # rank 50 of 90 in the 5–10 ms bucket, interpolated: 5 + 5 × 50/90
        ("latency_ms", "p50", [latencies(END - 10, LATENCIES)], 5 + 5 * 50 / 90),
        ("latency_ms", "p90", [latencies(END - 10, LATENCIES)], 10.0),  # the 90th: bucket's top
        ("latency_ms", "p99", [latencies(END - 10, LATENCIES)], 100.0),  # the 99th: 50–100's top
    ],
)
def test_each_statistic_of_a_period(
    metric: str, statistic: str, points: list[Point], expected: float
) -> None:
    alarm = spec(metric=metric, statistic=statistic, threshold=1_000_000)
    result = evaluate(alarm, points, NOW, INSUFFICIENT_DATA)
    assert result.values == (pytest.approx(expected),)
    assert result.state == OK


def test_p99_latency_alarm_names_its_values_in_the_reason() -> None:
    alarm = spec(metric="latency_ms", statistic="p99", threshold=99, evaluation_periods=3)
    points = [latencies(END - 30 + 10 * i, LATENCIES) for i in range(3)]
    result = evaluate(alarm, points, NOW, OK)
    assert result.state == ALARM
    assert result.reason == (
        "3 of the last 3 periods (10 s) had p99 latency_ms > 99.0: 100.0, 100.0, 100.0 "
        "(3 needed for ALARM)"
    )


# -- each comparison ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comparison", "value", "state"),
    [
        ("greater_than", 6, ALARM),
        ("greater_than", 5, OK),
        ("greater_or_equal", 5, ALARM),
        ("greater_or_equal", 4, OK),
        ("less_than", 4, ALARM),
        ("less_than", 5, OK),
        ("less_or_equal", 5, ALARM),
        ("less_or_equal", 6, OK),
    ],
)
def test_each_comparison_against_the_threshold(comparison: str, value: float, state: str) -> None:
    alarm = spec(comparison=comparison, threshold=5)
    assert evaluate(alarm, per_period([value]), NOW, INSUFFICIENT_DATA).state == state


# -- M of N ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "state", "breaching"),
    [
        ([6, 1, 7], ALARM, 2),
        ([6, 7, 8], ALARM, 3),
        ([6, 1, 1], OK, 1),
        ([1, 1, 1], OK, 0),
    ],
)
def test_two_of_three_periods_breaching_is_an_alarm(
    values: list[float], state: str, breaching: int
) -> None:
    alarm = spec(evaluation_periods=3, datapoints_to_alarm=2)
    result = evaluate(alarm, per_period(values), NOW, INSUFFICIENT_DATA)
    assert result.state == state
    assert result.reason.startswith(f"{breaching} of the last 3 periods (10 s)")
    assert result.reason.endswith("(2 needed for ALARM)")


def test_datapoints_to_alarm_defaults_to_evaluation_periods() -> None:
    alarm = spec(evaluation_periods=3)
    assert evaluate(alarm, per_period([6, 7, 1]), NOW, OK).state == OK
    assert evaluate(alarm, per_period([6, 7, 8]), NOW, OK).state == ALARM


# -- missing data ------------------------------------------------------------------------------

_ = None  # a period without a point


@pytest.mark.parametrize(
    ("values", "rule", "current", "state"),
    [
        # all three periods missing
        ([_, _, _], "missing", OK, INSUFFICIENT_DATA),
        ([_, _, _], "missing", ALARM, INSUFFICIENT_DATA),
        ([_, _, _], "ignore", ALARM, ALARM),
        ([_, _, _], "ignore", OK, OK),
        ([_, _, _], "ignore", INSUFFICIENT_DATA, INSUFFICIENT_DATA),
        ([_, _, _], "breaching", OK, ALARM),
        ([_, _, _], "not_breaching", ALARM, OK),
        # one breaching period of three, the others missing (2 of 3 needed)
        ([_, 9, _], "missing", ALARM, OK),
        ([_, 9, _], "ignore", ALARM, OK),
        ([_, 9, _], "breaching", OK, ALARM),
        ([_, 9, _], "not_breaching", ALARM, OK),
        # two breaching periods, one missing
        ([9, _, 9], "missing", OK, ALARM),
        ([9, _, 9], "ignore", OK, ALARM),
        ([9, _, 9], "breaching", OK, ALARM),
        ([9, _, 9], "not_breaching", OK, ALARM),
        # one breaching, one not, one missing: only `breaching` makes it two
        ([9, 1, _], "missing", ALARM, OK),
        ([9, 1, _], "ignore", ALARM, OK),
        ([9, 1, _], "breaching", OK, ALARM),
        ([9, 1, _], "not_breaching", ALARM, OK),
    ],
)
def test_each_treatment_of_missing_data(
    values: list[float | None], rule: str, current: str, state: str
) -> None:
    alarm = spec(evaluation_periods=3, datapoints_to_alarm=2, treat_missing_data=rule)
    assert evaluate(alarm, per_period(values), NOW, current).state == state


def test_reasons_for_missing_data() -> None:
    missing = spec(evaluation_periods=3, dimensions={"endpoint": "e", "variant": "blue"})
    state, reason = decide(missing, [None, None, None], OK)
    assert (state, reason) == (
        INSUFFICIENT_DATA,
        "no data for sum invocations of e variant blue in the last 3 periods (10 s)",
    )
    kept = spec(evaluation_periods=3, treat_missing_data="ignore")
    assert decide(kept, [None, None, None], ALARM)[1].endswith(
        "; state kept (treat_missing_data: ignore)"
    )
    breaching = spec(evaluation_periods=3, datapoints_to_alarm=2, treat_missing_data="breaching")
    assert decide(breaching, [None, 9.0, 1.0], OK) == (
        ALARM,
        "2 of the last 3 periods (10 s) had sum invocations > 5.0: no data, 9.0, 1.0 "
        "(2 needed for ALARM; no data counts as breaching)",
    )


def test_a_counter_without_events_has_no_point_so_its_period_is_missing() -> None:
    """Traffic stops: no invocations point is written, and the period is missing, not 0."""
    alarm = spec(metric="invocations", comparison="less_than", threshold=1)
    assert evaluate(alarm, [], NOW, OK).state == INSUFFICIENT_DATA
    idle = spec(treat_missing_data="breaching", comparison="less_than", threshold=1)
    assert evaluate(idle, [], NOW, OK).state == ALARM


# -- merging -----------------------------------------------------------------------------------


def test_series_of_variants_and_replicas_merge_into_one_value_per_period() -> None:
    # invocations of two variants (two series) in the same period: their sum
    variants = [events(END - 10, 4), events(END - 10, 3)]
    assert evaluate(spec(), variants, NOW, OK).values == (7.0,)
    # cpu of two replicas: avg over every sample of both, max the hottest replica's
    replicas = [samples(END - 10, 10, 30), samples(END - 10, 80, 80)]
    cpu_avg = spec(metric="cpu_percent", statistic="avg", threshold=50)
    cpu_max = spec(metric="cpu_percent", statistic="max", threshold=50)
    assert evaluate(cpu_avg, replicas, NOW, OK).values == (50.0,)
    assert evaluate(cpu_avg, replicas, NOW, OK).state == OK  # 50 is not > 50
    assert evaluate(cpu_max, replicas, NOW, OK).values == (80.0,)
    assert evaluate(cpu_max, replicas, NOW, OK).state == ALARM


def test_a_period_longer_than_10_s_merges_its_10_s_points() -> None:
    minute = spec(period_s=60, evaluation_periods=2, datapoints_to_alarm=1, threshold=5)
    last = [events(END - 60 + 10 * i, 1) for i in range(6)]  # 6 events in the last minute
    before = [events(END - 120 + 10 * i, 0.5) for i in range(4)]  # 2 in the one before
    result = evaluate(minute, [*before, *last], NOW, OK)
    assert result.values == (2.0, 6.0)
    assert result.state == ALARM
    gauges = [samples(END - 60 + 10 * i, float(i)) for i in range(6)]  # 0..5
    avg = spec(metric="replicas", statistic="avg", period_s=60, threshold=2)
    assert evaluate(avg, gauges, NOW, OK).values == (2.5,)
    slow = [latencies(END - 60, [8.0] * 50), latencies(END - 30, [60.0, 70, 80, 90, 100] * 10)]
    p90 = spec(metric="latency_ms", statistic="p90", period_s=60, threshold=60)
    result = evaluate(p90, slow, NOW, OK)
    assert result.values == (pytest.approx(50 + 50 * 40 / 50),)  # rank 90: 40th of 50–100
    assert result.state == ALARM


# -- the spec's rules, each naming its field ---------------------------------------------------


PER_VARIANT = {"endpoint": "e", "variant": "v"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"metric": "qps"}, "metric", "must be one of invocations"),
        ({"statistic": "p99"}, "statistic", "invocations is a counter: its only statistic is sum"),
        ({"statistic": "median"}, "statistic", "must be one of avg"),
        ({"metric": "latency_ms", "statistic": "min"}, "statistic", "latency_ms is a histogram"),
        ({"period_s": 15}, "period_s", "multiple of 10"),
        ({"period_s": 0}, "period_s", "greater than or equal to 10"),
        ({"evaluation_periods": 0}, "evaluation_periods", "greater than or equal to 1"),
        ({"period_s": 3600, "evaluation_periods": 25}, "evaluation_periods", "at most 86400"),
        ({"evaluation_periods": 2, "datapoints_to_alarm": 3}, "datapoints_to_alarm", "at most"),
        ({"comparison": ">"}, "comparison", "must be one of 'greater_than'"),
        ({"treat_missing_data": "zero"}, "treat_missing_data", "must be one of 'missing'"),
        ({"threshold": "high"}, "threshold", "valid number"),
        ({"dimensions": {}}, "dimensions.endpoint", "Field required"),
        ({"dimensions": {"endpoint": "a b"}}, "dimensions.endpoint", "pattern"),
        (
            {"metric": "concurrent_requests", "statistic": "max", "dimensions": PER_VARIANT},
            "dimensions",
            "measured for the whole endpoint",
        ),
        ({"actions": {"alarm": ["not a url"]}}, "actions.alarm[0]", "URL"),
        ({"actions": {"page": []}}, "actions.page", "unknown field"),
    ],
)
def test_a_bad_alarm_spec_is_refused_naming_the_field(
    change: dict[str, Any], field: str, words: str
) -> None:
    body = {
        "metric": "invocations",
        "dimensions": {"endpoint": "e"},
        "statistic": "sum",
        "comparison": "greater_than",
        "threshold": 5,
        **change,
    }
    with pytest.raises(SpecError) as caught:
        parse_document({"kind": "Alarm", "name": "a", "spec": body}, "documents[0]")
    assert caught.value.field == f"documents[0].spec.{field}"
    assert words in caught.value.message
