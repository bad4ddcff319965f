"""The gateway's ``GET /metrics``: totals from the slots it syncs, the workers' shared files, and
the exposition read back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from modelyard.dataplane import gateway_metrics as gm
from modelyard.dataplane.gateway import Gateway
from modelyard.dataplane.http import Request
from modelyard.dataplane.routing import build_routes
from modelyard.metrics.series import N_BUCKETS

#: no process has this pid (above the kernel's largest pid_max, 2**22)
DEAD_PID = 2**22 + 1


def slot(ok: float, e4: float = 0, e5: float = 0, cold: float = 0, **latency: float) -> list[float]:
    """A variant's slot: ``ok`` 2xx answers, the errors, cold starts, ``b<i>=n``: n latencies in
    bucket i, and their sum ``sum_ms``."""
    buckets = [0.0] * N_BUCKETS
    for name, n in latency.items():
        if name.startswith("b"):
            buckets[int(name[1:])] = n
    return [ok + e4 + e5, e4, e5, cold, 0.0, latency.get("sum_ms", 0.0), 0.0, *buckets]


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


def test_merging_sums_slots_keeps_the_latency_max_and_copies() -> None:
    mine: gm.Counts = {}
    theirs = {"e": {"v": [1.0, 0, 0, 0, 0, 5.0, 5.0, *([0.0] * N_BUCKETS)]}}
    gm.merge_counts(mine, theirs)
    assert mine == theirs and mine["e"]["v"] is not theirs["e"]["v"]
    gm.merge_counts(mine, {"e": {"v": [2.0, 1, 0, 0, 0, 3.0, 3.0, *([0.0] * N_BUCKETS)]}})
    assert mine["e"]["v"][: gm.LATENCY_BUCKETS] == [3.0, 1, 0, 0, 0, 8.0, 5.0]


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
