"""Calls that ride out a control-plane restart: the waits of the SDK (a transform job, a
rollout) go on while the supervisor restarts the control plane, since the work goes on too."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from modelyard.errors import PlatformError

T = TypeVar("T")

#: how long a wait goes on with the control plane unreachable
UNREACHABLE_GRACE_S = 60.0


class Patient:
    """Retries a call while the control plane cannot be reached, for up to ``grace_s`` in a row;
    any other error, or a longer outage, is raised."""

    def __init__(self, grace_s: float = UNREACHABLE_GRACE_S) -> None:
        self.grace_s = grace_s
        self._since: float | None = None

    def call(self, fetch: Callable[[], T]) -> T:
        while True:
            try:
                value = fetch()
            except PlatformError as exc:
                now = time.monotonic()
                self._since = self._since or now
                if not isinstance(exc.__cause__, httpx.TransportError) or (
                    now - self._since > self.grace_s
                ):
                    raise
                time.sleep(0.5)  # polling the control plane while it restarts
                continue
            self._since = None
            return value
