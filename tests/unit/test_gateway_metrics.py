"""The gateway's ``GET /metrics``: totals from the slots it syncs, the workers' shared files, and
the exposition read back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.dataplane import gateway_metrics as gm
from modelyard.dataplane.bundle import ItemAnswer
from modelyard.dataplane.gateway import Gateway
from modelyard.dataplane.http import Request
from modelyard.dataplane.routing import build_routes
from modelyard.dataplane.upstream import UpstreamError
from modelyard.metrics.series import N_BUCKETS, bucket_of

#: no process has this pid (above the kernel's largest pid_max, 2**22)
DEAD_PID = 2**22 + 1


def slot(ok: float, e4: float = 0, e5: float = 0, cold: float = 0, **latency: float) -> list[float]:
    """A variant's slot: ``ok`` 2xx answers, the errors, cold starts, ``b<i>=n``: n latencies in
    bucket i, and their sum ``sum_ms`` (``m…`` and ``o…`` the same for the model and overhead
    histograms: ``mb3=2``, ``osum_ms=1.5``)."""
    out = [ok + e4 + e5, e4, e5, cold, 0.0] + [0.0] * (gm.SLOT_SIZE - 5)
    for prefix, at in (("", gm.LATENCY_SUM), ("m", gm.MODEL_SUM), ("o", gm.OVERHEAD_SUM)):
        for name, n in latency.items():
            if name == f"{prefix}sum_ms":
                out[at] = n
            elif name.startswith(f"{prefix}b") and name[len(prefix) + 1 :].isdigit():
                out[at + 2 + int(name[len(prefix) + 1 :])] = n
    return out


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, summed over the ``worker`` label (each worker is its own series)."""
    text = text.decode() if isinstance(text, bytes) else text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker"))
            out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value
    return out


def test_each_worker_is_a_series_of_its_own(tmp_path: Path) -> None:
    """A sum over workers would go down when one exits, which Prometheus reads as a reset."""
    folder = tmp_path / gm.FOLDER
    me = gm.GatewayTotals(folder)
    other = gm.GatewayTotals(folder, pid=os.getppid())  # a live process
    me.add({"e": {"v": slot(3)}})
    other.add({"e": {"v": slot(4)}})
    other.save({})
    text = me.scrape({}).decode()
    by_worker = {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelyard_gateway_requests_total" and s.labels["code"] == "2xx"
    }
    assert by_worker == {str(me.pid): 3, str(other.pid): 4}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def test_the_exposition_has_requests_by_class_a_histogram_cold_starts_and_in_progress() -> None:
    totals = gm.GatewayTotals()
    totals.add({"e": {"v": slot(5, e4=2, e5=1, b2=3, b5=5, sum_ms=100.0)}})
    totals.add({"e": {"v": slot(1, cold=1, b2=1, sum_ms=2.0)}, "s": {"-": slot(0, e4=4)}})
    found = samples(totals.scrape({"e": 3, "s": 0}))
    requests = "modelyard_gateway_requests_total"
    assert found[key(requests, endpoint="e", variant="v", code="2xx")] == 6
    assert found[key(requests, endpoint="e", variant="v", code="4xx")] == 2
    assert found[key(requests, endpoint="e", variant="v", code="5xx")] == 1
    assert found[key(requests, endpoint="s", variant="-", code="4xx")] == 4
    duration = "modelyard_gateway_request_duration_seconds"
    # cumulative buckets, bounds in seconds: 4 at or under 2 ms, 9 at or under 20 ms
    assert found[key(duration + "_bucket", endpoint="e", variant="v", le="0.001")] == 0
    assert found[key(duration + "_bucket", endpoint="e", variant="v", le="0.002")] == 4
    assert found[key(duration + "_bucket", endpoint="e", variant="v", le="0.01")] == 4
    assert found[key(duration + "_bucket", endpoint="e", variant="v", le="0.02")] == 9
    assert found[key(duration + "_bucket", endpoint="e", variant="v", le="+Inf")] == 9
    assert found[key(duration + "_count", endpoint="e", variant="v")] == 9
    assert found[key(duration + "_sum", endpoint="e", variant="v")] == 0.102
    assert found[key("modelyard_gateway_cold_starts_total", endpoint="e", variant="v")] == 1
    assert found[key("modelyard_gateway_requests_in_progress", endpoint="e")] == 3
    assert found[key("modelyard_gateway_requests_in_progress", endpoint="s")] == 0


