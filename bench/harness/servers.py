"""The servers under test: the HTTP ceiling and the hand-written server (uvicorn, N workers),
and the platform (``modelyard server`` with one endpoint per platform target)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil

from harness.common import (
    BASELINES_DIR,
    BATCHING,
    PLATFORM,
    PLATFORM_NO_BATCHING,
    Workload,
    child_env,
)
from harness.procs import Child, HarnessError, free_port, wait_until
from modelyard.client import Client
from modelyard.errors import ModelyardError

START_TIMEOUT_S = 120.0
Processes = Callable[[], list[psutil.Process]]


class Server(Protocol):
    def terminate(self) -> None: ...

    def stop(self) -> None: ...


def stop_all(servers: list[Server]) -> None:
    """Stop the servers at the same time: each is asked first, then each is waited for."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


def _http() -> httpx.Client:
    return httpx.Client(timeout=10.0, trust_env=False)


class UvicornServer:
    """``uvicorn MODULE:app --workers N`` on a free port, with the flags every baseline uses.
    Ready once every worker has left its pid in the ready folder and ``GET /ping`` answers."""

    def __init__(
        self, name: str, app: str, workers: int, work_dir: Path, env: dict[str, str]
    ) -> None:
        """Starts the server; :meth:`wait` waits until it serves."""
        self.name = name
        self.app = app
        self.workers = workers
        self.work_dir = work_dir
        self.env = env
        self.ready_dir = work_dir / f"{app.partition(':')[0]}-ready"
        self.attempts = 0
        self._start()

    def _start(self) -> None:
        self.attempts += 1
        for leftover in self.ready_dir.glob("*"):
            leftover.unlink()
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()  # a moment may pass before uvicorn binds it: wait() retries then
        self.url = f"http://127.0.0.1:{port}"
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            self.app,
            "--app-dir",
            str(BASELINES_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(self.workers),
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        stem = self.app.partition(":")[0]
        self.child = Child(
            self.name,
            argv,
            log_path=self.work_dir / f"{stem}-{self.attempts}.log",
            env=child_env(BENCH_READY_DIR=str(self.ready_dir), **self.env),
        )

    def wait(self) -> None:
        """Until every worker serves; HarnessError (with the log's tail) if it cannot start."""
        while True:
            try:
                wait_until(self._ready, START_TIMEOUT_S, f"the {self.name} to start")
                return
            except HarnessError:
                in_use = "address already in use" in self.child.log_tail(50).lower()
                self.child.stop()
                if not in_use or self.attempts >= 3:
                    raise
                self._start()

    def _ready(self) -> bool:
        self.child.check_running()
        if len(list(self.ready_dir.iterdir())) < self.workers:
            return False
        with _http() as http:
            return http.get(f"{self.url}/ping").status_code == 200

    @property
    def invocations_url(self) -> str:
        return f"{self.url}/invocations"

    def processes(self) -> list[psutil.Process]:
        return self.child.tree()

    def terminate(self) -> None:
        self.child.terminate()

    def stop(self) -> None:
        self.child.stop()


class Platform:
    """``modelyard server`` in a state directory of its own, on free ports."""

    def __init__(self, work_dir: Path) -> None:
        """Starts the server; :meth:`wait` waits until its control plane answers."""
        self.state_dir = work_dir / "platform-state"
        argv = [
            sys.executable,
            "-m",
            "modelyard.cli.main",
            "server",
            "--state-dir",
            str(self.state_dir),
            "--port",
            "0",
            "--gateway-port",
            "0",
        ]
        self.child = Child(
            "modelyard server",
            argv,
            log_path=work_dir / "platform-server.log",
            env=dict(os.environ),
        )
        self.replica_pids: dict[str, set[int]] = {}
        self.api_url = self.gateway_url = ""
        self.client: Client | None = None

    def wait(self) -> None:
        info = wait_until(self._server_info, START_TIMEOUT_S, "modelyard server's server.json")
        self.api_url = info["api_url"]
        self.gateway_url = info["gateway_url"]
        wait_until(self._healthy, START_TIMEOUT_S, "the control plane to answer /healthz")
        self.client = Client(state_dir=self.state_dir)

    def _server_info(self) -> dict[str, Any] | None:
        self.child.check_running()
        path = self.state_dir / "server.json"
        return dict(json.loads(path.read_text())) if path.exists() else None

    def _healthy(self) -> bool:
        self.child.check_running()
        with _http() as http:
            return http.get(f"{self.api_url}/healthz").status_code == 200

    def deploy(
        self, models: dict[Workload, Path], workers: int, batching_replicas: int
    ) -> dict[tuple[str, str], str]:
        """One Model per workload and one Endpoint per platform target (``workers`` replicas,
        ``batching_replicas`` for the batching one); waits until all are in service. Returns
        ``{(workload id, target): endpoint name}``."""
        documents: list[dict[str, Any]] = []
        names: dict[tuple[str, str], str] = {}
        for workload, artifact in models.items():
            documents.append(
                {
                    "kind": "Model",
                    "name": workload.slug,
                    "spec": {
                        "runtime": "sklearn",
                        "method": "predict_proba",
                        "artifact": str(artifact),
                    },
                }
            )
            endpoints = [(PLATFORM, workload.slug, workload.batching)]
            if workload.batching:
                endpoints.append((PLATFORM_NO_BATCHING, f"{workload.slug}-nobatch", False))
            for target, name, batching in endpoints:
                variant: dict[str, Any] = {
                    "name": "main",
                    "model": workload.slug,
                    "instance_count": batching_replicas if batching else workers,
                    "resources": {"cpus": 1},
                }
                if batching:
                    variant["batching"] = dict(BATCHING)
                documents.append(
                    {
                        "kind": "Endpoint",
                        "name": name,
                        "spec": {"type": "realtime", "variants": [variant]},
                    }
                )
                names[(workload.id, target)] = name
        assert self.client is not None, "wait() first"
        try:
            self.client.apply(documents)
        except ModelyardError as exc:
            raise HarnessError(f"the platform refused the benchmark's resources: {exc}") from exc
        for name in names.values():
            self.child.check_running()
            try:
                view = self.client.wait_endpoint(name, timeout_s=START_TIMEOUT_S)
            except ModelyardError as exc:
                raise HarnessError(f"platform endpoint {name} did not come up: {exc}") from exc
            if view["status"] != "InService":
                lines = "\n".join(view.get("last_log_lines", [])) or "(no replica log)"
                events = "; ".join(e["message"] for e in view.get("events", [])[-5:])
                raise HarnessError(
                    f"platform endpoint {name} is {view['status']}: {events}\n{lines}"
                )
            self.replica_pids[name] = {
                replica["pid"]
                for variant in view["variants"]
                for replica in variant["replicas"]
                if replica.get("pid")
            }
        return names

    def deploy_serverless(self, name: str, model: str, idle_timeout_s: int) -> None:
        """A serverless endpoint of the (already applied) Model ``model`` that scales to zero
        after ``idle_timeout_s``; waits until it is in service (with its first replica)."""
        assert self.client is not None, "wait() first"
        document = {
            "kind": "Endpoint",
            "name": name,
            "spec": {
                "type": "serverless",
                "serverless": {
                    "memory_mb": 2048,
                    "max_concurrency": 20,
                    "provisioned_concurrency": 0,
                    "idle_timeout_s": idle_timeout_s,
                },
                # No `resources.cpus`: a replica with thread limits cannot be handed to the
                # standby interpreter (executors/local.py), so it would start cold (~1.1 s here).
                "variants": [{"name": "main", "model": model}],
            },
        }
        try:
            self.client.apply([document])
        except ModelyardError as exc:
            raise HarnessError(f"the platform refused the serverless endpoint: {exc}") from exc
        self.child.check_running()
        try:
            view = self.client.wait_endpoint(name, timeout_s=START_TIMEOUT_S)
        except ModelyardError as exc:
            raise HarnessError(f"platform endpoint {name} did not come up: {exc}") from exc
        if view["status"] != "InService":
            events = "; ".join(e["message"] for e in view.get("events", [])[-5:])
            raise HarnessError(f"platform endpoint {name} is {view['status']}: {events}")

    def invocations_url(self, endpoint: str) -> str:
        return f"{self.gateway_url}/endpoints/{endpoint}/invocations"

    def processes_for(self, endpoint: str) -> Processes:
        """The processes one endpoint costs: the server's own (supervisor, control plane,
        gateway) and that endpoint's replicas, not the other endpoints' replicas."""
        others = {
            pid for name, pids in self.replica_pids.items() if name != endpoint for pid in pids
        }

        def processes() -> list[psutil.Process]:
            skip = set(others)
            for pid in others:
                with contextlib.suppress(psutil.Error):
                    skip.update(p.pid for p in psutil.Process(pid).children(recursive=True))
            return [p for p in self.child.tree() if p.pid not in skip]

        return processes

    def terminate(self) -> None:
        self.child.terminate()  # it drains the replicas, then exits

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.child.stop(timeout_s=60.0)
