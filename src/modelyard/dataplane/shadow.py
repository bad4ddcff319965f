"""Shadow variants at the gateway: which requests are copied, and whether the shadow agreed.

A copy goes to the shadow after production has answered, from its own task: production's answer
is never held for it, and the shadow's answer is never returned. Copies in flight are bounded per
gateway worker (a slow shadow sheds copies rather than piling them up); shed copies are counted.

Agreement: the two bodies are equal, or both are JSON and equal with numbers compared to a
relative tolerance (a float printed with other digits by another runtime is the same prediction).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.dataplane.sagemaker import GatewayError

log = logging.getLogger("modelyard.gateway")

#: copies in flight at once per gateway worker
MAX_IN_FLIGHT = 64
REL_TOL = 1e-6
ABS_TOL = 1e-9


class ShadowRoute:
    """An endpoint's shadow: its variant and the share of requests copied to it."""

    __slots__ = ("in_flight", "percent", "variant")

    def __init__(self, variant: str, percent: float) -> None:
        self.variant = variant
        self.percent = percent
        self.in_flight = 0

    def sampled(self, rand: Callable[[], float] = random.random) -> bool:
        """Whether this request is one of the sampled share."""
        return rand() * 100.0 < self.percent

    def has_room(self) -> bool:
        return self.in_flight < MAX_IN_FLIGHT


def agree(production: bytes, shadow: bytes) -> bool:
    """Whether two answers carry the same prediction."""
    if production == shadow:
        return True
    try:
        a, b = json.loads(production), json.loads(shadow)
    except ValueError:
        return False
    return _same(a, b)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


#: what sends a request to a variant: (answer, model ms) or None when no replica was reached;
#: it raises the gateway's error for an answer that is one
Forward = Callable[[Any, dict[bytes, bytes], bytes], Awaitable[Any]]
#: what counts an answer: (variant, status, started, model ms)
Count = Callable[[str, int, float, float | None], None]


async def copy(
    shadow: ShadowRoute,
    variant: Any,
    forward: Forward,
    count: Count,
    tally: Callable[[str, bool], None],
    headers: dict[bytes, bytes],
    body: bytes,
    production: bytes,
    started: float,
) -> None:
    """Send one copy to the shadow variant and measure it (the gateway runs it as a task after
    production has answered): its status and latencies are counted under the shadow variant, and
    whether its answer agreed with production's (``tally(variant, agreed)``)."""
    try:
        try:
            forwarded = await forward(variant, headers, body)
        except GatewayError as exc:  # the shadow failed (424) or did not answer (504)
            count(variant.name, exc.status, started, exc.model_ms)
            return
        if forwarded is None:
            count(variant.name, 503, started, None)
            return
        answer, model_ms = forwarded
        count(variant.name, answer[0], started, model_ms)
        tally(variant.name, agree(production, answer[2]))
    except Exception:  # a copy never disturbs the gateway
        log.exception("shadow copy to %s failed", variant.name)
    finally:
        shadow.in_flight -= 1