def test_the_exposition_has_model_and_overhead_histograms_with_the_same_labels() -> None:
    totals = gm.GatewayTotals()
    # 3 answered by the model (2 in (2, 5] ms, 1 in (20, 50]) and 1 refused at the gateway
    totals.add({"e": {"v": slot(3, e4=1, b3=1, b5=2, b6=1, sum_ms=60.0)}})
    totals.add({"e": {"v": slot(0, mb3=2, mb6=1, msum_ms=45.0, ob0=2, ob2=2, osum_ms=15.0)}})
    text = totals.scrape({}).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("model", "overhead", "request"):
        family = families[f"modelyard_gateway_{name}_duration_seconds"]
        assert family.type == "histogram"
        assert {k for s in family.samples for k in s.labels} - {"le"} == {
            "endpoint",
            "variant",
            "worker",
        }
    found = samples(text)
    model, overhead = (
        "modelyard_gateway_model_duration_seconds",
        "modelyard_gateway_overhead_duration_seconds",
    )
    assert found[key(model + "_count", endpoint="e", variant="v")] == 3
    assert found[key(model + "_sum", endpoint="e", variant="v")] == 0.045
    assert found[key(model + "_bucket", endpoint="e", variant="v", le="0.005")] == 2
    assert found[key(model + "_bucket", endpoint="e", variant="v", le="0.02")] == 2
    assert found[key(model + "_bucket", endpoint="e", variant="v", le="0.05")] == 3
    assert found[key(overhead + "_count", endpoint="e", variant="v")] == 4
    assert found[key(overhead + "_bucket", endpoint="e", variant="v", le="0.0005")] == 2
    assert found[key(overhead + "_sum", endpoint="e", variant="v")] == 0.015
    request = "modelyard_gateway_request_duration_seconds"
    assert found[key(request + "_count", endpoint="e", variant="v")] == 4


def test_merging_sums_slots_keeps_the_latency_max_and_copies() -> None:
    mine: gm.Counts = {}
    theirs = {"e": {"v": [1.0, 0, 0, 0, 0, 5.0, 5.0, *([0.0] * N_BUCKETS)]}}
    gm.merge_counts(mine, theirs)
    assert mine == theirs and mine["e"]["v"] is not theirs["e"]["v"]
    gm.merge_counts(mine, {"e": {"v": [2.0, 1, 0, 0, 0, 3.0, 3.0, *([0.0] * N_BUCKETS)]}})
    assert mine["e"]["v"][: gm.LATENCY_BUCKETS] == [3.0, 1, 0, 0, 0, 8.0, 5.0]


def test_merging_keeps_each_histograms_max_and_takes_a_longer_slot_whole() -> None:
    counts: gm.Counts = {}
    for total, model in ((30.0, 20.0), (12.0, 11.0), (50.0, 2.0)):
        gm.count(counts, "e", "v", 200, time.perf_counter() - total / 1000, model)
    merged: gm.Counts = {"e": {"v": [1.0, 0, 0, 0, 0, 5.0, 5.0, *([0.0] * N_BUCKETS)]}}
    gm.merge_counts(merged, counts)  # a short slot (an older gateway's file) grows
    found, mine = merged["e"]["v"], counts["e"]["v"]
    assert len(found) == gm.SLOT_SIZE and found[0] == 4
    assert found[gm.MODEL_MAX] == 20.0 and found[gm.MODEL_SUM] == 33.0
    assert found[gm.OVERHEAD_MAX] == mine[gm.OVERHEAD_MAX] >= 48.0
    gm.merge_counts(merged, counts)
    assert merged["e"]["v"][gm.MODEL_MAX] == 20.0 and merged["e"]["v"][gm.MODEL_SUM] == 66.0
    assert merged["e"]["v"][gm.LATENCY_MAX] == mine[gm.LATENCY_MAX] >= 50.0


