"""Crashes and restarts under traffic: a killed replica, a killed control plane, a full restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.support import ServerProcess, make_sklearn_model, wait_for, write_yaml

BODY = b'{"instances": [[0.5, -1.0, 2.0, 0.25]]}'


class Traffic:
    """Invokes an endpoint in a loop from a thread and tallies the answers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int | str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    resp = http.post(
                        self.url, content=BODY, headers={"Content-Type": "application/json"}
                    )
                    self.statuses[resp.status_code] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        wait_for(lambda: self.statuses[200] > 0, 10, what="first answers")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def ok_since(self, count: int) -> bool:
        return self.statuses[200] >= count


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    make_sklearn_model(tmp_path / "model.joblib")
    write_yaml(
        tmp_path / "endpoint.yaml",
        [
            {
                "kind": "Model",
                "name": "m",
                "spec": {"artifact": "model.joblib", "runtime": "sklearn"},
            },
            {
                "kind": "Endpoint",
                "name": "ep",
                "spec": {"variants": [{"name": "primary", "model": "m", "instance_count": 2}]},
            },
        ],
    )
    proc = ServerProcess(tmp_path / "state")
    try:
        proc.client.apply_file(tmp_path / "endpoint.yaml")
        assert proc.client.wait_endpoint("ep", timeout_s=120)["status"] == "InService"
        yield proc
    finally:
        proc.stop()


def _replicas(server: ServerProcess) -> list[dict[str, Any]]:
    view = server.client.describe_endpoint("ep")
    return [r for v in view["variants"] for r in v["replicas"]]


def test_killed_replica_restarts_without_failing_other_requests(server: ServerProcess) -> None:
    victim = _replicas(server)[0]
    with Traffic(f"{server.gateway_url}/endpoints/ep/invocations") as traffic:
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            rep = next(r for r in _replicas(server) if r["id"] == victim["id"])
            return rep if rep["restarts"] == 1 and rep["state"] == "ready" else None

        rep = wait_for(restarted, 60, what="the replica to restart")
        seen = traffic.statuses[200]
        wait_for(lambda: traffic.ok_since(seen + 20), 20, what="traffic after the restart")
    assert rep["pid"] != victim["pid"]
    failures = {k: v for k, v in traffic.statuses.items() if k != 200}
    assert failures == {}, f"requests failed while a replica was killed: {failures}"
    events = " ".join(e["message"] for e in server.client.describe_endpoint("ep")["events"])
    assert f"replica {victim['id']} exited with status -9" in events


def test_control_plane_restart_keeps_serving_and_readopts_replicas(server: ServerProcess) -> None:
    before = {r["id"]: r["pid"] for r in _replicas(server)}
    control = server.child("modelyard.controlplane.main")
    with Traffic(f"{server.gateway_url}/endpoints/ep/invocations") as traffic:
        control.kill()
        control.wait(10)
        seen = traffic.statuses[200]
        # While it is down (and after the supervisor restarts it) the gateway keeps serving.
        wait_for(
            lambda: traffic.ok_since(seen + 50), 30, what="traffic with the control plane down"
        )
        view = wait_for(
            lambda: server.client.describe_endpoint("ep"), 30, what="the control plane back"
        )
    assert server.child("modelyard.controlplane.main").pid != control.pid
    assert view["status"] == "InService"
    after = {r["id"]: r["pid"] for r in _replicas(server)}
    assert after == before, "replicas were restarted instead of re-adopted"
    failures = {k: v for k, v in traffic.statuses.items() if k != 200}
    assert failures == {}, f"requests failed across the control-plane restart: {failures}"


def test_gateway_restart_serves_from_the_saved_routing_table(server: ServerProcess) -> None:
    gateway = server.child("modelyard.dataplane.main")
    gateway.kill()
    gateway.wait(10)

    def answered() -> bool:
        return (
            httpx.post(
                f"{server.gateway_url}/endpoints/ep/invocations",
                content=BODY,
                headers={"Content-Type": "application/json"},
                trust_env=False,
            ).status_code
            == 200
        )

    wait_for(answered, 30, what="the restarted gateway to serve")
    assert server.child("modelyard.dataplane.main").pid != gateway.pid


def test_gateway_workers_share_the_port_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    make_sklearn_model(tmp_path / "model.joblib")
    docs = [
        {"kind": "Model", "name": "m", "spec": {"artifact": "model.joblib", "runtime": "sklearn"}},
        {"kind": "Endpoint", "name": "ep", "spec": {"variants": [{"name": "v", "model": "m"}]}},
    ]
    write_yaml(tmp_path / "endpoint.yaml", docs)
    server = ServerProcess(tmp_path / "state", "--gateway-workers", "2")

    def gateways() -> list[psutil.Process]:
        return [
            p
            for p in psutil.Process(server.proc.pid).children()
            if "modelyard.dataplane.main" in " ".join(p.cmdline())
        ]

    def answered() -> bool:  # a new connection each time: whichever worker accepts it answers
        url = f"{server.gateway_url}/endpoints/ep/invocations"
        headers = {"Content-Type": "application/json"}
        return httpx.post(url, content=BODY, headers=headers, trust_env=False).status_code == 200

    try:
        server.client.apply_file(tmp_path / "endpoint.yaml")
        assert server.client.wait_endpoint("ep", timeout_s=120)["status"] == "InService"
        first, second = wait_for(lambda: gateways() if len(gateways()) == 2 else None, 30)
        first.kill()
        first.wait(10)
        assert all(answered() for _ in range(20))  # the other worker serves meanwhile
        replaced = wait_for(
            lambda: gateways() if len(gateways()) == 2 else None, 30, what="a new gateway worker"
        )
        assert first.pid not in {p.pid for p in replaced}
        assert second.pid in {p.pid for p in replaced}
        wait_for(answered, 30, what="the gateway to serve")
    finally:
        assert server.stop() == 0


def test_server_stop_drains_replicas_and_start_brings_endpoints_back(
    server: ServerProcess, tmp_path: Path
) -> None:
    pids = [r["pid"] for r in _replicas(server)]
    assert server.stop() == 0
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), 10, what=f"replica {pid} to stop")
    again = ServerProcess(tmp_path / "state")
    try:
        view = again.client.wait_endpoint("ep", timeout_s=120)
        assert view["status"] == "InService" and view["revision"] == 1
        wait_for(
            lambda: (
                view["replicas_ready"] == 2
                or again.client.describe_endpoint("ep")["replicas_ready"] == 2
            ),
            60,
            what="replicas",
        )
        resp = again.invoke("ep", BODY)
        wait_for(
            lambda: again.invoke("ep", BODY).status_code == 200, 30, what="an answer after restart"
        )
        assert resp.status_code in (200, 503)
    finally:
        again.stop()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_second_server_on_the_same_state_dir_is_refused(server: ServerProcess) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelyard.cli.main",
            "server",
            "--state-dir",
            str(server.state_dir),
            "--port",
            "0",
            "--gateway-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "another modelyard server is running" in out.stderr
    assert server.client.describe_endpoint("ep")["status"] == "InService"
