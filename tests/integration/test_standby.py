"""The local executor's standby: a pre-started model-server interpreter that becomes a replica.

Real processes throughout: the executor, its standby, and the replicas the standby becomes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import psutil
import pytest
from tests.support import make_sklearn_model, wait_for, write_byoc_server

from modelyard.executors.base import ReplicaLaunch, ReplicaProcess
from modelyard.executors.local import STANDBY_LOG, LocalExecutor
from modelyard.spec import ContainerSpec, ModelSpec

TIMEOUT_S = 60.0
PROC_DIR = Path("/proc/self/fd")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """An executor on a temporary directory that stops every replica and standby it started."""

    def __init__(self, root: Path, clock: FakeClock | None = None) -> None:
        self.root = root
        self.executors: list[LocalExecutor] = []
        self.executor = self.new_executor(clock)
        self.replicas: list[ReplicaProcess] = []
        self.pids: set[int] = set()  # every process to make sure of at the end
        self._count = 0

    def new_executor(self, clock: FakeClock | None = None) -> LocalExecutor:
        if clock is None:
            executor = LocalExecutor(self.root / "run", self.root / "cache")
        else:
            executor = LocalExecutor(self.root / "run", self.root / "cache", clock=clock)
        self.executors.append(executor)
        return executor

    def launch(self, model: ModelSpec, cpus: float | None = None) -> ReplicaLaunch:
        self._count += 1
        replica_id = f"r{self._count}"
        return ReplicaLaunch(
            replica_id=replica_id,
            endpoint="ep",
            variant="primary",
            model_name="m",
            model=model,
            log_path=self.root / "logs" / f"{replica_id}.log",
            cpus=cpus,
        )

    def start(self, launch: ReplicaLaunch) -> ReplicaProcess:
        proc = self.executor.start(launch)
        self.replicas.append(proc)
        self.pids.add(proc.pid)
        return proc

    def standby(self) -> int:
        pid = self.executor.standby_pid
        assert pid is not None, "no standby"
        self.pids.add(pid)
        return pid

    def warm_standby(self) -> int:
        """The standby's pid, once it has done its imports and waits."""
        pid = self.standby()
        line = f"modelyard-standby: pid {pid} waiting"
        wait_for(lambda: line in self.standby_log(), TIMEOUT_S, what="the standby to be warm")
        return pid

    def standby_log(self) -> str:
        path = self.root / "run" / STANDBY_LOG
        return path.read_text() if path.exists() else ""

    def wait_ready(self, proc: ReplicaProcess, executor: LocalExecutor | None = None) -> None:
        executor = executor or self.executor

        def ready() -> bool:
            code = executor.exit_code(proc)
            assert code is None, f"the replica exited {code}: {self.log(proc)}"
            if executor.ready(proc, 1.0):
                return True
            httpx.get(f"{proc.address}/ping", timeout=1, trust_env=False).raise_for_status()
            return False  # (the line above says why for the failure message)

        wait_for(ready, TIMEOUT_S, what="the replica to be ready")

    def wait_exit(self, proc: ReplicaProcess, executor: LocalExecutor | None = None) -> int:
        executor = executor or self.executor

        def exited() -> tuple[int] | None:  # a tuple, so that status 0 counts as an answer
            code = executor.exit_code(proc)
            return None if code is None else (code,)

        (code,) = wait_for(exited, TIMEOUT_S, what="the replica to exit")
        return code

    def log(self, proc: ReplicaProcess) -> str:
        logs = [p.read_text() for p in (self.root / "logs").glob("*.log")]
        return "\n".join(logs) + self.standby_log()

    def _ended(self, proc: ReplicaProcess) -> Callable[[], bool]:
        # Each executor reports an exit once the process is gone; its parent collects it.
        return lambda: all(e.exit_code(proc) is not None for e in self.executors)

    def close(self) -> None:
        for executor in self.executors:
            executor.close()
        for proc in self.replicas:
            self.executor.signal(proc, "kill")
            wait_for(self._ended(proc), TIMEOUT_S, what=f"replica {proc.pid} to die")
        for pid in self.pids - {proc.pid for proc in self.replicas}:
            _kill_and_wait(pid)


def _kill_and_wait(pid: int) -> None:
    """Kill ``pid`` and wait until it is gone (or a zombie: its parent collects it)."""
    try:
        psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        return
    wait_for(lambda: _gone(pid), TIMEOUT_S, what=f"process {pid} to die")


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie counts: whoever is its parent collects it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _child_ended(pid: int) -> bool:
    """Whether our child ``pid`` has ended, every thread of it, its status left to collect.
    (psutil calls a process a zombie as soon as its main thread is one.)"""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def sklearn_spec(tmp_path: Path) -> ModelSpec:
    make_sklearn_model(tmp_path / "model.joblib")
    return ModelSpec(runtime="sklearn", artifact=str(tmp_path / "model.joblib"))


ROWS = [[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]]


