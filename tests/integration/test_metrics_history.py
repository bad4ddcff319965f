"""Metrics from the outside: a real server with two gateway workers, real traffic, then the
metrics API, the gateway's Prometheus scrape (summed over both workers) and `modelyard metrics`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support import ServerProcess, make_sklearn_model, wait_for, write_yaml

from modelyard.cli.metrics import SPARKS
from modelyard.dataplane.gateway_metrics import FOLDER
from modelyard.errors import InvalidInputError, NotFoundError

GOOD = 60
BAD = 6
ROW = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server, an endpoint, and GOOD + BAD invocations, each on a new connection (so the
    kernel spreads them over both gateway workers)."""
    root = tmp_path_factory.mktemp("metrics")
    make_sklearn_model(root / "model.joblib")
    docs = [
        {"kind": "Model", "name": "m", "spec": {"artifact": "model.joblib", "runtime": "sklearn"}},
        {"kind": "Endpoint", "name": "ep", "spec": {"variants": [{"name": "v", "model": "m"}]}},
    ]
    write_yaml(root / "endpoint.yaml", docs)
    proc = ServerProcess(root / "state", "--gateway-workers", "2")
    try:
        proc.client.apply_file(root / "endpoint.yaml")
        assert proc.client.wait_endpoint("ep", timeout_s=60)["status"] == "InService"
        url = f"{proc.gateway_url}/endpoints/ep/invocations"
        statuses = [
            httpx.post(url, json={"instances": [ROW]}, trust_env=False).status_code
            for _ in range(GOOD)
        ]
        statuses += [
            httpx.post(url, content=b"not json", trust_env=False).status_code for _ in range(BAD)
        ]
        assert statuses == [200] * GOOD + [424] * BAD  # the model refused: a 4xx
        yield proc
    finally:
        proc.stop()


