"""The local executor: replicas are subprocesses of this machine, in sessions of their own so they
outlive a control-plane restart and are re-adopted by pid (checked against the process start time).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal

import httpx
import psutil

from modelyard.errors import ReplicaStartError
from modelyard.executors.base import ReplicaLaunch, ReplicaProcess


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _thread_limits(cpus: float | None) -> dict[str, str]:
    """A variant's ``cpus`` sizes the math libraries' thread pools (a model's own environment
    still wins). It is a sizing hint, not a hard CPU cap."""
    if cpus is None:
        return {}
    threads = str(max(1, math.ceil(cpus)))
    return {name: threads for name in THREAD_VARS}


class LocalExecutor:
    def __init__(self, run_dir: Path, cache_dir: Path, host: str = "127.0.0.1") -> None:
        self.run_dir = run_dir
        self.cache_dir = cache_dir
        self.host = host
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._http = httpx.Client(timeout=2.0, trust_env=False)

    def _command(self, launch: ReplicaLaunch, port: int) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, **_thread_limits(launch.cpus), **launch.model.environment}
        env["PORT"] = str(port)
        env["MODELYARD_REPLICA_ID"] = launch.replica_id
        if launch.model.container is not None:
            env.update(launch.model.container.env)
            return list(launch.model.container.command), env
        spec_file = self.run_dir / f"{launch.replica_id}.json"
        spec_file.write_text(
            json.dumps(
                {
                    "name": launch.model_name,
                    "spec": launch.model.model_dump(mode="json"),
                    "batching": launch.batching,
                }
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "modelyard.dataplane.modelserver",
            "--model-spec-file",
            str(spec_file),
            "--host",
            self.host,
            "--port",
            str(port),
            "--cache-dir",
            str(self.cache_dir),
        ]
        return cmd, env

    def start(self, launch: ReplicaLaunch) -> ReplicaProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port(self.host)
        cmd, env = self._command(launch, port)
        with open(launch.log_path, "ab") as log:
            try:
                child = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ReplicaStartError(f"could not run {cmd[0]!r}: {exc.strerror}") from exc
        self._children[child.pid] = child
        try:
            started = psutil.Process(child.pid).create_time()
        except psutil.Error:
            started = 0.0
        return ReplicaProcess(
            pid=child.pid, started_at=started, address=f"http://{self.host}:{port}"
        )

    def exit_code(self, proc: ReplicaProcess) -> int | None:
        child = self._children.get(proc.pid)
        if child is not None:
            code = child.poll()
            if code is not None:
                del self._children[proc.pid]
            return code
        # Adopted after a control-plane restart: not our child, so no exit status to read.
        try:
            process = psutil.Process(proc.pid)
            if abs(process.create_time() - proc.started_at) > 0.5:
                return -1  # the pid now belongs to another process
            if process.status() == psutil.STATUS_ZOMBIE:
                return -1
        except psutil.Error:
            return -1
        return None

    def ready(self, proc: ReplicaProcess, timeout_s: float) -> bool:
        try:
            return self._http.get(f"{proc.address}/ping", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def memory_mb(self, proc: ReplicaProcess) -> float | None:
        try:
            root = psutil.Process(proc.pid)
            tree = [root, *root.children(recursive=True)]
            total = 0
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
        except psutil.Error:
            return None
        return total / (1024 * 1024)

    def signal(self, proc: ReplicaProcess, how: Literal["term", "kill"]) -> None:
        if self.exit_code(proc) is not None:
            return
        sig = signal.SIGTERM if how == "term" else signal.SIGKILL
        try:
            # The replica leads its own session; signal the group so a BYOC shell's children go too.
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(proc.pid, sig)
