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
