"""The local executor: replicas are subprocesses of this machine, in sessions of their own so they
outlive a control-plane restart and are re-adopted by pid (checked against the process start time).

Optionally it keeps a standby (:mod:`modelyard.dataplane.standby`): a model-server interpreter
started ahead of time that becomes the next eligible replica, which then starts in the time its
model takes to load. The standby is started like a replica (a session of its own, the same
environment) and exits by itself when the pipe to it closes (a control-plane restart).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx
import psutil

from modelyard.errors import ReplicaStartError
from modelyard.executors.base import ReplicaLaunch, ReplicaProcess

logger = logging.getLogger("modelyard.executor")


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


MODEL_SERVER = "modelyard.dataplane.modelserver"
STANDBY = "modelyard.dataplane.standby"
STANDBY_LOG = "standby.log"
_STANDBY_BACKOFF_MAX_S = 60.0
_REAP_TIMEOUT_S = 1.0


def _standby_eligible(launch: ReplicaLaunch) -> bool:
    """Whether a standby can serve ``launch``: a built-in runtime whose environment needs nothing
    set before numpy is imported (no thread limits, no model environment)."""
    return launch.model.container is None and not launch.model.environment and launch.cpus is None


class LocalExecutor:
    """Replicas as subprocesses of this machine.

    With :meth:`set_standby` on, it keeps one standby interpreter
    (:mod:`modelyard.dataplane.standby`) that has already imported the model server and its
    heavy libraries; :meth:`start` hands it an eligible launch instead of starting a fresh
    interpreter, then starts the next standby.

    Meant for one controller thread; the standby's state has a lock of its own all the same.
    """

    def __init__(
        self,
        run_dir: Path,
        cache_dir: Path,
        host: str = "127.0.0.1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_dir = run_dir
        self.cache_dir = cache_dir
        self.host = host
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._http = httpx.Client(timeout=2.0, trust_env=False)
        self._clock = clock
        self._standby_lock = threading.Lock()
        self._standby_wanted = False
        self._standby: subprocess.Popen[bytes] | None = None
        self._standby_failures = 0  # standbys that died unassigned since the last assignment
        self._standby_retry_at = 0.0
        self._reaping: list[subprocess.Popen[bytes]] = []

    # -- launching -------------------------------------------------------------------------------

    def _launch_env(self, launch: ReplicaLaunch, port: int) -> dict[str, str]:
        """What a replica's environment adds to this process's."""
        env = {**_thread_limits(launch.cpus), **launch.model.environment}
        env["PORT"] = str(port)
        env["MODELYARD_REPLICA_ID"] = launch.replica_id
        if launch.model.container is not None:
            env.update(launch.model.container.env)
        return env

    def _server_args(self, launch: ReplicaLaunch, port: int) -> list[str]:
        """The model server's arguments for ``launch``, its spec file written."""
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
        return [
            "--model-spec-file",
            str(spec_file),
            "--host",
            self.host,
            "--port",
            str(port),
            "--cache-dir",
            str(self.cache_dir),
            *(
                ["--drain-grace-s", f"{launch.drain_grace_s:g}"]
                if launch.drain_grace_s is not None
                else []
            ),
        ]

    def _command(self, launch: ReplicaLaunch, port: int) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, **self._launch_env(launch, port)}
        if launch.model.container is not None:
            return list(launch.model.container.command), env
        return [sys.executable, "-m", MODEL_SERVER, *self._server_args(launch, port)], env

    def start(self, launch: ReplicaLaunch) -> ReplicaProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port(self.host)
        if _standby_eligible(launch):
            with self._standby_lock:
                proc = self._assign_standby(launch, port)
                self._ensure_standby()  # the next one imports while this replica loads its model
            if proc is not None:
                return proc
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
        return self._started(child.pid, port)

    def _started(self, pid: int, port: int) -> ReplicaProcess:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            started = 0.0
        return ReplicaProcess(pid=pid, started_at=started, address=f"http://{self.host}:{port}")

    # -- the standby ----------------------------------------------------------------------------

    def set_standby(self, enabled: bool) -> None:
        """Keep one standby interpreter ready while ``enabled`` (say, while serverless endpoints
        exist); stop it otherwise. Cheap to call repeatedly: it replaces a standby that died,
        backing off when they keep dying (so call it on every reconcile pass)."""
        with self._standby_lock:
            self._standby_wanted = enabled
            if enabled:
                self._ensure_standby()
            else:
                self._stop_standby()

    def close(self) -> None:
        """At shutdown: stop the standby and close the HTTP client. Replicas are left alone (and
        can still be signalled and watched with :meth:`signal` and :meth:`exit_code`)."""
        with self._standby_lock:
            self._standby_wanted = False
            self._stop_standby()
        self._http.close()

    @property
    def standby_pid(self) -> int | None:
        """The pid of the current, unassigned standby (which may still be importing)."""
        return self._standby.pid if self._standby is not None else None

    def _ensure_standby(self) -> None:
        self._reaping = [p for p in self._reaping if p.poll() is None]
        standby = self._standby
        if standby is not None:
            if standby.poll() is None:
                return
            self._standby_died(standby)
        if not self._standby_wanted or self._clock() < self._standby_retry_at:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / STANDBY_LOG, "ab") as log:
            try:
                self._standby = subprocess.Popen(
                    [sys.executable, "-m", STANDBY],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # as a replica's: it becomes one
                )
            except OSError as exc:
                logger.warning("cannot start a standby: %s", exc)
                self._standby_failed()

    def _standby_died(self, standby: subprocess.Popen[bytes]) -> None:
        """Forget a standby that ended before it was assigned."""
        self._standby = None
        _close_stdin(standby)
        logger.warning(
            "the standby (pid %d) exited with status %s; see %s",
            standby.pid,
            standby.returncode,
            self.run_dir / STANDBY_LOG,
        )
        self._standby_failed()

    def _standby_failed(self) -> None:
        # The first replacement is immediate; then 1 s, 2 s, 4 s ... so that a standby that
        # cannot start does not spin.
        self._standby_failures += 1
        delay = 0.0 if self._standby_failures == 1 else 2.0 ** (self._standby_failures - 2)
        self._standby_retry_at = self._clock() + min(delay, _STANDBY_BACKOFF_MAX_S)

    def _assign_standby(self, launch: ReplicaLaunch, port: int) -> ReplicaProcess | None:
        """``launch`` handed to the standby; None when there is no live one to take it."""
        standby = self._standby
        if standby is None or not self._standby_wanted:
            return None
        if standby.poll() is not None:
            self._standby_died(standby)
            return None
        with open(launch.log_path, "ab"):  # fails here, as the cold path does, not in the standby
            pass
        assignment = {
            "argv": self._server_args(launch, port),
            "env": self._launch_env(launch, port),
            "log_path": str(launch.log_path),
        }
        line = json.dumps(assignment).encode() + b"\n"
        assert standby.stdin is not None
        try:
            # One short line fits the pipe's buffer: this never waits for the standby's imports.
            standby.stdin.write(line)
            standby.stdin.flush()
        except BrokenPipeError:  # it died since poll() looked
            self._standby = None
            self._reap(standby)
            logger.warning("the standby (pid %d) died before its assignment", standby.pid)
            self._standby_failed()
            return None
        _close_stdin(standby)
        self._standby = None
        self._standby_failures = 0
        self._standby_retry_at = 0.0
        self._children[standby.pid] = standby
        return self._started(standby.pid, port)

    def _stop_standby(self) -> None:
        standby, self._standby = self._standby, None
        if standby is not None:
            self._reap(standby)

    def _reap(self, standby: subprocess.Popen[bytes]) -> None:
        """Kill an unassigned standby and collect its exit status."""
        _close_stdin(standby)
        with contextlib.suppress(ProcessLookupError):
            standby.kill()
        try:
            standby.wait(_REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # collected later, by _ensure_standby
            self._reaping.append(standby)

    # -- observing --------------------------------------------------------------------------------

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


def _close_stdin(child: subprocess.Popen[bytes]) -> None:
    if child.stdin is not None:
        with contextlib.suppress(OSError):  # BrokenPipeError: what was left unwritten is moot
            child.stdin.close()