def hist(found: list[float], at: int) -> tuple[float, float, list[float]]:
    """(count, sum, buckets) of a slot's histogram at ``at``."""
    buckets = found[at + 2 : at + 2 + N_BUCKETS]
    return sum(buckets), found[at], buckets


def test_a_request_the_model_answered_splits_into_model_and_overhead_latency() -> None:
    counts: gm.Counts = {}
    started = time.perf_counter() - 0.030  # arrived 30 ms ago; the replica took 20 of them
    gm.count(counts, "e", "v", 200, started, 20.0)
    found = counts["e"]["v"]
    total_n, total_ms, total_buckets = hist(found, gm.LATENCY_SUM)
    model_n, model_ms, model_buckets = hist(found, gm.MODEL_SUM)
    over_n, over_ms, over_buckets = hist(found, gm.OVERHEAD_SUM)
    assert (total_n, model_n, over_n) == (1, 1, 1)
    assert model_ms == 20.0 and model_buckets[bucket_of(20.0)] == 1
    assert 30.0 <= total_ms < 1000.0
    assert over_ms == pytest.approx(total_ms - 20.0)
    assert over_buckets[bucket_of(over_ms)] == 1 and total_buckets[bucket_of(total_ms)] == 1
    assert found[gm.MODEL_MAX] == 20.0 and found[gm.OVERHEAD_MAX] == over_ms


def test_a_request_that_reached_no_model_is_all_overhead_and_async_has_no_latency() -> None:
    counts: gm.Counts = {}
    gm.count(counts, "e", "v", 404, time.perf_counter() - 0.004)  # refused by the gateway
    gm.count(counts, "e", "v", 202)  # async: accepted, no latency
    found = counts["e"]["v"]
    assert (found[0], found[1]) == (2, 1)
    assert hist(found, gm.MODEL_SUM)[:2] == (0, 0.0)
    over_n, over_ms, _ = hist(found, gm.OVERHEAD_SUM)
    total_n, total_ms, _ = hist(found, gm.LATENCY_SUM)
    assert over_n == total_n == 1 and over_ms == total_ms >= 4.0
    # a model time above the total (clocks never do this, but) leaves no negative overhead
    gm.count(counts, "e", "w", 200, time.perf_counter(), 5.0)
    assert hist(counts["e"]["w"], gm.OVERHEAD_SUM)[:2] == (1, 0.0)


def test_a_scrape_sums_the_live_workers_files(tmp_path: Path) -> None:
    now = [1000.0]
    folder = tmp_path / gm.FOLDER
    me = gm.GatewayTotals(folder, clock=lambda: now[0])
    other = gm.GatewayTotals(folder, pid=os.getppid(), clock=lambda: now[0])  # a live process
    gone = gm.GatewayTotals(folder, pid=DEAD_PID, clock=lambda: now[0])
    me.add({"e": {"v": slot(3, b1=3)}})
    other.add({"e": {"v": slot(4, e5=1, b1=5)}, "f": {"w": slot(2)}})
    gone.add({"e": {"v": slot(100)}})
    for worker, busy in ((me, 1), (other, 2), (gone, 50)):
        worker.save({"e": busy})
    found = samples(me.scrape({"e": 1, "f": 0}))
    requests = "modelyard_gateway_requests_total"
    assert found[key(requests, endpoint="e", variant="v", code="2xx")] == 7
    assert found[key(requests, endpoint="e", variant="v", code="5xx")] == 1
    assert found[key(requests, endpoint="f", variant="w", code="2xx")] == 2
    hist = key("modelyard_gateway_request_duration_seconds_count", endpoint="e", variant="v")
    assert found[hist] == 8
    assert found[key("modelyard_gateway_requests_in_progress", endpoint="e")] == 3
    assert not (folder / f"{DEAD_PID}.json").exists()  # its worker is gone: so is the file
    # a file not written for over a minute is left out; the worker's own file goes at close
    os.utime(folder / f"{other.pid}.json", (now[0] - 61, now[0] - 61))
    assert samples(me.scrape({}))[key(requests, endpoint="e", variant="v", code="2xx")] == 3
    me.close()
    assert not (folder / f"{me.pid}.json").exists()