def series(view: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    return [s for s in view["series"] if s["metric"] == metric]


def total(view: dict[str, Any], metric: str) -> float:
    return sum(p.get("sum") or 0.0 for s in series(view, metric) for p in s["points"])


def data(view: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """The periods with data of a metric's series."""
    return [p for s in series(view, metric) for p in s["points"] if "avg" in p]


def test_the_api_has_every_request_error_and_latency(server: ServerProcess) -> None:
    def counted() -> dict[str, Any] | None:
        view = server.client.metrics("ep", since_s=300, period_s=10)
        return view if total(view, "invocations") >= GOOD + BAD else None

    view = wait_for(counted, 30, what="the invocations to be written")
    assert total(view, "invocations") == GOOD + BAD
    assert total(view, "errors_4xx") == BAD
    assert total(view, "errors_5xx") == 0
    (latency,) = series(view, "latency_ms")
    assert latency["kind"] == "histogram" and latency["variant"] == "v"
    timed = [p for p in latency["points"] if p.get("sample_count")]
    assert sum(p["sample_count"] for p in timed) == GOOD + BAD
    for p in timed:
        assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
    assert series(view, "concurrent_requests")[0]["variant"] == ""
    assert data(view, "concurrent_requests")


def test_the_api_splits_latency_into_model_and_overhead(server: ServerProcess) -> None:
    """Every request reached the model (the bad ones were refused by it: 424), so each has a
    model latency and an overhead, which add up to its latency."""

    def timed(view: dict[str, Any], metric: str) -> float:
        return sum(p.get("sample_count") or 0.0 for s in series(view, metric) for p in s["points"])

    def counted() -> dict[str, Any] | None:
        view = server.client.metrics("ep", since_s=300, period_s=10)
        metrics = ("latency_ms", "model_latency_ms", "overhead_latency_ms")
        return view if all(timed(view, m) >= GOOD + BAD for m in metrics) else None

    view = wait_for(counted, 30, what="the model and overhead latencies to be written")
    for metric in ("model_latency_ms", "overhead_latency_ms"):
        (found,) = series(view, metric)
        assert (found["kind"], found["variant"]) == ("histogram", "v")
        assert timed(view, metric) == GOOD + BAD
    by_period = {
        metric: {p["at"]: p for p in data(view, metric)}
        for metric in ("latency_ms", "model_latency_ms", "overhead_latency_ms")
    }
    assert by_period["model_latency_ms"].keys() == by_period["latency_ms"].keys()
    for at, total in by_period["latency_ms"].items():
        model, overhead = by_period["model_latency_ms"][at], by_period["overhead_latency_ms"][at]
        assert 0 < model["sum"] <= total["sum"] and model["max"] <= total["max"]
        assert model["sum"] + overhead["sum"] == pytest.approx(total["sum"])
        assert 0 < model["p50"] <= model["p90"] <= model["p99"] <= model["max"]


def test_the_api_has_each_replicas_batch_sizes(server: ServerProcess) -> None:
    """Each good request is one model call of one row (no batching); the bad ones never reached
    the model's predict."""

    def scraped() -> dict[str, Any] | None:
        view = server.client.metrics("ep", since_s=300, period_s=10, metric="batch_size")
        return view if total(view, "batch_size") >= GOOD else None

    view = wait_for(scraped, 30, what="the replica's batch sizes to be scraped")
    (found,) = series(view, "batch_size")
    assert found["kind"] == "distribution" and found["variant"] == "v"
    assert found["replica"].startswith("r-")
    assert total(view, "batch_size") == GOOD  # rows
    assert sum(p["sample_count"] for p in data(view, "batch_size")) == GOOD  # model calls
    for p in data(view, "batch_size"):
        assert p["avg"] == 1 and p["p90"] is None and p["min"] is None


def test_the_api_has_the_replicas_and_their_memory(server: ServerProcess) -> None:
    def sampled() -> dict[str, Any] | None:
        view = server.client.metrics("ep", since_s=300, period_s=10)
        return view if data(view, "replicas") and data(view, "memory_mb") else None

    view = wait_for(sampled, 30, what="replicas and memory to be sampled")
    assert {p["avg"] for p in data(view, "replicas")} == {1}
    (memory,) = series(view, "memory_mb")
    assert memory["replica"].startswith("r-") and memory["variant"] == "v"
    assert all(p["avg"] > 0 for p in data(view, "memory_mb"))


def test_the_api_has_cpu_after_two_samples(server: ServerProcess) -> None:
    def sampled() -> dict[str, Any] | None:
        view = server.client.metrics("ep", since_s=300, metric="cpu_percent")
        return view if data(view, "cpu_percent") else None

    view = wait_for(sampled, 25, what="a CPU sample (two samples 10 s apart)")
    assert [s["metric"] for s in view["series"]] == ["cpu_percent"]
    assert all(p["avg"] >= 0 for p in data(view, "cpu_percent"))


def test_the_gateway_scrape_sums_both_workers(server: ServerProcess) -> None:
    def scrape() -> dict[tuple[str, str], float]:
        resp = httpx.get(f"{server.gateway_url}/metrics", trust_env=False)
        assert resp.status_code == 200, resp.text
        summed: dict[tuple[str, str], float] = {}  # over the workers (a series each)
        for family in text_string_to_metric_families(resp.text):
            for s in family.samples:
                if s.labels.get("endpoint") == "ep":
                    key = (s.name, s.labels.get("code") or s.labels.get("le", ""))
                    summed[key] = summed.get(key, 0.0) + s.value
        return summed

    requests = "modelyard_gateway_requests_total"

    def complete() -> dict[tuple[str, str], float] | None:
        found = scrape()
        return found if found.get((requests, "2xx")) == GOOD else None

    found = wait_for(complete, 10, what="the scrape to show every request")
    assert found[(requests, "4xx")] == BAD
    assert found[(requests, "5xx")] == 0
    duration = "modelyard_gateway_request_duration_seconds"
    assert found[(f"{duration}_count", "")] == GOOD + BAD
    assert found[(f"{duration}_bucket", "+Inf")] == GOOD + BAD
    assert 0 < found[(f"{duration}_sum", "")] < (GOOD + BAD) * 5.0
    model = "modelyard_gateway_model_duration_seconds"
    overhead = "modelyard_gateway_overhead_duration_seconds"
    assert found[(f"{model}_count", "")] == found[(f"{overhead}_count", "")] == GOOD + BAD
    assert found[(f"{model}_bucket", "+Inf")] == GOOD + BAD
    assert 0 < found[(f"{model}_sum", "")] <= found[(f"{duration}_sum", "")]
    assert found[(f"{model}_sum", "")] + found[(f"{overhead}_sum", "")] == pytest.approx(
        found[(f"{duration}_sum", "")]
    )
    assert found[("modelyard_gateway_cold_starts_total", "")] == 0
    assert found[("modelyard_gateway_requests_in_progress", "")] == 0
    # both workers answered some: the sum above is over two of them
    files = list((server.state_dir / "run" / FOLDER).glob("*.json"))
    shares = [json.loads(f.read_text())["counts"]["ep"]["v"][0] for f in files]
    assert len(shares) == 2 and all(shares) and sum(shares) == GOOD + BAD


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", *args, "--state-dir", str(server.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_draws_a_table_and_prints_json(server: ServerProcess) -> None:
    def drawn() -> str | None:  # once the traffic's period is written and settled
        result = cli(server, "metrics", "ep", "--since", "2m")
        assert result.returncode == 0, result.stderr
        line = next(
            (line for line in result.stdout.splitlines() if line.startswith("invocations")), ""
        )
        return result.stdout if any(c in line for c in SPARKS) else None

    table = wait_for(drawn, 20, interval_s=0.5, what="a sparkline of the invocations")
    header = table.splitlines()[0]
    for column in ("METRIC", "VARIANT", "UNIT", "EVERY 10s", "LAST 10s", "WINDOW"):
        assert column in header
    for metric in ("invocations", "errors_4xx", "latency_ms", "concurrent_requests"):
        assert any(line.startswith(metric) for line in table.splitlines()), metric
    result = cli(server, "metrics", "ep", "--since", "90s", "--period", "30s", "-o", "json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert (view["endpoint"], view["period_s"], view["end"] - view["start"]) == ("ep", 30, 90)


def test_bad_inputs_are_refused_clearly(server: ServerProcess) -> None:
    with pytest.raises(InvalidInputError, match="metric: must be one of invocations"):
        server.client.metrics("ep", metric="latency")
    with pytest.raises(InvalidInputError, match="since: must be 1 s to 14 days"):
        server.client.metrics("ep", since_s=0)
    with pytest.raises(InvalidInputError, match="period: must be a multiple of 10 s"):
        server.client.metrics("ep", period_s=15)
    with pytest.raises(NotFoundError, match="no endpoint named 'nope'"):
        server.client.metrics("nope")
    token = (server.state_dir / "token").read_text().strip()
    resp = httpx.get(
        f"{server.api_url}/api/v1/endpoints/ep/metrics",
        params={"metric": "bogus"},
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
    )
    assert resp.status_code == 400 and "metric" in resp.json()["error"]["message"]
    missing = cli(server, "metrics", "nope")
    assert missing.returncode == 1 and "no endpoint named 'nope'" in missing.stderr
    bad = cli(server, "metrics", "ep", "--since", "5 minutes")
    assert bad.returncode == 2 and "--since" in bad.stderr and "not a duration" in bad.stderr
    both = cli(server, "metrics", "ep", "--watch", "-o", "json")
    assert both.returncode == 2 and "--watch" in both.stderr
