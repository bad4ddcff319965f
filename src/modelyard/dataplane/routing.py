"""The gateway's routing table and choices: weighted variant, least-outstanding replica."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.dataplane.shadow import ShadowRoute


@dataclass(slots=True)
class Upstream:
    """One ready replica; ``outstanding`` counts requests sent and not yet answered."""

    address: str
    outstanding: int = 0


@dataclass(slots=True)
class VariantRoute:
    name: str
    weight: float
    replicas: list[Upstream]
    #: Whether the replicas are Modelyard model servers, which take bundled invocations.
    bundles: bool = False
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    name_bytes: bytes = b""

    def __post_init__(self) -> None:
        self.name_bytes = self.name.encode()

    def choose(self, exclude: Upstream | None = None) -> Upstream | None:
        """The replica with the fewest outstanding requests; ties rotate so load spreads."""
        reps = self.replicas
        n = len(reps)
        if n == 0:
            return None
        start = next(self._turn) % n
        best: Upstream | None = None
        for i in range(n):
            rep = reps[(start + i) % n]
            if rep is exclude:
                continue
            if best is None or rep.outstanding < best.outstanding:
                best = rep
        return best


@dataclass(slots=True)
class EndpointRoute:
    name: str
    revision: int
    variants: dict[str, VariantRoute]
    #: realtime | serverless | async
    kind: str = "realtime"
    #: serverless: invocations in progress at once (this gateway process's share)
    max_concurrency: int | None = None
    #: async: ``{"input", "output", "failure"}`` storage prefixes
    locations: dict[str, str] | None = None
    #: async: prefixes requests may name in X-Amzn-SageMaker-InputLocation
    input_prefixes: list[str] = field(default_factory=list)
    #: while a deployment shifts traffic: the new revision's variants, and their share of it
    canary: EndpointRoute | None = None
    canary_share: float = 0.0
    #: the variant that gets copies of a share of the requests (dataplane/shadow.py)
    shadow: ShadowRoute | None = None
    _cumulative: list[float] = field(default_factory=list)
    _order: list[VariantRoute] = field(default_factory=list)

    def __post_init__(self) -> None:
        total = 0.0
        for variant in self.variants.values():
            if variant.weight > 0:
                total += variant.weight
                self._cumulative.append(total)
                self._order.append(variant)

    def fleet(self, rand: Callable[[], float] = random.random) -> EndpointRoute:
        """The revision a request goes to: the new one for its share while a deployment shifts
        traffic, else the served one."""
        canary = self.canary
        if canary is not None and rand() < self.canary_share:
            return canary
        return self

    def find_variant(self, name: str, fleet: EndpointRoute) -> VariantRoute | None:
        """The variant named ``name`` (X-Amzn-SageMaker-Target-Variant), in ``fleet`` first."""
        found = fleet.variants.get(name)
        if found is None:
            other = self.canary if fleet is self else self
            found = other.variants.get(name) if other is not None else None
        return found

    def choose_variant(self, rand: Callable[[], float] = random.random) -> VariantRoute | None:
        """A variant picked in proportion to its weight (of the revision :meth:`fleet` picks)."""
        if self.canary is not None:
            fleet = self.fleet(rand)
            if fleet is not self:
                return fleet.choose_variant(rand)
        if not self._order:
            return None
        point = rand() * self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, point)
        return self._order[min(index, len(self._order) - 1)]


def build_routes(
    table: dict[str, Any], previous: dict[str, EndpointRoute], workers: int = 1
) -> dict[str, EndpointRoute]:
    """Build routes from the control plane's table, keeping the outstanding counts of replicas
    that stay (so least-outstanding choice is not reset by every refresh). With several gateway
    processes each enforces its share of a serverless endpoint's concurrency cap."""
    known: dict[str, Upstream] = {
        up.address: up
        for route in previous.values()
        for fleet in (route, route.canary)
        if fleet is not None
        for variant in fleet.variants.values()
        for up in variant.replicas
    }
    routes: dict[str, EndpointRoute] = {}

    def variants_of(entries: list[dict[str, Any]]) -> dict[str, VariantRoute]:
        variants = {}
        for v in entries:
            ups = []
            for addr in v["replicas"]:  # a replica shared by two revisions is one upstream
                up = known.get(addr)
                if up is None:
                    up = known[addr] = Upstream(addr)
                ups.append(up)
            variants[v["name"]] = VariantRoute(
                v["name"], float(v["weight"]), ups, bool(v.get("bundles", False))
            )
        return variants

    for name, entry in table.items():
        variants = variants_of(entry["variants"])
        canary = None
        if entry.get("canary"):
            c = entry["canary"]
            canary = EndpointRoute(name, int(c["revision"]), variants_of(c["variants"]))
        cap = entry.get("max_concurrency")
        routes[name] = EndpointRoute(
            name,
            int(entry["revision"]),
            variants,
            kind=str(entry.get("type", "realtime")),
            max_concurrency=None if cap is None else max(1, -(-int(cap) // max(1, workers))),
            locations=entry.get("async"),
            input_prefixes=list(entry.get("input_locations") or []),
            canary=canary,
            canary_share=float(entry["canary"]["share"]) if canary is not None else 0.0,
            shadow=_shadow(entry.get("shadow"), previous.get(name)),
        )
    return routes


def _shadow(entry: dict[str, Any] | None, previous: EndpointRoute | None) -> ShadowRoute | None:
    """The endpoint's shadow; the same object as before when the variant is the same, so the
    copies in flight stay counted across table refreshes."""
    if not entry:
        return None
    shadow = previous.shadow if previous is not None else None
    if shadow is None or shadow.variant != entry["variant"]:
        shadow = ShadowRoute(str(entry["variant"]), 0.0)
    shadow.percent = float(entry["percent"])
    return shadow