def test_a_worker_writes_its_file_when_it_changed_and_now_and_then(tmp_path: Path) -> None:
    now = [1000.0]
    totals = gm.GatewayTotals(tmp_path, clock=lambda: now[0])
    path = tmp_path / f"{totals.pid}.json"
    totals.add({"e": {"v": slot(1)}})
    totals.save({})
    assert json.loads(path.read_text())["counts"]["e"]["v"][0] == 1
    totals.add({"e": {"v": slot(1)}})
    now[0] += gm.SAVE_EVERY_S / 2
    totals.save({})  # too soon: the next sync writes it
    assert json.loads(path.read_text())["counts"]["e"]["v"][0] == 1
    now[0] += gm.SAVE_EVERY_S
    totals.save({})
    assert json.loads(path.read_text())["counts"]["e"]["v"][0] == 2
    path.unlink()
    now[0] += 1
    totals.save({})  # nothing changed
    assert not path.exists()
    now[0] += gm.REFRESH_S
    totals.save({})  # still alive: written again, so the others do not take it for stale
    assert path.exists()
    single = gm.GatewayTotals(None)  # one worker: no file at all
    single.add({"e": {"v": slot(1)}})
    single.save({})
    assert list(tmp_path.iterdir()) == [path]


def _gateway(tmp_path: Path, invoke_token: str | None) -> Gateway:
    gateway = Gateway(
        control_url="http://127.0.0.1:9",
        token="t",
        invoke_token=invoke_token,
        routes_file=tmp_path / "routes.json",
        max_payload_bytes=1024,
        timeout_s=5,
        sync_interval_s=60,
    )
    variant = {"name": "v", "weight": 1, "replicas": []}
    gateway.routes = build_routes({"e": {"revision": 1, "variants": [variant]}}, {})
    return gateway


def _get(gateway: Gateway, headers: dict[bytes, bytes] | None = None) -> tuple[int, str]:
    status, _, body = asyncio.run(gateway(Request("GET", "/metrics", b"", headers or {}, b"")))
    return status, bytes(body).decode()


def test_the_gateway_answers_metrics_with_the_invoke_token_when_invocations_need_it(
    tmp_path: Path,
) -> None:
    open_gateway = _gateway(tmp_path, None)
    open_gateway.totals.add({"e": {"v": slot(2)}})
    status, text = _get(open_gateway)
    assert status == 200
    assert samples(text)[key("modelyard_gateway_requests_in_progress", endpoint="e")] == 0
    guarded = _gateway(tmp_path, "s3cret")
    assert _get(guarded)[0] == 401
    assert _get(guarded, {b"authorization": b"Bearer wrong"})[0] == 401
    assert _get(guarded, {b"authorization": b"Bearer s3cret"})[0] == 200


class FakePool:
    """A replica's pool on a fake clock: each invocation takes the next step of ``script``,
    (milliseconds, status; status 0: the replica is gone)."""

    takes_bundles = True

    def __init__(self, clock: list[float], script: list[tuple[float, int]]) -> None:
        self.clock, self.script = clock, script

    async def invoke(self, item: bytes, timeout: float) -> ItemAnswer:
        ms, status = self.script.pop(0)
        self.clock[0] += ms / 1000.0
        if not status:
            raise UpstreamError("connection reset")
        return ItemAnswer(status, b"application/json", b"", b"{}")


