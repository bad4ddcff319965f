"""The autoscaling decision, rule by rule: votes, the largest wins, bounds, cooldowns,
disable_scale_in, no data."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.controlplane.autoscale.decide import Readings, State, decide, votes
from modelyard.controlplane.autoscale.readings import AlarmReading, MetricReading
from modelyard.spec.autoscaling import AutoscalingSpec

NOW = 10_000.0


def auto(*policies: dict[str, Any], **extra: Any) -> AutoscalingSpec:
    body: dict[str, Any] = {
        "min": 1,
        "max": 10,
        "policies": list(policies),
        "scale_in_cooldown_s": 300,
        "scale_out_cooldown_s": 60,
        **extra,
    }
    return AutoscalingSpec.model_validate(body)


def tracking(
    metric: str = "concurrent_requests_per_replica", target: float = 2.0
) -> dict[str, Any]:
    return {"target_tracking": {"metric": metric, "target": target}}


def step(
    alarm: str = "busy", kind: str = "change_in_capacity", *adjustments: dict[str, Any]
) -> dict[str, Any]:
    steps = list(adjustments) or [{"lower": 0, "change": 1}]
    return {"step": {"alarm": alarm, "adjustment_type": kind, "adjustments": steps}}


def load(value: float, capacity: int = 1) -> MetricReading:
    """A load metric whose total is ``value`` (per instance: value / capacity)."""
    return MetricReading(value / capacity, value)


def state(capacity: int = 2, low: int = 1, high: int = 10, **times: float | None) -> State:
    return State(capacity, low, high, times.get("out"), times.get("any"))


# -- target tracking ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "target", "capacity", "expected"),
    [
        (8.0, 2.0, 2, 4),  # 4 per replica at a target of 2: twice the replicas
        (3.0, 2.0, 2, 2),  # 1.5 per replica: ceil(3 / 2)
        (6.0, 2.0, 2, 3),  # exactly on target per replica wants exactly 3
        (0.0, 2.0, 4, 1),  # no load: down to min
        (6.000000001, 2.0, 2, 3),  # float noise does not add a replica
    ],
)
def test_target_tracking_wants_ceil_of_load_over_target(
    total: float, target: float, capacity: int, expected: int
) -> None:
    spec = auto(tracking(target=target), scale_in_cooldown_s=0)
    readings = Readings({"concurrent_requests_per_replica": load(total, capacity)})
    assert decide(spec, state(capacity), readings, NOW).capacity == expected


def test_latency_tracking_scales_the_current_capacity() -> None:
    spec = auto(tracking("p90_latency_ms", target=100.0))
    readings = Readings({"p90_latency_ms": MetricReading(250.0, None)})
    decision = decide(spec, state(2), readings, NOW)
    assert decision.capacity == 5  # ceil(2 × 250 / 100)
    assert "target_tracking p90_latency_ms: 250 (target 100) wants 5" in decision.cause


def test_the_cause_names_the_policy_the_value_and_the_target() -> None:
    spec = auto(tracking(target=1.0))
    readings = Readings({"concurrent_requests_per_replica": load(3.0, 1)})
    decision = decide(spec, state(1), readings, NOW)
    assert decision.cause == (
        "target_tracking concurrent_requests_per_replica: 3 per instance (target 1) wants 3"
    )
    assert decision.details(state(1))["votes"] == [
        {
            "policy": "target_tracking concurrent_requests_per_replica",
            "desired": 3,
            "detail": "3 per instance (target 1)",
        }
    ]


# -- step scaling ------------------------------------------------------------------------------

STEPS = (
    {"upper": 0, "change": -1},
    {"lower": 0, "upper": 10, "change": 1},
    {"lower": 10, "change": 3},
)


@pytest.mark.parametrize(
    ("breach", "expected"),
    [(-5.0, 3), (0.0, 5), (9.99, 5), (10.0, 7), (None, 5)],  # None: no data counts as 0
)
def test_step_picks_the_step_holding_the_breach(breach: float | None, expected: int) -> None:
    spec = auto(step("busy", "change_in_capacity", *STEPS), scale_in_cooldown_s=0)
    readings = Readings(alarms={"busy": AlarmReading("ALARM", breach)})
    assert decide(spec, state(4), readings, NOW).capacity == expected


@pytest.mark.parametrize(
    ("kind", "change", "capacity", "expected"),
    [
        ("change_in_capacity", 2, 3, 5),
        ("exact_capacity", 6, 3, 6),
        ("percent_change_in_capacity", 50, 4, 6),
        ("percent_change_in_capacity", 50, 3, 4),  # 1.5 truncates to 1
        ("percent_change_in_capacity", 10, 3, 4),  # 0.3 is still one replica
        ("percent_change_in_capacity", -10, 3, 2),
        ("percent_change_in_capacity", -50, 5, 3),  # -2.5 truncates toward zero: -2
    ],
)
def test_step_adjustment_types(kind: str, change: int, capacity: int, expected: int) -> None:
    spec = auto(step("busy", kind, {"lower": 0, "change": change}), scale_in_cooldown_s=0)
    readings = Readings(alarms={"busy": AlarmReading("ALARM", 1.0)})
    assert decide(spec, state(capacity), readings, NOW).capacity == expected


@pytest.mark.parametrize(
    "alarm", [AlarmReading("OK", 5.0), AlarmReading("INSUFFICIENT_DATA"), None]
)
def test_step_abstains_unless_its_alarm_is_in_alarm(alarm: AlarmReading | None) -> None:
    spec = auto(step())
    readings = Readings(alarms={"busy": alarm} if alarm else {})
    decision = decide(spec, state(2), readings, NOW)
    assert decision.capacity == 2
    assert decision.wanted is None
    assert decision.votes[0].desired is None


def test_step_abstains_when_no_step_holds_the_breach() -> None:
    spec = auto(step("busy", "change_in_capacity", {"lower": 5, "change": 2}))
    vote = votes(spec, 2, Readings(alarms={"busy": AlarmReading("ALARM", 1.0)}))[0]
    assert vote.desired is None and "no step holds it" in vote.detail


# -- the largest wins, bounds ------------------------------------------------------------------


def test_the_largest_vote_wins() -> None:
    spec = auto(tracking(target=2.0), tracking("cpu_utilization", 50.0), step())
    readings = Readings(
        {
            "concurrent_requests_per_replica": load(4.0, 2),  # wants 2
            "cpu_utilization": load(300.0, 2),  # wants 6
        },
        {"busy": AlarmReading("ALARM", 1.0)},  # wants 3
    )
    decision = decide(spec, state(2), readings, NOW)
    assert decision.capacity == 6
    assert decision.wanted == 6
    assert [v.desired for v in decision.votes] == [2, 6, 3]
    assert decision.cause.startswith("target_tracking cpu_utilization")


def test_a_policy_without_data_does_not_vote_and_the_others_decide() -> None:
    spec = auto(tracking(target=2.0), tracking("cpu_utilization", 50.0))
    readings = Readings({"concurrent_requests_per_replica": load(10.0, 2), "cpu_utilization": None})
    decision = decide(spec, state(2), readings, NOW)
    assert decision.capacity == 5
    assert [v.detail for v in decision.votes][1] == "no data"


def test_no_data_at_all_keeps_the_capacity() -> None:
    spec = auto(tracking(), scale_in_cooldown_s=0)
    decision = decide(spec, state(3), Readings({"concurrent_requests_per_replica": None}), NOW)
    assert (decision.capacity, decision.wanted) == (3, None)
    assert decision.cause.startswith("no policy has data")


@pytest.mark.parametrize(
    ("total", "expected", "words"),
    [(100.0, 4, "clamped to max 4"), (0.0, 2, "clamped to min 2")],
)
def test_the_winner_is_clamped_to_min_and_max(total: float, expected: int, words: str) -> None:
    spec = auto(tracking(target=1.0), min=2, max=4, scale_in_cooldown_s=0)
    readings = Readings({"concurrent_requests_per_replica": load(total, 3)})
    decision = decide(spec, state(3, 2, 4), readings, NOW)
    assert decision.capacity == expected
    assert words in decision.cause


@pytest.mark.parametrize(("capacity", "expected"), [(1, 3), (9, 5)])
def test_bounds_apply_even_without_data_and_during_cooldowns(capacity: int, expected: int) -> None:
    """A scheduled action moved the bounds: the capacity follows, whatever else holds."""
    spec = auto(tracking(), disable_scale_in=True)
    cooling = state(capacity, 3, 5, out=NOW - 1, any=NOW - 1)
    decision = decide(spec, cooling, Readings({"concurrent_requests_per_replica": None}), NOW)
    assert decision.capacity == expected


# -- cooldowns and disable_scale_in ------------------------------------------------------------

UP = Readings({"concurrent_requests_per_replica": load(12.0, 2)})  # wants 6
DOWN = Readings({"concurrent_requests_per_replica": load(2.0, 4)})  # wants 1


@pytest.mark.parametrize(
    ("since_out", "expected"),
    [(30.0, 2), (59.9, 2), (60.0, 6), (None, 6)],
)
def test_scale_out_waits_for_the_scale_out_cooldown(since_out: float | None, expected: int) -> None:
    spec = auto(tracking())
    at = None if since_out is None else NOW - since_out
    decision = decide(spec, state(2, out=at, any=at), UP, NOW)
    assert decision.capacity == expected
    if expected == 2:
        assert decision.cause.endswith("waits: scale-out cooldown")


def test_scale_in_cooldown_does_not_hold_a_scale_out() -> None:
    spec = auto(tracking())
    decision = decide(spec, state(2, out=None, any=NOW - 10), UP, NOW)
    assert decision.capacity == 6


@pytest.mark.parametrize(
    ("since_any", "expected"),
    [(10.0, 4), (299.0, 4), (300.0, 1), (None, 1)],
)
def test_scale_in_waits_for_the_scale_in_cooldown_after_any_scaling(
    since_any: float | None, expected: int
) -> None:
    spec = auto(tracking())
    at = None if since_any is None else NOW - since_any
    decision = decide(spec, state(4, out=None, any=at), DOWN, NOW)
    assert decision.capacity == expected
    if expected == 4:
        assert decision.cause.endswith("waits: scale-in cooldown")


def test_scale_out_cooldown_does_not_hold_a_scale_in_once_scale_in_cooled_down() -> None:
    spec = auto(tracking(), scale_in_cooldown_s=5, scale_out_cooldown_s=600)
    decision = decide(spec, state(4, out=NOW - 10, any=NOW - 10), DOWN, NOW)
    assert decision.capacity == 1


def test_disable_scale_in_blocks_decreases_but_not_increases() -> None:
    spec = auto(tracking(), disable_scale_in=True, scale_in_cooldown_s=0)
    held = decide(spec, state(4), DOWN, NOW)
    assert held.capacity == 4 and held.cause.endswith("waits: scale-in disabled")
    assert decide(spec, state(2), UP, NOW).capacity == 6


def test_disable_scale_in_blocks_step_decreases_too() -> None:
    spec = auto(step("busy", "change_in_capacity", {"change": -2}), disable_scale_in=True)
    readings = Readings(alarms={"busy": AlarmReading("ALARM", -3.0)})
    assert decide(spec, state(4), readings, NOW).capacity == 4
