"""The autoscaling decision: pure, table-tested. A variant's capacity and bounds, what its
policies read (readings.py), and the time in; the new capacity and why out.

The rules, exactly:

1. **Votes.** Each policy proposes a capacity, or abstains:

   - *target tracking*: ``ceil(load / target)`` for a load metric, ``ceil(capacity × value /
     target)`` for p90 latency (readings.py); abstains without data;
   - *step*: while its alarm is in ALARM, the step whose ``[lower, upper)`` holds the breach
     (the value of the alarm's latest period with data − its threshold; 0 when none of the
     periods it evaluates has data) changes
     the capacity: ``change_in_capacity`` adds ``change``, ``exact_capacity`` sets it,
     ``percent_change_in_capacity`` adds ``capacity × change / 100`` truncated toward zero but
     at least one replica either way. Abstains when the alarm is not in ALARM (or does not
     exist), or no step holds the breach.

2. **The largest vote wins**; without any vote the capacity stays as it is.
3. **Bounds**: it is clamped to ``min..max`` (the spec's, or the latest scheduled action's).
4. **Cooldowns**, for what the policies asked: an increase waits while a scale-out happened
   less than ``scale_out_cooldown_s`` ago; a decrease waits while any scaling happened less than
   ``scale_in_cooldown_s`` ago, and never happens with ``disable_scale_in``. A capacity outside
   the bounds is brought inside them regardless (bounds always apply).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.controlplane.autoscale.readings import AlarmReading, MetricReading
from modelyard.spec.autoscaling import AutoscalingSpec, PolicySpec, StepScalingSpec

#: absorbs float noise: 3.0000000001 replicas' worth of load wants 3, not 4
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class State:
    """A variant's scaling state: its capacity, the bounds in force, its last scalings."""

    capacity: int
    min: int
    max: int
    last_scale_out_at: float | None = None
    last_scaling_at: float | None = None


@dataclass(frozen=True, slots=True)
class Readings:
    """What the policies read: target-tracking metrics by name (None: no data) and step
    policies' alarms by name."""

    metrics: Mapping[str, MetricReading | None] = field(default_factory=dict)
    alarms: Mapping[str, AlarmReading] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Vote:
    policy: str
    desired: int | None  # None: abstains
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "desired": self.desired, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Decision:
    capacity: int
    #: what moved it (or why it stayed)
    cause: str
    #: the largest vote (None: no policy voted)
    wanted: int | None
    votes: tuple[Vote, ...]

    def details(self, state: State) -> dict[str, Any]:
        """What an activity records of the decision."""
        return {
            "wanted": self.wanted,
            "min": state.min,
            "max": state.max,
            "votes": [v.to_json() for v in self.votes],
        }


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - _EPSILON))


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _tracking_vote(policy: PolicySpec, capacity: int, readings: Readings) -> Vote:
    tracking = policy.target_tracking
    assert tracking is not None
    name = f"target_tracking {tracking.metric}"
    reading = readings.metrics.get(tracking.metric)
    if reading is None:
        return Vote(name, None, "no data")
    if reading.load is not None:
        desired = _ceil(reading.load / tracking.target)
    else:
        desired = _ceil(capacity * reading.value / tracking.target)
    per = " per instance" if reading.load is not None else ""
    detail = f"{_number(reading.value)}{per} (target {_number(tracking.target)})"
    return Vote(name, desired, detail)


def _adjusted(step: StepScalingSpec, change: int, capacity: int) -> int:
    if step.adjustment_type == "exact_capacity":
        return change
    if step.adjustment_type == "change_in_capacity":
        return max(0, capacity + change)
    delta = capacity * change / 100.0
    moved = int(delta) if abs(delta) >= 1 else (1 if delta > 0 else -1 if delta < 0 else 0)
    return max(0, capacity + moved)


def _step_vote(policy: PolicySpec, capacity: int, readings: Readings) -> Vote:
    step = policy.step
    assert step is not None
    name = f"step alarm {step.alarm}"
    alarm = readings.alarms.get(step.alarm, AlarmReading(""))
    if alarm.state != "ALARM":
        return Vote(name, None, f"alarm {alarm.state or 'not found'}")
    breach = 0.0 if alarm.breach is None else alarm.breach
    where = (
        "in ALARM without data (taken as at its threshold)"
        if alarm.breach is None
        else f"in ALARM, {_number(breach)} past its threshold"
    )
    for adjustment in step.adjustments:
        low = -math.inf if adjustment.lower is None else adjustment.lower
        high = math.inf if adjustment.upper is None else adjustment.upper
        if low <= breach < high:
            change = adjustment.change
            how = str(change) if step.adjustment_type == "exact_capacity" else f"{change:+d}"
            detail = f"{where}: {step.adjustment_type} {how}"
            return Vote(name, _adjusted(step, change, capacity), detail)
    return Vote(name, None, f"{where}: no step holds it")


def votes(spec: AutoscalingSpec, capacity: int, readings: Readings) -> list[Vote]:
    """Each policy's vote (rule 1)."""
    return [
        _tracking_vote(p, capacity, readings)
        if p.target_tracking is not None
        else _step_vote(p, capacity, readings)
        for p in spec.policies
    ]


def _cooling(at: float | None, cooldown_s: float, now: float) -> bool:
    return at is not None and now - at < cooldown_s


def _cause(winner: Vote | None, target: int, state: State) -> str:
    if winner is None:
        return f"no policy has data; bounds {state.min}..{state.max}"
    text = f"{winner.policy}: {winner.detail} wants {winner.desired}"
    if winner.desired is not None and target != winner.desired:
        text += f", clamped to {'max' if target < winner.desired else 'min'} {target}"
    return text


def decide(spec: AutoscalingSpec, state: State, readings: Readings, now: float) -> Decision:
    """The capacity the variant should have now (rules 1-4)."""
    current = state.capacity
    cast = tuple(votes(spec, current, readings))
    voted = [v for v in cast if v.desired is not None]
    winner = max(voted, key=lambda v: v.desired or 0) if voted else None
    wanted = winner.desired if winner is not None else None
    # Rule 3 for the capacity as it is: what the bounds alone make of it.
    inside = max(state.min, min(state.max, current))
    target = inside if wanted is None else max(state.min, min(state.max, wanted))
    cause = _cause(winner, target, state)
    held = None
    if target > inside and _cooling(state.last_scale_out_at, spec.scale_out_cooldown_s, now):
        held = "scale-out cooldown"
    elif target < inside and spec.disable_scale_in:
        held = "scale-in disabled"
    elif target < inside and _cooling(state.last_scaling_at, spec.scale_in_cooldown_s, now):
        held = "scale-in cooldown"
    if held is not None:
        # The policies' change waits; only the bounds move the capacity.
        cause = f"{cause}; waits: {held}"
        if inside != current:
            cause = f"bounds {state.min}..{state.max} ({cause})"
        return Decision(inside, cause, wanted, cast)
    return Decision(target, cause, wanted, cast)