@pytest.mark.parametrize(
    ("script", "status", "model_ms", "overhead_ms"),
    [
        # (times a binary fraction of a second: the sums below are exact)
        ([(31.25, 200)], 200, 31.25, 0.0),
        # the first replica went away after 7.8 ms: the second answered, and is the model
        ([(7.8125, 0), (31.25, 200)], 200, 31.25, 7.8125),
        ([(15.625, 500)], 424, 15.625, 0.0),  # the model's own error took it 15.6 ms
    ],
)
def test_the_gateway_times_the_replicas_answer_as_model_latency(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: list[tuple[float, int]],
    status: int,
    model_ms: float,
    overhead_ms: float,
) -> None:
    clock = [1024.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    gateway = _gateway(tmp_path, None)
    variant = {"name": "v", "weight": 1, "replicas": ["http://a:1", "http://b:2"], "bundles": True}
    gateway.routes = build_routes({"e": {"revision": 1, "variants": [variant]}}, {})
    pool = FakePool(clock, list(script))
    monkeypatch.setattr(gateway.upstreams, "pool", lambda address: pool)
    request = Request("POST", "/endpoints/e/invocations", b"", {}, b"[1]")
    answer: Any = asyncio.run(gateway(request))
    assert answer[0] == status
    found = gateway.counts["e"]["v"]
    assert hist(found, gm.MODEL_SUM) == (1, model_ms, _one(model_ms))
    assert hist(found, gm.OVERHEAD_SUM) == (1, overhead_ms, _one(overhead_ms))
    assert hist(found, gm.LATENCY_SUM)[1] == model_ms + overhead_ms


def test_the_gateway_counts_its_own_refusals_as_overhead_only(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, None)
    headers = {b"x-amzn-sagemaker-target-variant": b"nope"}
    request = Request("POST", "/endpoints/e/invocations", b"", headers, b"[1]")
    answer: Any = asyncio.run(gateway(request))
    assert answer[0] == 400
    found = gateway.counts["e"]["-"]
    assert hist(found, gm.MODEL_SUM)[0] == 0
    assert hist(found, gm.OVERHEAD_SUM)[0] == hist(found, gm.LATENCY_SUM)[0] == 1


def _one(ms: float) -> list[float]:
    buckets = [0.0] * N_BUCKETS
    buckets[bucket_of(ms)] = 1
    return buckets


def test_a_serverless_requests_hold_for_a_replica_is_overhead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held at zero while a replica starts (62.5 ms), then answered by it in 31.25 ms: the
    model latency is the replica's, the overhead has the hold."""
    clock = [1024.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    gateway = _gateway(tmp_path, None)
    cold = {"name": "v", "weight": 1, "replicas": [], "bundles": True}
    warm = {**cold, "replicas": ["http://a:1"]}
    table = {"revision": 1, "type": "serverless", "variants": [cold]}
    gateway.routes = build_routes({"s": table}, {})

    async def replica_started(name: str, wait_s: float = 2.0) -> Any:
        clock[0] += 0.0625
        gateway.routes = build_routes({"s": {**table, "variants": [warm]}}, {})
        return gateway.routes[name]

    monkeypatch.setattr(gateway, "_fresh_route", replica_started)
    pool = FakePool(clock, [(31.25, 200)])
    monkeypatch.setattr(gateway.upstreams, "pool", lambda address: pool)
    request = Request("POST", "/endpoints/s/invocations", b"", {}, b"[1]")
    answer: Any = asyncio.run(gateway(request))
    assert answer[0] == 200
    found = gateway.counts["s"]["v"]
    assert found[3] == 1  # a cold start
    assert hist(found, gm.MODEL_SUM) == (1, 31.25, _one(31.25))
    assert hist(found, gm.OVERHEAD_SUM) == (1, 62.5, _one(62.5))
    assert hist(found, gm.LATENCY_SUM)[1] == 93.75
