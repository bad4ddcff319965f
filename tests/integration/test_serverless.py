"""Serverless endpoints on a real server: scale to zero, the held first request, throttling at the
concurrency cap, the payload limit and the memory size."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support import (
    ServerProcess,
    make_holder,
    make_sklearn_model,
    wait_for,
    wait_held,
    write_byoc_server,
    write_yaml,
)

ROW = {"instances": [[0.5, -1.0, 2.0, 0.25]]}
HOLDER = Path()
SLOW_START_SOURCE = """
import os, time

class Predictor:
    def load(self, model_dir):  # loads only while model_dir/ready exists (waits up to 60 s)
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(model_dir, "ready")) and time.monotonic() < deadline:
            time.sleep(0.02)

    def predict(self, inputs):
        return inputs
"""
SLOW = Path()


def _endpoint(name: str, model: str, **serverless: Any) -> dict[str, Any]:
    return {
        "kind": "Endpoint",
        "name": name,
        "spec": {
            "type": "serverless",
            "serverless": serverless,
            "variants": [{"name": "v", "model": model}],
        },
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("serverless")
    make_sklearn_model(tmp / "model.joblib")
    global HOLDER, SLOW
    HOLDER = make_holder(tmp / "holder")
    SLOW = tmp / "slow"
    SLOW.mkdir()
    (SLOW / "slow.py").write_text(SLOW_START_SOURCE)
    (SLOW / "ready").write_text("")  # the first replica (the apply's) loads at once
    byoc = write_byoc_server(tmp / "byoc")
    write_yaml(
        tmp / "endpoints.yaml",
        [
            {
                "kind": "Model",
                "name": "m",
                "spec": {"artifact": "model.joblib", "runtime": "sklearn"},
            },
            {
                "kind": "Model",
                "name": "holder",
                "spec": {
                    "artifact": "holder",
                    "runtime": "python",
                    "predictor": "holder:Predictor",
                },
            },
            {
                "kind": "Model",
                "name": "byoc",
                "spec": {"runtime": "container", "container": {"command": ["python", str(byoc)]}},
            },
            _endpoint("sl", "m", idle_timeout_s=1),
            {
                "kind": "Model",
                "name": "slow",
                "spec": {"artifact": "slow", "runtime": "python", "predictor": "slow:Predictor"},
            },
            _endpoint("slow", "slow", max_concurrency=1, idle_timeout_s=1),
            _endpoint("capped", "holder", max_concurrency=2, idle_timeout_s=600),
            _endpoint("small", "byoc", memory_mb=1024, idle_timeout_s=600),
        ],
    )
    proc = ServerProcess(tmp / "state")
    try:
        proc.client.apply_file(tmp / "endpoints.yaml")
        for name in ("sl", "capped", "small", "slow"):
            assert proc.client.wait_endpoint(name, timeout_s=120)["status"] == "InService"
        yield proc
    finally:
        proc.stop()


def _replicas(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    return [r for v in server.client.describe_endpoint(name)["variants"] for r in v["replicas"]]


def test_idle_endpoint_scales_to_zero_and_holds_the_first_request(server: ServerProcess) -> None:
    wait_for(lambda: not _replicas(server, "sl"), 30, what="the endpoint to scale to zero")

    resp = server.invoke("sl", ROW)  # arrives at zero: held while a replica starts, not failed
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"] in ([0], [1])
    assert [r["state"] for r in _replicas(server, "sl")] == ["ready"]

    def counted() -> dict[str, Any] | None:
        status = server.client.describe_endpoint("sl")["serverless_status"]
        return status if status["cold_starts"] >= 1 else None

    status = wait_for(counted, 10, what="the cold start in describe")
    assert status["cold_start_ms_avg"] > 0
    # ... and in the control plane's Prometheus metrics.
    token = (server.state_dir / "token").read_text().strip()
    scraped = server.http.get(
        f"{server.api_url}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    assert scraped.status_code == 200
    cold = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
        if s.name == "modelyard_cold_starts_total"
    }
    assert cold[(("endpoint", "sl"), ("variant", "v"))] >= 1
    assert server.http.get(f"{server.api_url}/metrics").status_code == 401
    # With no more requests it goes back to zero.
    wait_for(lambda: not _replicas(server, "sl"), 30, what="the endpoint to scale in again")
    # Each scale to and from zero is a scaling activity, as the autoscaler's decisions are.
    moves = [(a["from"], a["to"], a["cause"]) for a in server.client.scaling_activities("sl")]
    assert moves[0][:2] == (1, 0) and "no request for idle_timeout_s" in moves[0][2]
    assert any(m[:2] == (0, 1) and "cold start" in m[2] for m in moves[1:])


def test_payload_over_4_mb_is_refused(server: ServerProcess) -> None:
    body = b'{"instances": [[' + b"0.5," * (1_100_000) + b"0.5]]}"
    resp = server.invoke("sl", body)
    assert resp.status_code == 413
    assert "4 MB" in resp.json()["message"]


def test_requests_over_max_concurrency_are_throttled(server: ServerProcess) -> None:
    url = f"{server.gateway_url}/endpoints/capped/invocations"
    slow: list[int] = []

    def sleeper() -> None:  # the holder answers "hold" once the test releases it
        with httpx.Client(trust_env=False, timeout=60) as http:
            slow.append(http.post(url, json="hold").status_code)

    threads = [threading.Thread(target=sleeper) for _ in range(2)]
    for thread in threads:
        thread.start()

    def throttled() -> httpx.Response | None:
        resp = server.invoke("capped", "hi")
        return resp if resp.status_code == 429 else None

    try:
        wait_held(HOLDER, 2)  # both are in progress: the next request is over the cap
        resp = wait_for(throttled, 30, interval_s=0.02, what="a request over the cap to get 429")
    finally:
        (HOLDER / "release").write_text("go")
    assert resp.headers["x-amzn-errortype"] == "ThrottlingException"
    assert "max_concurrency (2" in resp.json()["message"]
    for thread in threads:
        thread.join(30)
    assert slow == [200, 200]  # the requests within the cap were answered
    assert server.invoke("capped", "hi").status_code == 200  # and there is room again


def test_replica_over_its_memory_size_is_stopped_with_the_reason(server: ServerProcess) -> None:
    (victim,) = wait_for(lambda: _replicas(server, "small"), 30, what="a replica")
    for _ in range(4):  # each "grow" holds 300 MB more: 1.2 GB > 1024 MB
        resp = server.invoke("small", b"grow")
        if resp.status_code != 200:
            break

    def stopped() -> dict[str, Any] | None:
        rep = next((r for r in _replicas(server, "small") if r["id"] == victim["id"]), None)
        return rep if rep and "over its memory limit" in rep["message"] else None

    rep = wait_for(stopped, 30, what="the replica to be stopped for its memory")
    assert "> 1024 MB" in rep["message"]
    events = " ".join(e["message"] for e in server.client.describe_endpoint("small")["events"])
    assert "over its memory limit" in events
    logs = "\n".join(server.client.logs("small", tail=50)["lines"])
    assert "over its memory limit" in logs


def test_a_held_request_whose_client_left_frees_its_place(server: ServerProcess) -> None:
    wait_for(lambda: not _replicas(server, "slow"), 30, what="the endpoint to scale to zero")
    (SLOW / "ready").unlink()  # from now on a replica takes as long as the test says to load
    url = f"{server.gateway_url}/endpoints/slow/invocations"
    try:
        with pytest.raises(httpx.ReadTimeout):  # held; the client gives up and disconnects
            httpx.post(url, json="first", timeout=0.5, trust_env=False)

        def held_not_throttled() -> bool:
            # max_concurrency is 1: while the first request still counted, this got 429 at once.
            try:
                resp = httpx.post(url, json="second", timeout=2, trust_env=False)
            except httpx.ReadTimeout:
                return True  # held in its turn (no replica can load yet)
            if resp.status_code != 429:
                raise AssertionError(f"neither held nor throttled: {resp.status_code} {resp.text}")
            return False

        wait_for(held_not_throttled, 10, what="the first request's place to be freed")
    finally:
        (SLOW / "ready").write_text("")
    resp = wait_for(
        lambda: (r := server.invoke("slow", "third")).status_code == 200 and r, 30, what="an answer"
    )
    assert resp.json()["predictions"] == "third"
