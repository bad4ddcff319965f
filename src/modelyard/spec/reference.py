"""docs/SPEC.md is generated from the spec models, so the reference cannot drift from the code.

Regenerate with ``python -m modelyard.spec.reference > docs/SPEC.md``; a unit test fails when the
committed file is stale.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from modelyard.spec.alarms import AlarmActionsSpec, AlarmDimensionsSpec, AlarmSpec
from modelyard.spec.autoscaling import (
    AutoscalingSpec,
    PolicySpec,
    ScheduledActionSpec,
    StepAdjustmentSpec,
    StepScalingSpec,
    TargetTrackingSpec,
)
from modelyard.spec.deployment import (
    AutoRollbackSpec,
    BlueGreenSpec,
    DeploymentSpec,
    RollingSpec,
    ShadowSpec,
    SizeSpec,
    TrafficSpec,
)
from modelyard.spec.resources import (
    AsyncSpec,
    BatchingSpec,
    ContainerSpec,
    DataProcessingSpec,
    EndpointSpec,
    ModelClientSpec,
    ModelSpec,
    NotificationsSpec,
    ResourcesSpec,
    ServerlessSpec,
    TransformInputSpec,
    TransformJobSpec,
    TransformOutputSpec,
    VariantSpec,
)

HEADER = """# Resource reference

Generated from `src/modelyard/spec/` by `python -m modelyard.spec.reference`; do not edit by hand.

