"""Shadow variants at the gateway: which requests are copied, and whether the shadow agreed.

A copy goes to the shadow after production has answered, from its own task: production's answer
is never held for it, and the shadow's answer is never returned. Copies in flight are bounded per
gateway worker (a slow shadow sheds copies rather than piling them up); shed copies are counted.

Agreement: the two bodies are equal, or both are JSON and equal with numbers compared to a
relative tolerance (a float printed with other digits by another runtime is the same prediction).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

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