def _invoke(proc: ReplicaProcess, body: object) -> httpx.Response:
    return httpx.post(f"{proc.address}/invocations", json=body, trust_env=False, timeout=10)


def test_the_standby_becomes_the_replica(
    harness: Harness, sklearn_spec: ModelSpec, tmp_path: Path
) -> None:
    harness.executor.set_standby(True)
    standby = harness.warm_standby()
    launch = harness.launch(sklearn_spec)

    proc = harness.start(launch)

    assert proc.pid == standby
    assert proc.started_at == psutil.Process(standby).create_time()
    harness.wait_ready(proc)
    answer = _invoke(proc, {"instances": ROWS})
    assert answer.status_code == 200, answer.text
    expected = joblib.load(tmp_path / "model.joblib").predict(np.array(ROWS))
    assert answer.json() == {"predictions": expected.tolist()}
    # Its output goes to its own log, as a cold-started replica's does, and stdin is let go.
    assert f"modelyard-replica: ready on {proc.address}" in launch.log_path.read_text()
    assert "modelyard-replica" not in harness.standby_log()
    if PROC_DIR.exists():
        fds = {fd: os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (0, 1, 2)}
        assert fds == {0: os.devnull, 1: str(launch.log_path), 2: str(launch.log_path)}
    # The next standby is already on its way.
    fresh = harness.standby()
    assert fresh != standby
    assert psutil.Process(fresh).status() != psutil.STATUS_ZOMBIE
    # And the replica drains on SIGTERM like any other.
    harness.executor.signal(proc, "term")
    assert harness.wait_exit(proc) == 0


def test_the_replica_gets_its_environment(harness: Harness, tmp_path: Path) -> None:
    folder = tmp_path / "predictor"
    folder.mkdir()
    (folder / "env_predictor.py").write_text(
        textwrap.dedent(
            """
            import os

            class Predictor:
                def load(self, model_dir):
                    pass

                def predict(self, inputs):
                    return {name: os.environ.get(name) for name in inputs}
            """
        )
    )
    spec = ModelSpec(runtime="python", artifact=str(folder), predictor="env_predictor:Predictor")
    harness.executor.set_standby(True)
    standby = harness.standby()  # assigned before it is warm: it reads it when it is
    launch = harness.launch(spec)

    proc = harness.start(launch)

    assert proc.pid == standby
    harness.wait_ready(proc)
    answer = _invoke(proc, ["PORT", "MODELYARD_REPLICA_ID"])
    port = proc.address.rsplit(":", 1)[1]
    expected = {"PORT": port, "MODELYARD_REPLICA_ID": launch.replica_id}
    assert answer.json() == {"predictions": expected}


def test_a_replica_from_the_standby_outlives_a_control_plane_restart(
    harness: Harness, sklearn_spec: ModelSpec
) -> None:
    harness.executor.set_standby(True)
    harness.warm_standby()
    proc = harness.start(harness.launch(sklearn_spec))
    harness.wait_ready(proc)
    fresh = harness.standby()
    old = harness.executor

    old.close()  # the control plane goes away: its standby goes, its replicas stay
    restarted = harness.new_executor()

    assert _gone(fresh)
    assert restarted.exit_code(proc) is None
    assert restarted.ready(proc, 1.0)
    restarted.signal(proc, "term")
    # Still a child of this test process (the old executor's): its exit status is there to read.
    assert harness.wait_exit(proc, old) == 0
    assert restarted.exit_code(proc) == -1


CONTROL_PLANE = """
import json, sys, time
from pathlib import Path
from modelyard.executors.base import ReplicaLaunch
from modelyard.executors.local import STANDBY_LOG, LocalExecutor
from modelyard.spec import ModelSpec

root, artifact = Path(sys.argv[1]), sys.argv[2]
executor = LocalExecutor(root / "run", root / "cache")
executor.set_standby(True)
standby = executor.standby_pid
while f"pid {standby} waiting" not in (root / "run" / STANDBY_LOG).read_text():
    time.sleep(0.05)
launch = ReplicaLaunch("r1", "ep", "primary", "m", ModelSpec(runtime="sklearn", artifact=artifact),
                       root / "logs" / "r1.log")
proc = executor.start(launch)
print(json.dumps({"pid": proc.pid, "started_at": proc.started_at, "address": proc.address,
                  "standby": executor.standby_pid}), flush=True)
time.sleep(600)
"""