A spec file holds one or more YAML documents separated by `---`, each with `kind`, `name` and
`spec`. Names are 1–63 letters, digits and hyphens. Unknown fields are errors, reported with their
path (for example `documents[1].spec.variants[0].instance_count`). Relative artifact paths are
relative to the file that names them, and so are a TransformJob's `input.uri` and
`output.uri`.
"""

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Model `spec`", ModelSpec, "kind: Model"),
    ("`container` (runtime `container`)", ContainerSpec, ""),
    ("Endpoint `spec`", EndpointSpec, "kind: Endpoint"),
    ("Variant (`spec.variants[]`)", VariantSpec, ""),
    ("`resources`", ResourcesSpec, ""),
    ("`batching`", BatchingSpec, ""),
    ("`autoscaling`", AutoscalingSpec, ""),
    ("`autoscaling.policies[]`", PolicySpec, ""),
    ("`target_tracking`", TargetTrackingSpec, ""),
    ("`step`", StepScalingSpec, ""),
    ("`step.adjustments[]`", StepAdjustmentSpec, ""),
    ("`autoscaling.scheduled[]`", ScheduledActionSpec, ""),
    ("`serverless` (type `serverless`)", ServerlessSpec, ""),
    ("`async` (type `async`)", AsyncSpec, ""),
    ("`async.notifications`", NotificationsSpec, ""),
    ("`deployment`", DeploymentSpec, ""),
    ("`deployment.blue_green`", BlueGreenSpec, ""),
    ("`blue_green.traffic`", TrafficSpec, ""),
    ("Sizes (`canary_size`, `linear_step_size`, `max_batch`, `rollback_max_batch`)", SizeSpec, ""),
    ("`deployment.rolling`", RollingSpec, ""),
    ("`deployment.auto_rollback`", AutoRollbackSpec, ""),
    ("`shadow`", ShadowSpec, ""),
    ("TransformJob `spec`", TransformJobSpec, "kind: TransformJob"),
    ("`input`", TransformInputSpec, ""),
    ("`output`", TransformOutputSpec, ""),
    ("`data_processing`", DataProcessingSpec, ""),
    ("`model_client`", ModelClientSpec, ""),
    ("Alarm `spec`", AlarmSpec, "kind: Alarm"),
    ("`dimensions`", AlarmDimensionsSpec, ""),
    ("`actions`", AlarmActionsSpec, ""),
]


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        ref: str = prop["$ref"]
        return ref.rsplit("/", 1)[-1].removesuffix("Spec").lower()
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object":
        return "mapping"
    return str(kind)


def _rules(prop: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
    ):
        if key in prop:
            parts.append(f"{label} {prop[key]}")
    for sub in prop.get("anyOf", []):
        extra = _rules(sub)
        if extra:
            parts.append(extra)
    return ", ".join(parts)


def render() -> str:
    lines = [HEADER]
    for title, model, _ in SECTIONS:
        schema = model.model_json_schema()
        required = set(schema.get("required", []))
        lines += [
            f"## {title}",
            "",
            "| field | type | default | rules | description |",
            "|---|---|---|---|---|",
        ]
        for name, prop in schema["properties"].items():
            default = "required" if name in required else f"`{prop.get('default')!r}`"
            if "default" not in prop and name not in required:
                default = "—"
            description = prop.get("description", "")
            lines.append(
                f"| `{name}` | {_type(prop)} | {default} | {_rules(prop)} | {description} |"
            )
        lines.append("")
    lines += [
        "## Cross-field rules",
        "",
        "- `runtime: sklearn | onnx | python` need `artifact`; `python` needs",
        "  `predictor: module:Class` (importable from the artifact directory); `container` needs",
        "  `container.command`.",
        "- `method` is for `sklearn` only; `predictor` for `python` only; `container` for",
        "  `container` only.",
        "- Variant names are unique within an endpoint; at least one variant has a weight above 0.",
        "- Every variant's `model` names a Model that exists (or is applied in the same file).",
        "- `serverless` goes with `type: serverless` only, `async` with `type: async` only (each",
        "  gets its defaults when absent); an async endpoint has exactly one variant; a",
        "  serverless endpoint sizes memory with `serverless.memory_mb`, not",
        "  `resources.memory_mb`; `provisioned_concurrency` is at most `max_concurrency`.",
        "- `autoscaling` is not for serverless endpoints (they scale by themselves); its `min`",
        "  (and a scheduled action's) is at least 1 except on async endpoints, `max` at least",
        "  `min` (also with a scheduled action's bounds in force); `async_backlog_per_instance` is",
        "  for async endpoints. A policy is one of `target_tracking` or `step`; a step policy's",
        "  `alarm` names an Alarm that exists (or is applied in the same file); its steps' ranges",
        "  `[lower, upper)` may not overlap, and with `exact_capacity` each `change` is 0-64. A",
        "  scheduled action sets `min`, `max` or both, with a five-field `cron` read in an IANA",
        "  `timezone`.",
        "- `deployment` has `blue_green` or `rolling`, not both. A canary is at most 50 % of",
        "  capacity, a linear step 10-50 %, a rolling `max_batch` 5-50 % (as `capacity_percent`;",
        "  an `instance_count` size is a number of replicas). `canary_size` goes with",
        "  `type: canary` only, `linear_step_size` with `type: linear` only. Serverless and async",
        "  endpoints roll out all at once. `auto_rollback.alarms` name Alarms that exist (or are",
        "  applied in the same file).",
        "- `shadow.variant` is one of the endpoint's variants (realtime endpoints only); it takes",
        "  no production traffic, so another variant needs a weight above 0.",
        "- A TransformJob's `model` names a Model that exists (or is applied in the same file);",
        "  jobs are immutable: the same name with another spec is refused (409).",
        "- `input.content_type: application/json` and `application/x-npy` are one document per",
        "  file (`split_type: none`); `application/x-parquet` is read by rows (`split_type: line`,",
        "  `compression: none`; needs `pip install modelyard[parquet]`).",
        "- `data_processing` filters and `join_source: input` work on records: they need",
        "  `split_type: line` and an `output.accept` of `text/csv`, `application/jsonlines` or",
        "  `application/json` (answers split into one output per record).",
        "- An Alarm's `statistic` fits its `metric`: counters (`invocations`, `errors_4xx`,",
        "  `errors_5xx`, `cold_starts`) have only `sum`; `p50`, `p90`, `p99` are for the",
        "  latency histograms (`latency_ms`, `model_latency_ms`, `overhead_latency_ms`), which",
        "  have no `min`; `batch_size` has `avg`, `sum` and `sample_count`.",
        "  `concurrent_requests`, `async_backlog` and",
        "  `async_oldest_age_s` are per endpoint: no `dimensions.variant`.",
        "  `datapoints_to_alarm` is at most `evaluation_periods`, and",
        "  `period_s × evaluation_periods` at most 86400 (one day). The endpoint need not exist.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
