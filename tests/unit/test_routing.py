"""The gateway's choices: weighted variants and least-outstanding replicas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modelyard.dataplane.routing import EndpointRoute, Upstream, VariantRoute, build_routes


def _stepping(steps: int = 100) -> Callable[[], float]:
    """0.00, 0.01, ... 0.99: a deterministic stand-in for random.random."""
    values: Iterator[float] = iter([i / steps for i in range(steps)])
    return lambda: next(values)


def _route(weights: dict[str, float]) -> EndpointRoute:
    variants = {
        name: VariantRoute(name, weight, [Upstream(f"http://{name}:1")])
        for name, weight in weights.items()
    }
    return EndpointRoute("e", 1, variants)


def _picks(route: EndpointRoute, steps: int = 100) -> Counter[str]:
    rand = _stepping(steps)
    picks: Counter[str] = Counter()
    for _ in range(steps):
        variant = route.choose_variant(rand)
        assert variant is not None
        picks[variant.name] += 1
    return picks


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"a": 1.0}, {"a": 100}),
        ({"a": 1.0, "b": 1.0}, {"a": 50, "b": 50}),
        ({"a": 3.0, "b": 1.0}, {"a": 75, "b": 25}),
        ({"a": 0.7, "b": 0.2, "c": 0.1}, {"a": 70, "b": 20, "c": 10}),
        ({"a": 0.0, "b": 2.0, "c": 2.0}, {"b": 50, "c": 50}),
    ],
)
def test_variants_are_chosen_in_proportion_to_weight(
    weights: dict[str, float], expected: dict[str, int]
) -> None:
    picks = _picks(_route(weights))
    for name, count in expected.items():
        assert abs(picks[name] - count) <= 1, picks


def test_weight_zero_is_never_chosen_even_at_the_edges() -> None:
    route = _route({"canary": 0.0, "main": 1.0, "shadow": 0.0})
    for value in (0.0, 0.5, 0.999999, 1.0):
        variant = route.choose_variant(lambda v=value: v)
        assert variant is not None
        assert variant.name == "main"


def test_rand_of_one_does_not_run_past_the_last_variant() -> None:
    route = _route({"a": 1.0, "b": 1.0})
    variant = route.choose_variant(lambda: 1.0)
    assert variant is not None
    assert variant.name == "b"


def test_no_positive_weight_means_no_variant() -> None:
    assert _route({"a": 0.0}).choose_variant(lambda: 0.5) is None
    assert EndpointRoute("e", 1, {}).choose_variant(lambda: 0.5) is None


def test_least_outstanding_chooses_the_idle_replica() -> None:
    busy1, idle, busy2 = Upstream("a", 3), Upstream("b", 0), Upstream("c", 1)
    variant = VariantRoute("v", 1.0, [busy1, idle, busy2])
    for _ in range(6):  # whatever the rotation's starting point
        assert variant.choose() is idle


def test_ties_rotate_across_replicas() -> None:
    reps = [Upstream("a"), Upstream("b"), Upstream("c")]
    variant = VariantRoute("v", 1.0, reps)
    chosen = [variant.choose() for _ in range(6)]
    assert Counter(u.address for u in chosen if u) == {"a": 2, "b": 2, "c": 2}


def test_exclude_skips_the_replica_that_just_failed() -> None:
    first, second = Upstream("a", 0), Upstream("b", 5)
    variant = VariantRoute("v", 1.0, [first, second])
    for _ in range(4):
        assert variant.choose(exclude=first) is second


def test_exclude_of_the_only_replica_gives_none() -> None:
    only = Upstream("a")
    assert VariantRoute("v", 1.0, [only]).choose(exclude=only) is None
    assert VariantRoute("v", 1.0, []).choose() is None


def _table(revision: int, variants: dict[str, tuple[float, list[str]]]) -> dict[str, Any]:
    return {
        "e": {
            "revision": revision,
            "variants": [
                {"name": n, "weight": w, "replicas": reps} for n, (w, reps) in variants.items()
            ],
        }
    }


def test_build_routes_from_the_control_plane_table() -> None:
    routes = build_routes(_table(2, {"a": (3, ["h1", "h2"]), "b": (1, [])}), {})
    route = routes["e"]
    assert route.revision == 2
    assert [u.address for u in route.variants["a"].replicas] == ["h1", "h2"]
    assert route.variants["a"].weight == 3.0
    assert route.variants["b"].replicas == []


def test_build_routes_keeps_outstanding_counts_across_refreshes() -> None:
    first = build_routes(_table(1, {"a": (1, ["h1", "h2"])}), {})
    h1 = first["e"].variants["a"].replicas[0]
    h1.outstanding = 4
    second = build_routes(_table(2, {"a": (1, ["h1", "h3"])}), first)
    reps = {u.address: u for u in second["e"].variants["a"].replicas}
    assert reps["h1"] is h1
    assert reps["h1"].outstanding == 4
    assert reps["h3"].outstanding == 0
    # the busy replica kept its count, so the new one is chosen
    assert second["e"].variants["a"].choose() is reps["h3"]


def test_build_routes_drops_endpoints_no_longer_in_the_table() -> None:
    first = build_routes(_table(1, {"a": (1, ["h1"])}), {})
    assert build_routes({}, first) == {}


def test_each_gateway_worker_enforces_its_share_of_a_serverless_cap() -> None:
    table = {
        "sl": {
            "type": "serverless",
            "max_concurrency": 5,
            "revision": 1,
            "variants": [{"name": "v", "weight": 1, "replicas": []}],
        }
    }
    assert build_routes(table, {}, workers=1)["sl"].max_concurrency == 5
    assert build_routes(table, {}, workers=2)["sl"].max_concurrency == 3  # rounded up
    assert build_routes(table, {}, workers=8)["sl"].max_concurrency == 1  # never 0
    assert build_routes(table, {})["sl"].kind == "serverless"
