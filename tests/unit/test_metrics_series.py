"""Metric points: how they merge, the statistics read from them, periods, the roll-up in the
store, and the control plane's recorder on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.controlplane.store.repo import Store
from modelyard.errors import StoreError
from modelyard.metrics.recorder import Recorder
from modelyard.metrics.series import (
    LATENCY_BOUNDS_MS,
    N_BUCKETS,
    SLOT_HISTOGRAMS,
    SLOT_SIZE,
    Point,
    merged,
    periods,
    quantile,
    statistic,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store("sqlite:///" + str(tmp_path / "s.db"))
    s.migrate()
    yield s
    s.close()


def buckets(**counts: float) -> list[float]:
    """A histogram with ``b<i>=n``: n observations in bucket i (upper bound LATENCY_BOUNDS_MS[i])."""
    out = [0.0] * N_BUCKETS
    for name, n in counts.items():
        out[int(name[1:])] = n
    return out


def latency_point(at: float, values_ms: list[float]) -> Point:
    point = Point(at, buckets=[0.0] * N_BUCKETS)
    for ms in values_ms:
        point.add(ms)
        assert point.buckets is not None
        point.buckets[sum(1 for bound in LATENCY_BOUNDS_MS if bound < ms)] += 1
    return point


# points and statistics --------------------------------------------------------------------------
def test_merging_adds_counts_sums_and_buckets_and_keeps_the_extremes() -> None:
    a = Point(0, 2, 10.0, 4.0, 6.0, buckets(b3=1, b4=1))
    b = Point(10, 3, 3.0, 0.5, 1.5, buckets(b1=2, b2=1))
    a.merge(b)
    assert (a.count, a.sum, a.min, a.max) == (5, 13.0, 0.5, 6.0)
    assert a.buckets == buckets(b1=2, b2=1, b3=1, b4=1)
    empty = Point(0)
    empty.merge(Point(0))  # nothing observed: no extremes, no histogram
    assert (empty.count, empty.min, empty.max, empty.buckets) == (0, None, None, None)
    empty.merge(b)
    assert empty.buckets == b.buckets and empty.buckets is not b.buckets


def test_a_counter_has_only_a_sum() -> None:
    point = Point(0)
    point.add_events(7)
    point.add_events(0)
    assert statistic(point, "sum", "counter") == 7
    for stat in ("avg", "min", "max", "sample_count", "p50", "p90", "p99"):
        assert statistic(point, stat, "counter") is None


def test_a_gauge_has_every_statistic_but_percentiles() -> None:
    point = Point(0)
    for value in (2.0, 4.0, 9.0):
        point.add(value)
    expected = {"avg": 5.0, "sum": 15.0, "min": 2.0, "max": 9.0, "sample_count": 3}
    for stat, value in expected.items():
        assert statistic(point, stat, "gauge") == value
    assert statistic(point, "p50", "gauge") is None
    assert statistic(Point(0), "avg", "gauge") is None  # no sample: no data, not 0
    with pytest.raises(ValueError, match="unknown statistic 'median'"):
        statistic(point, "median", "gauge")


def test_a_histogram_reads_percentiles_from_its_buckets() -> None:
    point = latency_point(0, [3.0] * 10)  # all in (2, 5]
    assert statistic(point, "avg", "histogram") == 3.0
    assert statistic(point, "sample_count", "histogram") == 10
    # interpolated in (2, 5], then clamped to the observed min and max (3 ms)
    assert statistic(point, "p50", "histogram") == 3.0
    assert statistic(point, "max", "histogram") == 3.0


@pytest.mark.parametrize(
    ("histogram", "q", "low", "high", "expected"),
    [
        (buckets(b3=10), 0.5, None, None, 2 + 3 * 0.5),  # (2, 5]: rank 5 of 10
        (buckets(b3=10), 0.9, None, None, 2 + 3 * 0.9),
        (buckets(b0=10), 0.5, None, None, 0.25),  # the first bucket starts at 0
        (buckets(b2=50, b5=50), 0.5, None, None, 2.0),  # rank 50: the top of (1, 2]
        (buckets(b2=50, b5=50), 0.9, None, None, 10 + 10 * 40 / 50),  # 40 into (10, 20]
        (buckets(b2=50, b5=50), 0.99, None, None, 10 + 10 * 49 / 50),
        (buckets(b2=50, b5=50), 0.9, None, 15.0, 15.0),  # clamped to the max seen
        (buckets(b2=50, b5=50), 0.5, 3.0, None, 3.0),  # and to the min seen
        (buckets(b16=4), 0.5, None, 90_000.0, 60_000 + 30_000 * 0.5),  # (60 s, max]
        (buckets(b16=4), 0.5, None, None, 60_000.0),  # unbounded, no max: its lower bound
        (buckets(), 0.5, None, None, None),
    ],
)
def test_quantiles_of_known_distributions(
    histogram: list[float], q: float, low: float | None, high: float | None, expected: float | None
) -> None:
    assert quantile(histogram, q, low, high) == pytest.approx(expected)


def test_periods_merge_points_and_mark_missing_ones() -> None:
    points = [
        Point(95, 1, 1),
        Point(100, 1, 2),
        Point(105, 1, 3),
        Point(125, 1, 4),
        Point(140, 1, 9),
    ]
    found = periods(points, 10, 100, 140)
    assert [at for at, _ in found] == [100, 110, 120, 130]
    first, missing, third, last = (point for _, point in found)
    assert first is not None and (first.at, first.count, first.sum) == (100, 2, 5)
    assert missing is None and last is None
    assert third is not None and third.sum == 4
    assert periods(points, 10, 100, 100) == []


# the roll-up in the store ------------------------------------------------------------------------
def test_a_rolled_up_minute_is_the_merge_of_its_ten_second_points(store: Store) -> None:
    latency = SeriesKey("latency_ms", "e", "v", "")
    calls = SeriesKey("invocations", "e", "v", "")
    ten_s = [latency_point(60 + 10 * i, [0.4 * (i + 1), 3.0 * i, 700.0 * i]) for i in range(6)]
    counts = []
    for i in range(6):
        point = Point(60 + 10 * i)
        point.add_events(i + 1)
        counts.append(point)
    later = latency_point(120, [1.0])  # the next minute: stays at 10 s (not old enough)
    with store.tx() as repo:
        repo.add_metric_points([(latency, 10, p) for p in [*ten_s, later]])
        repo.add_metric_points([(calls, 10, p) for p in counts])
    with store.tx() as repo:  # in batches that split the minute: rows merge with rows
        rolled = [repo.roll_up_metrics(120, 10, 60, limit=4) for _ in range(4)]
    assert rolled == [4, 4, 4, 0]
    with store.tx() as repo:
        minute = repo.metric_points("e", 0, 200, resolution=60)
        left = repo.metric_points("e", 0, 200, resolution=10)
    want = merged(ten_s, 60)
    (got,) = minute[latency]
    assert (got.at, got.count, got.sum, got.min, got.max) == (
        60,
        want.count,
        pytest.approx(want.sum),
        want.min,
        want.max,
    )
    assert got.buckets == want.buckets
    for stat in ("avg", "p50", "p90", "p99"):
        assert statistic(got, stat, "histogram") == pytest.approx(
            statistic(want, stat, "histogram")
        )
    (total,) = minute[calls]
    assert statistic(total, "sum", "counter") == 21
    assert [p.at for p in left[latency]] == [120] and calls not in left
    with store.tx() as repo:
        assert repo.purge_metrics(60, before=61) == 2
        assert repo.metric_points("e", 0, 200, resolution=60) == {}


# the recorder -----------------------------------------------------------------------------------
def report(invocations: float, e4: float, e5: float, latencies_ms: list[float]) -> list[float]:
    """A gateway's slot: [invocations, 4xx, 5xx, cold starts, cold ms, sum ms, max ms, *buckets]."""
    point = latency_point(0, latencies_ms)
    assert point.buckets is not None
    return [invocations, e4, e5, 0, 0, point.sum, point.max or 0.0, *point.buckets]


