"""Batch sizes from the replicas' ``GET /metrics``: the differences between scrapes, parsing the
model server's exposition, the scraper's memory of replicas, the recorder's points, and the
alarm spec and statistics of a distribution (no percentiles)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.controlplane.store.repo import ReplicaRecord, Store
from modelyard.errors import SpecError
from modelyard.metrics.batches import BatchScraper, BatchTotals, batch_delta, parse_totals
from modelyard.metrics.recorder import Recorder
from modelyard.metrics.series import METRICS, STATISTICS, Point, statistic
from modelyard.spec import parse_document


@pytest.mark.parametrize(
    ("before", "after", "delta"),
    [
        # first scrape of a replica older than the recorder (adopted): only remembered
        (None, BatchTotals(5.0, 10, 40), None),
        (None, BatchTotals(None, 10, 40), None),
        # first scrape of a replica started since: all of it is new
        (None, BatchTotals(7.0, 10, 40), (10, 40)),
        (BatchTotals(5.0, 10, 40), BatchTotals(5.0, 13, 52), (3, 12)),  # growth
        (BatchTotals(5.0, 10, 40), BatchTotals(5.0, 10, 40), (0, 0)),  # idle
        (BatchTotals(5.0, 10, 40), BatchTotals(5.0, 2, 9), (2, 9)),  # went down: restarted
        (BatchTotals(5.0, 10, 40), BatchTotals(9.0, 12, 50), (12, 50)),  # a new process
    ],
)
def test_batch_delta(
    before: BatchTotals | None, after: BatchTotals, delta: tuple[float, float] | None
) -> None:
    assert batch_delta(before, after, since=6.0) == delta


def exposition(*sizes: int) -> str:
    """What a model server's /metrics says after model calls of ``sizes`` rows (the same
    metric as dataplane/modelserver.py, with its request counter beside it)."""
    registry = CollectorRegistry()
    Counter("modelyard_replica_requests", "x", ["status"], registry=registry).labels("2xx").inc()
    histogram = Histogram(
        "modelyard_replica_batch_size", "x", buckets=(1, 2, 4, 8), registry=registry
    )
    for size in sizes:
        histogram.observe(size)
    return generate_latest(registry).decode()


def test_the_model_servers_histogram_is_read_as_calls_and_rows() -> None:
    assert parse_totals(exposition(1, 4, 7)) == (3, 12)
    assert parse_totals(exposition()) == (0, 0)
    assert parse_totals("") is None
    assert parse_totals("# HELP other x\n# TYPE other counter\nother_total 3\n") is None
    assert parse_totals("<html>not found</html>") is None


def replica(rid: str, state: str = "ready", started: float = 1.0, **values: Any) -> ReplicaRecord:
    defaults: dict[str, Any] = {
        "endpoint": "e",
        "revision": 1,
        "variant": "v",
        "pid": 10,
        "address": f"http://127.0.0.1:1/{rid}",
        "log_path": "",
        "attempts": 0,
        "restarts": 0,
        "ever_ready": True,
        "last_exit_code": None,
        "message": "",
        "started_at": started,
        "ready_at": started,
        "next_start_at": None,
        "stop_requested_at": None,
        "signalled": 0,
    }
    merged = {**defaults, **values}
    return ReplicaRecord(id=rid, state=state, pid_started_at=started, **merged)


class FakeScraper(BatchScraper):
    """A scraper whose replicas answer from ``pages`` (address → text; "" a 404, None no
    answer), counting the requests made."""

    def __init__(self) -> None:
        super().__init__(since=100.0)  # the replicas below started before (at 1.0): adopted
        self.pages: dict[str, str | None] = {}
        self.asked: list[str] = []

    def _get(self, address: str) -> str | None:
        self.asked.append(address.rsplit("/", 1)[-1])
        return self.pages.get(address)


@pytest.fixture
def scraper() -> Iterator[FakeScraper]:
    found = FakeScraper()
    yield found
    found.close()


def test_the_scraper_records_differences_and_forgets_replicas_gone(scraper: FakeScraper) -> None:
    a, b = replica("a"), replica("b")
    scraper.pages = {a.address or "": exposition(2, 2), b.address or "": exposition(1)}
    assert scraper.read([a, b]) == {}  # first scrape of each (adopted): remembered only
    scraper.pages[a.address or ""] = exposition(2, 2, 4, 8)
    assert scraper.read([a, b]) == {"a": (2, 12), "b": (0, 0)}
    # b restarted (a new process): everything its new totals count is new
    b2 = replica("b", started=150.0)
    scraper.pages[b.address or ""] = exposition(3)
    assert scraper.read([a, b2]) == {"a": (0, 0), "b": (1, 3)}
    # a leaves (stopping): forgotten; when a replica of that id is ready again, it starts over
    assert scraper.read([replica("a", state="stopping"), b2]) == {"b": (0, 0)}
    assert scraper.read([a, b2]) == {"b": (0, 0)}
    assert scraper.read([a, b2])["a"] == (0, 0)
    # a replica started after the recorder: its first scrape counts all it did
    c = replica("c", started=120.0)
    scraper.pages[c.address or ""] = exposition(4, 4)
    assert scraper.read([c])["c"] == (2, 8)


def test_a_replica_without_batch_sizes_is_skipped_and_not_asked_again(
    scraper: FakeScraper,
) -> None:
    byoc, hung, memory = replica("byoc"), replica("hung"), replica("m", address="mem://m")
    scraper.pages = {byoc.address or "": "", hung.address or "": None}
    for _ in range(2):
        assert scraper.read([byoc, hung, memory]) == {}
    assert sorted(scraper.asked) == ["byoc", "hung", "hung"]  # never a mem:// address
    scraper.pages[hung.address or ""] = exposition(5)  # it answers again: remembered now
    assert scraper.read([byoc, hung]) == {}
    scraper.pages[hung.address or ""] = exposition(5, 5)
    assert scraper.read([byoc, hung]) == {"hung": (1, 5)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store("sqlite:///" + str(tmp_path / "s.db"))
    s.migrate()
    yield s
    s.close()


def test_the_recorder_writes_a_batch_size_point_per_replica(
    store: Store, scraper: FakeScraper
) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        for rid in ("r1", "r2"):
            address = f"http://127.0.0.1:1/{rid}"
            repo.add_replica(
                id=rid, endpoint="e", revision=1, variant="v", state="ready", address=address
            )
    pages = scraper.pages
    pages["http://127.0.0.1:1/r1"] = exposition(1)
    pages["http://127.0.0.1:1/r2"] = exposition(2)
    recorder = Recorder(store, clock=lambda: 0.0, batches=scraper)
    recorder.sample(100.0)
    pages["http://127.0.0.1:1/r1"] = exposition(1, 4, 4, 8)  # 3 calls, 16 rows since
    pages["http://127.0.0.1:1/r2"] = exposition(2)  # none since: no point
    recorder.sample(110.0)
    recorder.flush(0.0, everything=True)
    with store.tx() as repo:
        found = repo.metric_points("e", 0, 200, metric="batch_size")
    (point,) = found[SeriesKey("batch_size", "e", "v", "r1")]
    assert (point.at, point.count, point.sum) == (110, 3, 16)
    assert list(found) == [SeriesKey("batch_size", "e", "v", "r1")]
    assert statistic(point, "avg", "distribution") == pytest.approx(16 / 3)
    assert statistic(point, "sample_count", "distribution") == 3
    assert statistic(point, "sum", "distribution") == 16


def test_a_distribution_has_no_percentiles_nor_extremes() -> None:
    assert METRICS["batch_size"][0] == "distribution"
    point = Point(0, 4, 10.0)
    stats = {stat: statistic(point, stat, "distribution") for stat in STATISTICS}
    assert stats == {
        "avg": 2.5,
        "sum": 10.0,
        "min": None,
        "max": None,
        "sample_count": 4,
        "p50": None,
        "p90": None,
        "p99": None,
    }


def alarm(metric: str, stat: str) -> Any:
    body = {
        "metric": metric,
        "dimensions": {"endpoint": "e", "variant": "v"},
        "statistic": stat,
        "comparison": "greater_than",
        "threshold": 5,
    }
    return parse_document({"kind": "Alarm", "name": "a", "spec": body}, "documents[0]")


def test_alarms_take_the_new_metrics_with_their_statistics() -> None:
    for metric in ("model_latency_ms", "overhead_latency_ms"):
        for stat in ("p99", "avg", "max", "sample_count"):
            assert alarm(metric, stat).spec.metric == metric
    for stat in ("avg", "sum", "sample_count"):
        assert alarm("batch_size", stat).spec.statistic == stat
    with pytest.raises(SpecError) as caught:
        alarm("batch_size", "p90")
    assert caught.value.field == "documents[0].spec.statistic"
    assert "batch_size is a distribution: its statistics are avg, sum, sample_count" in str(
        caught.value.message
    )
    assert "percentiles are for the latency histograms (latency_ms, model_latency_ms" in str(
        caught.value.message
    )
    with pytest.raises(SpecError, match="model_latency_ms is a histogram"):
        alarm("model_latency_ms", "min")
