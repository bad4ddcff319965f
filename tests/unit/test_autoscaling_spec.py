"""The autoscaling spec: what a user may write, and errors that name the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.errors import SpecError
from modelyard.spec import EndpointDocument, load_documents, parse_documents

FIELD = "documents[0].spec.variants[0].autoscaling"


def endpoint(autoscaling: Any, kind: str = "realtime", **variant: Any) -> list[dict[str, Any]]:
    body = {"name": "v", "model": "m", "autoscaling": autoscaling, **variant}
    return [{"kind": "Endpoint", "name": "e", "spec": {"type": kind, "variants": [body]}}]


def error(raws: list[dict[str, Any]]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_documents(raws)
    return info.value


def test_a_full_spec_in_yaml() -> None:
    (doc,) = load_documents(
        """
kind: Endpoint
name: churn
spec:
  variants:
    - name: primary
      model: churn-v2
      instance_count: 2
      autoscaling:
        min: 1
        max: 8
        policies:
          - target_tracking: {metric: invocations_per_instance, target: 1000}
          - step:
              alarm: churn-latency
              adjustment_type: percent_change_in_capacity
              adjustments:
                - {lower: 0, upper: 100, change: 50}
                - {lower: 100, change: 100}
        scheduled:
          - {cron: "0 8 * * 1-5", timezone: Europe/Paris, min: 4}
          - {cron: "0 20 * * 1-5", timezone: Europe/Paris, min: 1}
        scale_in_cooldown_s: 600
        scale_out_cooldown_s: 30
"""
    )
    assert isinstance(doc, EndpointDocument)
    auto = doc.spec.variants[0].autoscaling
    assert auto is not None
    assert (auto.min, auto.max, len(auto.policies), len(auto.scheduled)) == (1, 8, 2, 2)
    assert auto.disable_scale_in is False
    assert auto.initial_capacity(doc.spec.variants[0].instance_count) == 2


def test_defaults_and_initial_capacity_clamped() -> None:
    (doc,) = parse_documents(endpoint({"max": 3}, instance_count=5))
    assert isinstance(doc, EndpointDocument)
    auto = doc.spec.variants[0].autoscaling
    assert auto is not None
    assert (auto.min, auto.scale_in_cooldown_s, auto.scale_out_cooldown_s) == (1, 300, 60)
    assert auto.policies == [] and auto.scheduled == []
    assert auto.initial_capacity(5) == 3
    assert auto.initial_capacity(1) == 1


def test_without_autoscaling_the_variant_is_as_before() -> None:
    (doc,) = parse_documents(endpoint(None))
    assert isinstance(doc, EndpointDocument)
    assert doc.spec.variants[0].autoscaling is None


def test_async_endpoints_may_scale_to_zero_on_their_backlog() -> None:
    policy = {"target_tracking": {"metric": "async_backlog_per_instance", "target": 5}}
    (doc,) = parse_documents(endpoint({"min": 0, "max": 4, "policies": [policy]}, "async"))
    assert isinstance(doc, EndpointDocument)


def tt(metric: str, target: float = 1) -> dict[str, Any]:
    """Autoscaling with one target-tracking policy."""
    return {"max": 3, "policies": [{"target_tracking": {"metric": metric, "target": target}}]}


def steps(*adjustments: dict[str, Any], kind: str = "change_in_capacity") -> dict[str, Any]:
    """Autoscaling with one step policy."""
    step = {"alarm": "a", "adjustment_type": kind, "adjustments": list(adjustments)}
    return {"max": 3, "policies": [{"step": step}]}


def scheduled(**action: Any) -> dict[str, Any]:
    """Autoscaling with one scheduled action."""
    return {"max": 3, "scheduled": [{"cron": "0 8 * * *", **action}]}


@pytest.mark.parametrize(
    ("autoscaling", "kind", "field", "words"),
    [
        ({"min": 0, "max": 3}, "realtime", "min", "at least 1 (0 only for async"),
        ({"min": 3, "max": 2}, "realtime", "max", "at least min (3)"),
        ({"max": 65}, "realtime", "max", "less than or equal to 64"),
        ({"min": 1}, "realtime", "max", "Field required"),
        ({"max": 3}, "serverless", "", "serverless endpoint scales by itself"),
        ({"max": 3, "scale_in_cooldown_s": -1}, "realtime", "scale_in_cooldown_s", "greater"),
        ({"max": 3, "policies": [{}]}, "realtime", "policies[0]", "exactly one of"),
        (tt("rps"), "realtime", "policies[0].target_tracking.metric", "must be one of"),
        (tt("cpu_utilization", 0), "realtime", "policies[0].target_tracking.target", "than 0"),
        (
            tt("async_backlog_per_instance"),
            "realtime",
            "policies[0].target_tracking.metric",
            "for async endpoints",
        ),
        (
            steps({"lower": 5, "upper": 1, "change": 1}),
            "realtime",
            "policies[0].step.adjustments[0].upper",
            "must be above lower (5)",
        ),
        (
            steps({"lower": 0, "change": 1}, {"lower": 3, "upper": 9, "change": 2}),
            "realtime",
            "policies[0].step.adjustments[1].lower",
            "overlap",
        ),
        (
            steps({"change": 65}, kind="exact_capacity"),
            "realtime",
            "policies[0].step.adjustments[0].change",
            "0 to 64",
        ),
        (steps(), "realtime", "policies[0].step.adjustments", "at least 1 item"),
        (scheduled(cron="0 8 * * 1-5 2024", min=2), "realtime", "scheduled[0].cron", "five-field"),
        (scheduled(cron="61 8 * * *", min=2), "realtime", "scheduled[0].cron", "five-field"),
        (
            scheduled(timezone="Europe/Nowhere", min=2),
            "realtime",
            "scheduled[0].timezone",
            "IANA time zone",
        ),
        (scheduled(), "realtime", "scheduled[0]", "sets min, max"),
        (scheduled(min=4), "realtime", "scheduled[0].min", "min (4) above max (3)"),
        (scheduled(min=3, max=2), "realtime", "scheduled[0].max", "at least min (3)"),
        (scheduled(min=0), "realtime", "scheduled[0].min", "0 only for async"),
    ],
)
def test_bad_autoscaling_is_refused_naming_the_field(
    autoscaling: dict[str, Any], kind: str, field: str, words: str
) -> None:
    err = error(endpoint(autoscaling, kind))
    assert err.field == (f"{FIELD}.{field}" if field else FIELD)
    assert words in err.rule