def test_the_recorder_writes_closed_intervals_only(store: Store) -> None:
    now = [1000.0]
    recorder = Recorder(store, clock=lambda: now[0])
    recorder.gateway_report({"e": {"v": report(3, 1, 0, [1.0, 2.0, 4.0])}}, 1003.0)
    recorder.gateway_report({"e": {"v": report(2, 0, 0, [8.0, 8.0])}}, 1009.9)
    recorder.in_flight(1, {"e": 2}, ["e"], 1004.0)
    recorder.gateway_report({"e": {"v": report(5, 0, 0, [1.0] * 5)}}, 1012.0)
    assert recorder.flush(1011.0) == 0  # [1000, 1010) closed, but late syncs may still come
    assert recorder.flush(1012.0) == 5  # invocations, 4xx, 5xx, latency, concurrent_requests
    with store.tx() as repo:
        found = repo.metric_points("e", 0, 2000)
    by_metric = {key.metric: points for key, points in found.items()}
    assert [p.at for p in by_metric["invocations"]] == [1000]
    assert statistic(by_metric["invocations"][0], "sum", "counter") == 5
    assert statistic(by_metric["errors_4xx"][0], "sum", "counter") == 1
    # a period with traffic and no 5xx has 5xx data: zero
    assert statistic(by_metric["errors_5xx"][0], "sum", "counter") == 0
    latency = by_metric["latency_ms"][0]
    assert (latency.count, latency.sum, latency.max) == (5, 23.0, 8.0)
    assert statistic(by_metric["concurrent_requests"][0], "avg", "gauge") == 2
    now[0] = 1013.0
    recorder.close()  # flush(everything=True): the interval still open too
    with store.tx() as repo:
        calls = repo.metric_points("e", 0, 2000, metric="invocations")
    assert [(p.at, p.sum) for p in calls[SeriesKey("invocations", "e", "v", "")]] == [
        (1000, 5),
        (1010, 5),
    ]
    assert recorder.flush(5000.0, everything=True) == 0  # nothing left open


