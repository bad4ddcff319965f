"""What routers need from the running control plane, held on ``app.state``."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from modelyard.controlplane.store.repo import Store
from modelyard.errors import AuthError
from modelyard.metrics.recorder import Recorder


class SyncLedger:
    """The count batches each gateway worker sent that were applied, so that a batch sent again
    (its answer lost: a timeout, a failed reply) is applied once. Kept in memory: a control
    plane that restarts may apply the batch it applied just before once more."""

    KEEP = 20_000  # numbers below a worker's newest minus this are forgotten

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._applied: dict[int, set[int]] = {}

    def claim(self, worker: int, seq: int) -> bool:
        """Whether this batch is new (it is then counted as applied; :meth:`release` if not)."""
        with self._lock:
            seen = self._applied.setdefault(worker, set())
            if seq in seen:
                return False
            seen.add(seq)
            if len(seen) > 2 * self.KEEP:
                floor = max(seen) - self.KEEP
                self._applied[worker] = {n for n in seen if n > floor}
            return True

    def release(self, worker: int, seq: int) -> None:
        with self._lock:
            self._applied.get(worker, set()).discard(seq)


@dataclass
class Context:
    store: Store
    token: str
    logs_dir: Path
    gateway_url: str
    wake: threading.Event = field(default_factory=threading.Event)
    #: wakes the transform-jobs controller (a job was created or asked to stop)
    wake_transforms: threading.Event = field(default_factory=threading.Event)
    #: wakes the alarm evaluator (an alarm was applied: evaluate it now)
    wake_alarms: threading.Event = field(default_factory=threading.Event)
    #: the gateways' count batches already applied
    ledger: SyncLedger = field(default_factory=SyncLedger)
    #: where the gateways' reports go as metric points (None: not kept)
    recorder: Recorder | None = None
    clock: Callable[[], float] = time.time
    #: when a gateway last began reading the routing table (None: no gateway has, since start-up)
    routes_read_at: float | None = None
    #: the server's state directory (default async locations live under it)
    state_dir: Path = Path(".modelyard")
    #: where the gateway leaves accepted async requests
    inbox_dir: Path = Path(".modelyard/run/async-inbox")


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), ctx.token):
        raise AuthError(
            "missing or wrong bearer token; the CLI and SDK read it from the server's state "
            "directory (.modelyard/token), or set MODELYARD_TOKEN"
        )
    return ctx
