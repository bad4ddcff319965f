"""A variant's autoscaling: bounds, policies, scheduled actions and cooldowns (the schema only).

How the autoscaler reads metrics and decides is :mod:`modelyard.controlplane.autoscale`. Rules
that depend on the endpoint (its type) are checked by :class:`~.resources.EndpointSpec` with
:func:`field_error`, so every error names its field
(``documents[1].spec.variants[0].autoscaling.min``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from modelyard.spec.base import Name, _Spec

MAX_CAPACITY = 64
TargetMetric = Literal[
    "invocations_per_instance",
    "concurrent_requests_per_replica",
    "cpu_utilization",
    "p90_latency_ms",
    "async_backlog_per_instance",
]
AdjustmentType = Literal["change_in_capacity", "exact_capacity", "percent_change_in_capacity"]


def field_error(loc: Sequence[str | int], message: str) -> ValidationError:
    """A validation error at ``loc`` below the field being validated (so a cross-field rule
    checked by an outer model still names the inner field)."""
    error = PydanticCustomError("value_error", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "autoscaling", [InitErrorDetails(type=error, loc=tuple(loc), input=None)]
    )


class TargetTrackingSpec(_Spec):
    """Keep ``metric`` near ``target``: capacity = ceil(capacity × metric / target)."""

    metric: TargetMetric = Field(
        description="invocations_per_instance (per minute), concurrent_requests_per_replica, "
        "cpu_utilization (percent of one core, per replica), p90_latency_ms (the replicas' "
        "model latency), async_backlog_per_instance (async endpoints)"
    )
    target: float = Field(gt=0, allow_inf_nan=False, description="the value to keep it near")


class StepAdjustmentSpec(_Spec):
    """One step: applies when ``lower <= metric - threshold < upper``."""

    lower: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="lower bound of the breach (metric − alarm threshold), inclusive; none: −∞",
    )
    upper: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="upper bound of the breach, exclusive; none: +∞",
    )
    change: int = Field(
        ge=-10000,
        le=10000,
        description="replicas to add (negative: remove), the capacity itself, or a percentage, "
        "by adjustment_type",
    )

    @field_validator("upper")
    @classmethod
    def _above_lower(cls, value: float | None, info: ValidationInfo) -> float | None:
        lower = info.data.get("lower")
        if value is not None and lower is not None and value <= lower:
            raise ValueError(f"must be above lower ({lower:g}), got {value:g}")
        return value


class StepScalingSpec(_Spec):
    """Change capacity by steps while an Alarm is in ALARM (as AWS step scaling)."""

    alarm: Name = Field(description="the Alarm whose ALARM state drives this policy")
    adjustment_type: AdjustmentType = Field(
        default="change_in_capacity",
        description="how change is read: replicas added, the new capacity, or a percentage of "
        "the capacity",
    )
    adjustments: list[StepAdjustmentSpec] = Field(
        min_length=1,
        max_length=20,
        description="steps by how far the alarm's latest value is past its threshold; ranges "
        "may not overlap",
    )

    @field_validator("adjustments")
    @classmethod
    def _steps(
        cls, steps: list[StepAdjustmentSpec], info: ValidationInfo
    ) -> list[StepAdjustmentSpec]:
        if info.data.get("adjustment_type") == "exact_capacity":
            for i, step in enumerate(steps):
                if not 0 <= step.change <= MAX_CAPACITY:
                    raise field_error(
                        (i, "change"),
                        f"with adjustment_type exact_capacity, change is the capacity: 0 to "
                        f"{MAX_CAPACITY} (got {step.change})",
                    )
        inf = float("inf")
        spans = sorted(
            (s.lower if s.lower is not None else -inf, s.upper if s.upper is not None else inf, i)
            for i, s in enumerate(steps)
        )
        for (_, end, _), (start, _, i) in itertools.pairwise(spans):
            if start < end:
                raise field_error((i, "lower"), "step ranges overlap (each is [lower, upper))")
        return steps


class PolicySpec(_Spec):
    """One policy: exactly one of ``target_tracking`` or ``step``."""

    target_tracking: TargetTrackingSpec | None = Field(
        default=None, description="follow a metric toward a target"
    )
    step: StepScalingSpec | None = Field(
        default=None, description="steps while an alarm is in ALARM"
    )

    @model_validator(mode="after")
    def _one(self) -> PolicySpec:
        if (self.target_tracking is None) == (self.step is None):
            raise ValueError("a policy is exactly one of target_tracking or step")
        return self


class ScheduledActionSpec(_Spec):
    """At each time ``cron`` matches (in ``timezone``), set min and/or max."""

    cron: str = Field(
        description="five fields: minute hour day-of-month month day-of-week ('0 8 * * 1-5')"
    )
    timezone: str = Field(
        default="UTC", description="IANA time zone the cron is read in ('Europe/Paris')"
    )
    min: int | None = Field(
        default=None, ge=0, le=MAX_CAPACITY, description="the new min (none: autoscaling.min)"
    )
    max: int | None = Field(
        default=None, ge=1, le=MAX_CAPACITY, description="the new max (none: autoscaling.max)"
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter  # only when a schedule is given

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a five-field cron expression (minute hour day-of-month "
                "month day-of-week)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (say, Europe/Paris)") from exc
        return value

    @field_validator("max")
    @classmethod
    def _max(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min")
        if value is not None and low is not None and value < low:
            raise ValueError(f"must be at least min ({low}), got {value}")
        return value

    @model_validator(mode="after")
    def _something(self) -> ScheduledActionSpec:
        if self.min is None and self.max is None:
            raise ValueError("a scheduled action sets min, max or both")
        return self


class AutoscalingSpec(_Spec):
    """Replicas between ``min`` and ``max``, moved by policies; ``instance_count`` is the initial
    capacity (clamped to min..max)."""

    min: int = Field(
        default=1,
        ge=0,
        le=MAX_CAPACITY,
        description="fewest replicas (0 only for async endpoints)",
    )
    max: int = Field(ge=1, le=MAX_CAPACITY, description="most replicas")
    policies: list[PolicySpec] = Field(
        default_factory=list,
        max_length=10,
        description="each proposes a capacity; the largest wins",
    )
    scheduled: list[ScheduledActionSpec] = Field(
        default_factory=list,
        max_length=20,
        description="change min and max at times of day; the most recent one that fired applies",
    )
    scale_in_cooldown_s: int = Field(
        default=300, ge=0, le=86400, description="no scale-in this long after any scaling"
    )
    scale_out_cooldown_s: int = Field(
        default=60, ge=0, le=86400, description="no further scale-out this long after a scale-out"
    )
    disable_scale_in: bool = Field(
        default=False, description="policies never remove replicas (min and max still apply)"
    )

    @field_validator("max")
    @classmethod
    def _max(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min")
        if low is not None and value < low:
            raise ValueError(f"must be at least min ({low}), got {value}")
        return value

    @field_validator("scheduled")
    @classmethod
    def _bounds(
        cls, actions: list[ScheduledActionSpec], info: ValidationInfo
    ) -> list[ScheduledActionSpec]:
        low, high = info.data.get("min"), info.data.get("max")
        if low is None or high is None:
            return actions
        for i, action in enumerate(actions):
            new_low = low if action.min is None else action.min
            new_high = high if action.max is None else action.max
            if new_low > new_high:
                field = "min" if action.min is not None else "max"
                raise field_error(
                    (i, field),
                    f"would make min ({new_low}) above max ({new_high}); set both",
                )
        return actions

    def problem_for(self, kind: str) -> tuple[tuple[str | int, ...], str] | None:
        """The first rule that depends on the endpoint type this breaks: (where below
        ``autoscaling``, the rule in words); None when there is none."""
        if kind == "serverless":
            return (), (
                "a serverless endpoint scales by itself (serverless.max_concurrency, "
                "provisioned_concurrency): remove autoscaling"
            )
        if kind != "async":
            if self.min < 1:
                return ("min",), "must be at least 1 (0 only for async endpoints)"
            zero = next((i for i, a in enumerate(self.scheduled) if a.min == 0), None)
            if zero is not None:
                return ("scheduled", zero, "min"), "must be at least 1 (0 only for async endpoints)"
        for i, policy in enumerate(self.policies):
            tracking = policy.target_tracking
            if tracking and tracking.metric == "async_backlog_per_instance" and kind != "async":
                where = ("policies", i, "target_tracking", "metric")
                return where, "async_backlog_per_instance is for async endpoints"
        return None

    def initial_capacity(self, instance_count: int) -> int:
        return max(self.min, min(self.max, instance_count))
