"""The executor seam: start a replica, watch it, signal it. Controllers know nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from modelyard.spec import ModelSpec


@dataclass(frozen=True, slots=True)
class ReplicaLaunch:
    """Everything needed to start one replica of one variant."""

    replica_id: str
    endpoint: str
    variant: str
    model_name: str
    model: ModelSpec
    log_path: Path
    cpus: float | None = None
    #: ``{"max_batch_size", "max_delay_ms"}`` when the variant batches; None otherwise.
    batching: dict[str, Any] | None = None
    #: how long the model server lets requests in progress finish after SIGTERM (None: its
    #: default); async endpoints' replicas drain for their invocation timeout
    drain_grace_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReplicaProcess:
    """A started replica as the executor knows it. ``started_at`` guards against pid reuse."""

    pid: int
    started_at: float
    address: str


class Executor(Protocol):
    def start(self, launch: ReplicaLaunch) -> ReplicaProcess:
        """Start a replica; return at once (readiness is observed with :meth:`ready`)."""
        ...

    def exit_code(self, proc: ReplicaProcess) -> int | None:
        """None while the replica runs; its exit status once it ended (-1 when unknown)."""
        ...

    def ready(self, proc: ReplicaProcess, timeout_s: float) -> bool:
        """Whether the replica answers ``GET /ping`` with 200."""
        ...

    def memory_mb(self, proc: ReplicaProcess) -> float | None:
        """Resident memory of the replica (with its child processes), None when unknown."""
        ...

    def signal(self, proc: ReplicaProcess, how: Literal["term", "kill"]) -> None:
        """Ask the replica to stop (drain and exit) or kill it; never raises for a gone process."""
        ...

    def set_standby(self, enabled: bool) -> None:
        """Keep (or stop keeping) a spare, model-less replica process warm, for fast cold
        starts; executors without one ignore it."""
        ...
