"""An endpoint's deployment policy and shadow variant (the schema only).

How a rollout runs is :mod:`modelyard.controlplane.reconcile.rollout`. The ranges are
SageMaker's deployment guardrails': a canary takes at most half the capacity, a linear step 10 to
50 %, a rolling batch 5 to 50 %; baking waits up to an hour, a whole deployment 10 minutes to 8
hours.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from modelyard.spec.autoscaling import field_error
from modelyard.spec.base import Name, _Spec


class SizeSpec(_Spec):
    """A share of the new fleet's capacity: a number of replicas or a percentage."""

    type: Literal["instance_count", "capacity_percent"] = Field(
        description="instance_count: replicas; capacity_percent: percent of the fleet"
    )
    value: int = Field(ge=1, le=100, description="replicas, or percent (1-100)")

    def fraction(self, capacity: int) -> float:
        """The share of traffic (or of replicas) this size is, of a fleet of ``capacity``."""
        if self.type == "capacity_percent":
            return self.value / 100.0
        return min(1.0, self.value / max(1, capacity))


def _check(size: SizeSpec, low: int, high: int, field: str) -> None:
    """A percentage within [low, high], or an error naming ``field``."""
    if size.type == "capacity_percent" and not low <= size.value <= high:
        raise field_error(
            (field, "value"), f"a capacity_percent {field} must be {low}..{high}, got {size.value}"
        )


class TrafficSpec(_Spec):
    """How traffic moves from the old fleet (blue) to the new one (green)."""

    type: Literal["all_at_once", "canary", "linear"] = Field(
        default="all_at_once",
        description="all_at_once: one step of 100 %; canary: canary_size, then the rest; "
        "linear: steps of linear_step_size",
    )
    wait_s: int = Field(
        default=0, ge=0, le=3600, description="baking time after each step, watching the alarms"
    )
    canary_size: SizeSpec | None = Field(
        default=None, description="type canary: the first step (at most 50 % of capacity)"
    )
    linear_step_size: SizeSpec | None = Field(
        default=None, description="type linear: each step (10..50 % of capacity)"
    )

    @model_validator(mode="after")
    def _sizes(self) -> TrafficSpec:
        if self.type == "canary":
            if self.canary_size is None:
                raise ValueError("canary traffic needs canary_size")
            _check(self.canary_size, 1, 50, "canary_size")
        elif self.canary_size is not None:
            raise ValueError("canary_size is only for type: canary")
        if self.type == "linear":
            if self.linear_step_size is None:
                raise ValueError("linear traffic needs linear_step_size")
            _check(self.linear_step_size, 10, 50, "linear_step_size")
        elif self.linear_step_size is not None:
            raise ValueError("linear_step_size is only for type: linear")
        return self

    def steps(self, capacity: int) -> list[float]:
        """The green fleet's share of traffic after each step (the last is 1.0), for a green
        fleet of ``capacity`` replicas."""
        if self.type == "canary":
            assert self.canary_size is not None
            first = self.canary_size.fraction(capacity)
            return [min(first, 0.5), 1.0]
        if self.type == "linear":
            assert self.linear_step_size is not None
            step = min(self.linear_step_size.fraction(capacity), 0.5)
            count = math.ceil(1.0 / step - 1e-9)
            return [min(1.0, round(step * (i + 1), 6)) for i in range(count)]
        return [1.0]


class BlueGreenSpec(_Spec):
    """Start the whole new fleet, shift traffic to it in steps, keep the old one a while."""

    traffic: TrafficSpec = Field(default_factory=TrafficSpec, description="how traffic shifts")
    termination_wait_s: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="seconds the old fleet is kept after all traffic has moved, then drained",
    )
    max_execution_s: int = Field(
        default=3600,
        ge=600,
        le=28800,
        description="the deployment rolls back if it has not finished in this time",
    )


class RollingSpec(_Spec):
    """Replace the fleet in batches, baking each; roll back in batches too."""

    max_batch: SizeSpec = Field(
        description="replicas replaced at once (capacity_percent 5..50, or an instance_count)"
    )
    wait_s: int = Field(default=0, ge=0, le=3600, description="baking time after each batch")
    max_execution_s: int = Field(
        default=3600,
        ge=600,
        le=28800,
        description="the deployment rolls back if it has not finished in this time",
    )
    rollback_max_batch: SizeSpec | None = Field(
        default=None,
        description="replicas restored at once when rolling back (none: all at once)",
    )

    @model_validator(mode="after")
    def _batch(self) -> RollingSpec:
        _check(self.max_batch, 5, 50, "max_batch")
        return self


class AutoRollbackSpec(_Spec):
    alarms: list[Name] = Field(
        min_length=1,
        max_length=10,
        description="Alarms watched during the deployment; any in ALARM rolls it back",
    )

    @field_validator("alarms")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("alarm names must be unique")
        return values


class DeploymentSpec(_Spec):
    """How a change that replaces replicas rolls out (absent: blue/green, all at once)."""

    blue_green: BlueGreenSpec | None = Field(
        default=None, description="a new fleet beside the old one, traffic shifted in steps"
    )
    rolling: RollingSpec | None = Field(
        default=None,
        description="replace the fleet in batches (one batch of extra capacity at a time)",
    )
    auto_rollback: AutoRollbackSpec | None = Field(
        default=None, description="roll back when any of these alarms is in ALARM"
    )

    @model_validator(mode="after")
    def _one(self) -> DeploymentSpec:
        if self.blue_green is not None and self.rolling is not None:
            raise ValueError("choose blue_green or rolling, not both")
        return self


class ShadowSpec(_Spec):
    """A variant that gets a copy of some requests; its answers are measured and dropped."""

    variant: Name = Field(
        description="one of the endpoint's variants; it takes no production traffic"
    )
    sampling_percent: float = Field(
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="share of production requests copied to the shadow (0-100]",
    )