def test_the_recorder_counts_latencies_not_invocations(store: Store) -> None:
    """Async requests (202) are invocations without a latency: they must not thin the average."""
    recorder = Recorder(store, clock=lambda: 0.0)
    recorder.gateway_report({"q": {"v": report(10, 0, 0, [4.0, 6.0])}}, 5.0)
    recorder.gateway_report({"a": {"v": report(7, 0, 0, [])}}, 5.0)  # only 202s: no latency
    recorder.flush(0.0, everything=True)
    with store.tx() as repo:
        (latency,) = repo.metric_points("q", 0, 100, metric="latency_ms").values()
        assert repo.metric_points("a", 0, 100, metric="latency_ms") == {}
    assert statistic(latency[0], "sample_count", "histogram") == 2
    assert statistic(latency[0], "avg", "histogram") == 5.0


def test_the_recorder_turns_a_slot_into_total_model_and_overhead_latency(store: Store) -> None:
    """A gateway's full slot: three histograms and the shadow's copies; an older gateway's (without model and overhead
    histograms) still gives its total latency."""
    total, model, overhead = (
        latency_point(0, [12.0, 30.0, 3.0]),  # the last one refused at the gateway
        latency_point(0, [10.0, 25.0]),
        latency_point(0, [2.0, 5.0, 3.0]),
    )
    values = [4.0, 1, 0, 0, 0]  # one more invocation: an async 202, which has no latency
    for point in (total, model, overhead):
        assert point.buckets is not None and point.max is not None
        values += [point.sum, point.max, *point.buckets]
    values += [2.0, 1.0, 0.0]  # shadow copies: two compared, one agreed, none shed
    assert len(values) == SLOT_SIZE
    recorder = Recorder(store, clock=lambda: 0.0)
    recorder.gateway_report({"e": {"v": values}}, 5.0)
    recorder.gateway_report({"e": {"v": values[: SLOT_HISTOGRAMS["model_latency_ms"]]}}, 6.0)
    recorder.flush(0.0, everything=True)
    with store.tx() as repo:
        found = {k.metric: ps for k, ps in repo.metric_points("e", 0, 100).items()}
    (got_total,) = found["latency_ms"]
    (got_model,) = found["model_latency_ms"]
    (got_overhead,) = found["overhead_latency_ms"]
    assert (got_total.count, got_total.sum, got_total.max) == (6, 90.0, 30.0)
    assert (got_model.count, got_model.sum, got_model.max) == (2, 35.0, 25.0)
    assert (got_overhead.count, got_overhead.sum, got_overhead.max) == (3, 10.0, 5.0)
    assert got_model.buckets == model.buckets and got_overhead.buckets == overhead.buckets
    assert statistic(got_model, "p50", "histogram") == pytest.approx(10.0)
    assert statistic(found["invocations"][0], "sum", "counter") == 8
    assert [p.sum for p in found["shadow_compared"]] == [2.0]
    assert [p.sum for p in found["shadow_agreed"]] == [1.0]
    assert "shadow_shed" not in found  # no event, no point