def test_a_killed_control_plane_leaves_the_replica_and_its_standby_exits(
    harness: Harness, tmp_path: Path
) -> None:
    make_sklearn_model(tmp_path / "model.joblib")
    control = subprocess.Popen(
        [sys.executable, "-c", CONTROL_PLANE, str(tmp_path), str(tmp_path / "model.joblib")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert control.stdout is not None
        started = json.loads(control.stdout.readline())
        harness.pids.update({started["pid"], started["standby"]})
        proc = ReplicaProcess(started["pid"], started["started_at"], started["address"])
        harness.replicas.append(proc)
    finally:
        control.kill()
        control.wait()
        if control.stdout is not None:
            control.stdout.close()
    restarted = harness.executor

    # The next standby sees its pipe close and leaves by itself (not our child: no status).
    wait_for(lambda: _gone(started["standby"]), TIMEOUT_S, what="the orphaned standby to exit")
    harness.wait_ready(proc, restarted)
    assert _invoke(proc, {"instances": ROWS}).status_code == 200
    restarted.signal(proc, "term")
    assert harness.wait_exit(proc, restarted) == -1  # gone, status unknown to a non-parent


def test_ineligible_launches_start_cold_and_leave_the_standby(
    harness: Harness, sklearn_spec: ModelSpec, tmp_path: Path
) -> None:
    server = write_byoc_server(tmp_path / "byoc")
    container = ModelSpec(
        runtime="container", container=ContainerSpec(command=[sys.executable, str(server)])
    )
    with_environment = sklearn_spec.model_copy(update={"environment": {"GREETING": "hi"}})
    launches = [
        harness.launch(container),
        harness.launch(with_environment),
        harness.launch(sklearn_spec, cpus=1.0),
    ]
    harness.executor.set_standby(True)
    standby = harness.standby()

    procs = [harness.start(launch) for launch in launches]

    for proc in procs:
        assert proc.pid != standby
        harness.wait_ready(proc)
    assert harness.executor.standby_pid == standby
    assert psutil.Process(standby).status() != psutil.STATUS_ZOMBIE
    assert "modelyard.dataplane.modelserver" in psutil.Process(procs[2].pid).cmdline()
    assert psutil.Process(procs[2].pid).environ()["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize(
    ("found", "logged"),
    [
        ("dead", "exited with status -9"),
        ("alive but its pipe broken", "died before its assignment"),
    ],
)
def test_a_dead_standby_is_replaced_and_the_launch_starts_cold(
    harness: Harness,
    sklearn_spec: ModelSpec,
    found: str,
    logged: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness.executor.set_standby(True)
    standby = harness.standby()
    os.kill(standby, signal.SIGKILL)
    wait_for(lambda: _child_ended(standby), TIMEOUT_S, what="the standby to die")
    if found != "dead":  # it dies between the executor's look and its write
        popen = harness.executor._standby
        monkeypatch.setattr(popen, "poll", lambda: None)

    proc = harness.start(harness.launch(sklearn_spec))

    assert proc.pid != standby
    harness.wait_ready(proc)  # (and only then is its command line surely the new program's)
    assert "modelyard.dataplane.modelserver" in psutil.Process(proc.pid).cmdline()
    assert _invoke(proc, {"instances": ROWS}).status_code == 200
    replacement = harness.standby()
    assert replacement != standby
    assert not _gone(replacement)
    assert f"the standby (pid {standby}) {logged}" in caplog.text


def test_standbys_that_keep_dying_are_replaced_with_backoff(tmp_path: Path) -> None:
    clock = FakeClock()
    harness = Harness(tmp_path, clock)
    try:
        executor = harness.executor
        executor.set_standby(True)
        first = harness.standby()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _child_ended(first), TIMEOUT_S, what="the standby to die")
        executor.set_standby(True)
        second = harness.standby()  # the first death is replaced at once
        assert second != first
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: _child_ended(second), TIMEOUT_S, what="the standby to die")

        executor.set_standby(True)
        assert executor.standby_pid is None  # the second waits a second
        clock.now += 1.0
        executor.set_standby(True)
        assert harness.standby() not in (first, second)
    finally:
        harness.close()


def test_a_model_that_cannot_load_exits_3(harness: Harness, tmp_path: Path) -> None:
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a pickle")
    harness.executor.set_standby(True)
    standby = harness.standby()
    launch = harness.launch(ModelSpec(runtime="sklearn", artifact=str(broken)))

    proc = harness.start(launch)

    assert proc.pid == standby
    assert harness.wait_exit(proc) == 3
    assert "modelyard-replica: load failed" in launch.log_path.read_text()


def test_turning_the_standby_off_or_closing_stops_it(harness: Harness) -> None:
    executor = harness.executor
    executor.set_standby(True)
    first = harness.standby()
    executor.set_standby(False)
    assert executor.standby_pid is None
    assert not psutil.pid_exists(first)  # killed and collected

    executor.set_standby(True)
    second = harness.standby()
    executor.close()
    assert executor.standby_pid is None
    assert not psutil.pid_exists(second)


def test_an_unassigned_standby_exits_quietly_at_end_of_input(tmp_path: Path) -> None:
    standby = subprocess.Popen(
        [sys.executable, "-m", "modelyard.dataplane.standby"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert standby.stdin is not None and standby.stdout is not None
        assert (
            standby.stdout.readline() == f"modelyard-standby: pid {standby.pid} waiting\n".encode()
        )
        standby.stdin.close()
        assert standby.wait(TIMEOUT_S) == 0
        assert standby.stdout.read() == b""
    finally:
        if standby.poll() is None:
            standby.kill()
            standby.wait()
        if standby.stdout is not None:
            standby.stdout.close()
