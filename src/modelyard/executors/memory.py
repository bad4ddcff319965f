"""An in-memory executor for unit tests: replicas are records whose fate the test decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from modelyard.executors.base import ReplicaLaunch, ReplicaProcess


@dataclass
class FakeReplica:
    launch: ReplicaLaunch
    proc: ReplicaProcess
    ready: bool = False
    exit_code: int | None = None
    memory_mb: float | None = None
    signals: list[str] = field(default_factory=list)


class MemoryExecutor:
    """Started replicas become ready when :attr:`auto_ready` is set, or when a test says so."""

    def __init__(self, auto_ready: bool = True) -> None:
        self.auto_ready = auto_ready
        self.replicas: dict[int, FakeReplica] = {}
        self._next_pid = 1000
        self.standby = False

    def start(self, launch: ReplicaLaunch) -> ReplicaProcess:
        self._next_pid += 1
        pid = self._next_pid
        proc = ReplicaProcess(pid=pid, started_at=float(pid), address=f"mem://{launch.replica_id}")
        self.replicas[pid] = FakeReplica(launch=launch, proc=proc, ready=self.auto_ready)
        return proc

    def by_id(self, replica_id: str) -> FakeReplica:
        """The latest process started for a replica (a restart starts a new one)."""
        return [r for r in self.replicas.values() if r.launch.replica_id == replica_id][-1]

    def running(self) -> list[FakeReplica]:
        return [r for r in self.replicas.values() if r.exit_code is None]

    def exit_code(self, proc: ReplicaProcess) -> int | None:
        fake = self.replicas.get(proc.pid)
        return -1 if fake is None else fake.exit_code

    def ready(self, proc: ReplicaProcess, timeout_s: float) -> bool:
        fake = self.replicas.get(proc.pid)
        return bool(fake and fake.exit_code is None and fake.ready)

    def memory_mb(self, proc: ReplicaProcess) -> float | None:
        fake = self.replicas.get(proc.pid)
        return fake.memory_mb if fake else None

    def signal(self, proc: ReplicaProcess, how: Literal["term", "kill"]) -> None:
        fake = self.replicas.get(proc.pid)
        if fake is None or fake.exit_code is not None:
            return
        fake.signals.append(how)
        fake.exit_code = 0 if how == "term" else -9

    def set_standby(self, enabled: bool) -> None:
        self.standby = enabled
