"""The Alarm resource: a condition on one metric of one endpoint, watched period by period.

How an alarm is evaluated (periods, M of N, missing data) is :mod:`modelyard.alarms.evaluate`;
this module is only its schema. Cross-field rules are checked on the field they concern, so an
error names it (``documents[0].spec.statistic``), with the rule in words.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, Field, ValidationInfo, field_validator

from modelyard.metrics.series import METRICS, STATISTICS
from modelyard.spec.base import Name, _Spec

STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")
Comparison = Literal["greater_than", "greater_or_equal", "less_than", "less_or_equal"]
COMPARISONS: dict[str, str] = {
    "greater_than": ">",
    "greater_or_equal": ">=",
    "less_than": "<",
    "less_or_equal": "<=",
}
MissingData = Literal["missing", "ignore", "breaching", "not_breaching"]
#: the statistics each kind of metric has: a counter counts events (its sum in the period); a
#: latency histogram keeps no minimum (its buckets give percentiles instead); a distribution
#: (batch_size) keeps only its count and sum: no extremes, no buckets
KIND_STATISTICS: dict[str, tuple[str, ...]] = {
    "counter": ("sum",),
    "gauge": ("avg", "sum", "min", "max", "sample_count"),
    "histogram": ("avg", "sum", "max", "sample_count", "p50", "p90", "p99"),
    "distribution": ("avg", "sum", "sample_count"),
}
#: the latency histograms: the metrics with percentiles
HISTOGRAMS = tuple(name for name, (kind, _) in METRICS.items() if kind == "histogram")
#: metrics measured for the whole endpoint, never per variant
ENDPOINT_METRICS = ("concurrent_requests", "async_backlog", "async_oldest_age_s")
#: the most an alarm looks back (period_s × evaluation_periods): one day, all at full resolution
MAX_WINDOW_S = 86400
#: the shortest 10 s retention a server may have (modelyard server --metrics-retention 1)
MIN_RETENTION_S = 3600


class AlarmDimensionsSpec(_Spec):
    endpoint: Name = Field(
        description="the endpoint watched (it need not exist yet: without data the alarm is "
        "INSUFFICIENT_DATA)"
    )
    variant: Name | None = Field(
        default=None, description="one variant only (default: the series of all variants merged)"
    )


class AlarmActionsSpec(_Spec):
    alarm: list[AnyHttpUrl] = Field(
        default_factory=list, max_length=10, description="webhooks told when it enters ALARM"
    )
    ok: list[AnyHttpUrl] = Field(
        default_factory=list, max_length=10, description="webhooks told when it enters OK"
    )
    insufficient_data: list[AnyHttpUrl] = Field(
        default_factory=list,
        max_length=10,
        description="webhooks told when it enters INSUFFICIENT_DATA",
    )


class AlarmSpec(_Spec):
    """``statistic`` of ``metric`` over each period, compared with ``threshold``; ALARM when at
    least ``datapoints_to_alarm`` of the last ``evaluation_periods`` periods breach."""

    metric: str = Field(description=f"one of {', '.join(METRICS)}")
    dimensions: AlarmDimensionsSpec = Field(
        description="which series: an endpoint, maybe a variant"
    )
    statistic: str = Field(
        description=f"one of {', '.join(STATISTICS)}; counters have only sum, percentiles are "
        f"for the latency histograms ({', '.join(HISTOGRAMS)})"
    )
    period_s: int = Field(
        default=60,
        ge=10,
        le=86400,
        multiple_of=10,
        description="seconds a period, a multiple of 10",
    )
    evaluation_periods: int = Field(
        default=1,
        ge=1,
        le=100,
        description="N: the last N complete periods are evaluated (period_s × N <= 86400)",
    )
    datapoints_to_alarm: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="M: breaching periods (of the N) that put it in ALARM (default: N)",
    )
    comparison: Comparison = Field(description="statistic <comparison> threshold is breaching")
    threshold: float = Field(allow_inf_nan=False, description="the value compared with")
    treat_missing_data: MissingData = Field(
        default="missing",
        description="a period without data: missing (left out), ignore (as missing, but no data "
        "at all keeps the state), breaching, not_breaching",
    )
    actions: AlarmActionsSpec = Field(
        default_factory=AlarmActionsSpec, description="signed webhooks called on entering a state"
    )
    description: str = Field(default="", max_length=1024, description="for people")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"must be one of {', '.join(METRICS)} (got {value!r})")
        return value

    @field_validator("dimensions")
    @classmethod
    def _variant_of_metric(
        cls, value: AlarmDimensionsSpec, info: ValidationInfo
    ) -> AlarmDimensionsSpec:
        metric = info.data.get("metric")
        if value.variant is not None and metric in ENDPOINT_METRICS:
            raise ValueError(
                f"{metric} is measured for the whole endpoint, not per variant: remove "
                "dimensions.variant"
            )
        return value

    @field_validator("statistic")
    @classmethod
    def _statistic_of_metric(cls, value: str, info: ValidationInfo) -> str:
        if value not in STATISTICS:
            raise ValueError(f"must be one of {', '.join(STATISTICS)} (got {value!r})")
        metric = info.data.get("metric")
        if metric not in METRICS:
            return value
        kind = METRICS[metric][0]
        allowed = KIND_STATISTICS[kind]
        if value not in allowed:
            which = (
                f"only statistic is {allowed[0]}"
                if len(allowed) == 1
                else f"statistics are {', '.join(allowed)}"
            )
            why = ""
            if value.startswith("p") and kind != "histogram":
                why = f"; percentiles are for the latency histograms ({', '.join(HISTOGRAMS)})"
            raise ValueError(f"{metric} is a {kind}: its {which} (got {value!r}){why}")
        return value

    @field_validator("evaluation_periods")
    @classmethod
    def _window(cls, value: int, info: ValidationInfo) -> int:
        period = info.data.get("period_s")
        if period is not None and value * period > MAX_WINDOW_S:
            raise ValueError(
                f"evaluation_periods × period_s is how far back the alarm looks: at most "
                f"{MAX_WINDOW_S} s (one day), got {value} × {period} s"
            )
        if period is not None and value * period > MIN_RETENTION_S and period % 60:
            raise ValueError(
                f"a window over {MIN_RETENTION_S} s may reach metrics rolled up to 1-minute "
                f"points (--metrics-retention can be 1 h): period_s must then be a multiple of "
                f"60, got {period}"
            )
        return value

    @field_validator("datapoints_to_alarm")
    @classmethod
    def _at_most_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("evaluation_periods")
        if value is not None and n is not None and value > n:
            raise ValueError(f"must be at most evaluation_periods ({n}), got {value}")
        return value

    @property
    def datapoints_needed(self) -> int:
        """M: breaching periods needed for ALARM."""
        return self.datapoints_to_alarm or self.evaluation_periods

    @property
    def condition(self) -> str:
        """The condition in words: ``p99 latency_ms > 250.0 for 3 of 3 periods of 60 s``."""
        return (
            f"{self.statistic} {self.metric} {COMPARISONS[self.comparison]} {self.threshold} "
            f"for {self.datapoints_needed} of {self.evaluation_periods} periods of "
            f"{self.period_s} s"
        )


class AlarmDocument(_Spec):
    kind: Literal["Alarm"]
    name: Name
    spec: AlarmSpec