def test_points_the_store_refused_are_written_by_the_next_flush(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(store, clock=lambda: 0.0)
    recorder.gateway_report({"e": {"v": report(3, 0, 0, [1.0, 1.0, 1.0])}}, 5.0)
    real_tx = store.tx

    def failing_tx() -> Any:
        monkeypatch.setattr(store, "tx", real_tx)  # once
        raise StoreError("database is locked")

    monkeypatch.setattr(store, "tx", failing_tx)
    with pytest.raises(StoreError):
        recorder.flush(100.0)
    recorder.gateway_report({"e": {"v": report(2, 0, 0, [1.0, 1.0])}}, 6.0)  # meanwhile
    assert recorder.flush(100.0) == 4
    with store.tx() as repo:
        (calls,) = repo.metric_points("e", 0, 100, metric="invocations").values()
    assert [(p.at, p.sum) for p in calls] == [(0, 5)]


def test_requests_in_progress_are_summed_over_the_gateway_workers(store: Store) -> None:
    recorder = Recorder(store)
    recorder.in_flight(1, {"e": 3}, ["e", "idle"], 1001.0)  # one worker so far: 3
    recorder.in_flight(2, {"e": 4}, ["e", "idle"], 1002.0)  # both workers: 3 + 4
    recorder.in_flight(1, {"e": 1}, ["e", "idle"], 1003.0)  # worker 2 still counts: 1 + 4
    recorder.in_flight(1, {}, ["e", "idle"], 1009.0)  # worker 2 silent 7 s: gone
    recorder.flush(1013.0)
    with store.tx() as repo:
        found = repo.metric_points("e", 0, 2000, metric="concurrent_requests")
        idle = repo.metric_points("idle", 0, 2000, metric="concurrent_requests")
    (point,) = found[SeriesKey("concurrent_requests", "e", "", "")]
    assert (point.count, point.sum, point.max) == (4, 3 + 7 + 5 + 0, 7)
    (quiet,) = idle[SeriesKey("concurrent_requests", "idle", "", "")]
    assert (quiet.count, quiet.sum) == (4, 0)  # a routed endpoint with nothing in progress: 0


def test_a_count_batch_sent_again_is_applied_once() -> None:
    """A gateway sends a batch again when it did not get the answer (a timeout while the
    control plane was applying it): each worker's batch number is applied once."""
    from modelyard.controlplane.deps import SyncLedger

    ledger = SyncLedger()
    assert ledger.claim(101, 1)
    assert not ledger.claim(101, 1)  # the same batch again
    assert ledger.claim(202, 1)  # another worker's batch 1
    assert ledger.claim(101, 2)
    ledger.release(101, 2)  # the store failed: it was not applied
    assert ledger.claim(101, 2)  # so the next try applies it
