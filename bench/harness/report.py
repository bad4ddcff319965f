"""The result document (JSON) and the Markdown report rendered from it.

Ratios and targets are computed here from the measurements, never typed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.common import CEILING, HANDWRITTEN, PLATFORM, PLATFORM_NO_BATCHING, Workload
from harness.load import LoadResult

SCHEMA_VERSION = 1
TARGET_LEVEL = 64  # the load at which the throughput targets are set
LATENCY_LEVEL = 1  # the load at which the added-latency target is set


@dataclass(frozen=True, slots=True)
class Measurement:
    load: LoadResult
    peak_rss_mb: float

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.load.requests,
            "duration_s": round(self.load.duration_s, 4),
            "requests_per_s": round(self.load.requests_per_s, 2),
            "p50_ms": round(self.load.p50_ms, 4),
            "p99_ms": round(self.load.p99_ms, 4),
            "errors": self.load.error_count,
            "errors_by_kind": dict(self.load.errors),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def build(
    *,
    machine: dict[str, Any],
    settings: dict[str, Any],
    workloads: list[Workload],
    labels: dict[str, dict[str, str]],
    measurements: dict[str, dict[str, dict[int, Measurement]]],
    raw: dict[str, dict[str, Any]],
    cold_start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole result document. ``measurements[workload][target][clients]``; ``cold_start``:
    the serverless cold-start rounds (``harness/coldstart.py``), None when they did not run."""
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for workload in workloads:
        runs = measurements[workload.id]
        targets: dict[str, Any] = {}
        for target in workload.targets:
            levels: dict[str, Any] = {}
            for level, m in sorted(runs.get(target, {}).items()):
                hand = runs.get(HANDWRITTEN, {}).get(level)
                ceiling = runs.get(CEILING, {}).get(level)
                levels[str(level)] = {
                    **m.as_json(),
                    "vs_handwritten_rps": _ratio(
                        m.load.requests_per_s, hand.load.requests_per_s if hand else None
                    ),
                    "vs_ceiling_rps": _ratio(
                        m.load.requests_per_s, ceiling.load.requests_per_s if ceiling else None
                    ),
                }
            targets[target] = {"label": labels[workload.id][target], "levels": levels}
        results[workload.id] = {
            "name": workload.name,
            "model": workload.model,
            "targets": targets,
        }
        ratios[workload.id] = _workload_ratios(workload, runs, raw.get(workload.id))
    ratios["w1_added_p50_ms"] = _added_latency(measurements, raw)
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "machine": machine,
        "settings": settings,
        "raw_in_process": raw,
        "results": results,
        "ratios": ratios,
        "serverless_cold_start": cold_start,
    }
    document["targets"] = evaluate_targets(document)
    document["errors_total"] = sum(
        level["errors"]
        for workload in results.values()
        for target in workload["targets"].values()
        for level in target["levels"].values()
    ) + (cold_start["errors"] if cold_start else 0)
    return document


def _workload_ratios(
    workload: Workload,
    runs: dict[str, dict[int, Measurement]],
    raw: dict[str, Any] | None,
) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for level, platform in sorted(runs.get(PLATFORM, {}).items()):
        hand = runs.get(HANDWRITTEN, {}).get(level)
        ceiling = runs.get(CEILING, {}).get(level)
        entry: dict[str, float | None] = {
            "platform_vs_handwritten_rps": _ratio(
                platform.load.requests_per_s, hand.load.requests_per_s if hand else None
            ),
            "platform_vs_handwritten_p99": _ratio(
                platform.load.p99_ms, hand.load.p99_ms if hand else None
            ),
            "platform_vs_ceiling_rps": _ratio(
                platform.load.requests_per_s, ceiling.load.requests_per_s if ceiling else None
            ),
        }
        if workload.batching:
            # one row per request: the platform's req/s are its rows/s
            entry["platform_vs_raw_batch_rows"] = _ratio(
                platform.load.requests_per_s, raw["batch_rows_per_s"] if raw else None
            )
            unbatched = runs.get(PLATFORM_NO_BATCHING, {}).get(level)
            entry["platform_no_batching_vs_handwritten_rps"] = _ratio(
                unbatched.load.requests_per_s if unbatched else None,
                hand.load.requests_per_s if hand else None,
            )
            entry["batching_gain_rps"] = _ratio(
                platform.load.requests_per_s,
                unbatched.load.requests_per_s if unbatched else None,
            )
        out[str(level)] = entry
    return out


def _added_latency(
    measurements: dict[str, dict[str, dict[int, Measurement]]], raw: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    platform = measurements.get("W1", {}).get(PLATFORM, {}).get(LATENCY_LEVEL)
    if platform is None or "W1" not in raw:
        return None
    raw_p50 = float(raw["W1"]["p50_ms"])
    return {
        "clients": LATENCY_LEVEL,
        "platform_p50_ms": round(platform.load.p50_ms, 4),
        "raw_call_p50_ms": round(raw_p50, 4),
        "added_ms": round(platform.load.p50_ms - raw_p50, 4),
    }


@dataclass(frozen=True, slots=True)
class _Target:
    id: str
    description: str
    threshold: str
    unit: str  # how the measured value is shown: "x" (a ratio), "ms", "errors"
    measure: Callable[[dict[str, Any]], float | None]
    passes: Callable[[float], bool]
    # measured, but FAIL whatever the value when this says no (say, a request failed)
    valid: Callable[[dict[str, Any]], bool] = lambda _doc: True


def _ratio_at(workload: str, key: str) -> Callable[[dict[str, Any]], float | None]:
    def measure(doc: dict[str, Any]) -> float | None:
        value = doc["ratios"].get(workload, {}).get(str(TARGET_LEVEL), {}).get(key)
        return None if value is None else float(value)

    return measure


def _errors_at(workload: str, target: str) -> Callable[[dict[str, Any]], float | None]:
    def measure(doc: dict[str, Any]) -> float | None:
        levels = doc["results"].get(workload, {}).get("targets", {}).get(target, {})
        level = levels.get("levels", {}).get(str(TARGET_LEVEL))
        return None if level is None else float(level["errors"])

    return measure


def _added_ms(doc: dict[str, Any]) -> float | None:
    added = doc["ratios"].get("w1_added_p50_ms")
    return None if added is None else float(added["added_ms"])


def _cold_ms_max(doc: dict[str, Any]) -> float | None:
    cold = doc.get("serverless_cold_start")
    return None if not cold or cold["cold_ms_max"] is None else float(cold["cold_ms_max"])


def _cold_answered(doc: dict[str, Any]) -> bool:
    cold = doc.get("serverless_cold_start")
    return bool(cold) and all(r["ok"] for r in cold["rounds"])


TARGETS = (
    _Target(
        "w1-throughput",
        "W1, 64 clients: platform throughput ≥ hand-written",
        "≥ 1.00×",
        "x",
        _ratio_at("W1", "platform_vs_handwritten_rps"),
        lambda v: v >= 1.0,
    ),
    _Target(
        "w1-p99",
        "W1, 64 clients: platform p99 ≤ 1.2 × hand-written p99",
        "≤ 1.20×",
        "x",
        _ratio_at("W1", "platform_vs_handwritten_p99"),
        lambda v: v <= 1.2,
    ),
    _Target(
        "w1-errors",
        "W1, 64 clients: platform answers without errors",
        "= 0",
        "errors",
        _errors_at("W1", PLATFORM),
        lambda v: v == 0,
    ),
    _Target(
        "w2-vs-raw",
        "W2, 64 clients, batching: platform rows/s ≥ 70 % of raw in-process rows/s at batch 64",
        "≥ 0.70×",
        "x",
        _ratio_at("W2", "platform_vs_raw_batch_rows"),
        lambda v: v >= 0.7,
    ),
    _Target(
        "w2-vs-handwritten",
        "W2, 64 clients, batching: platform throughput ≥ 5 × hand-written",
        "≥ 5.00×",
        "x",
        _ratio_at("W2", "platform_vs_handwritten_rps"),
        lambda v: v >= 5.0,
    ),
    _Target(
        "w1-added-latency",
        "W1, 1 client: p50 added by the platform over a raw in-process call",
        "< 1.00 ms",
        "ms",
        _added_ms,
        lambda v: v < 1.0,
    ),
    _Target(
        "serverless-cold-start",
        "serverless: first W1 request at zero answered within 1 s (the max over rounds)",
        "≤ 1000 ms",
        "ms",
        _cold_ms_max,
        lambda v: v <= 1000.0,
        _cold_answered,
    ),
)


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for target in TARGETS:
        value = target.measure(doc)
        if value is None:
            status = "NOT MEASURED"
        else:
            status = "PASS" if target.passes(value) and target.valid(doc) else "FAIL"
        out.append(
            {
                "id": target.id,
                "description": target.description,
                "threshold": target.threshold,
                "measured": value,
                "unit": target.unit,
                "status": status,
            }
        )
    return out


# -- Markdown ------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _measured(target: dict[str, Any]) -> str:
    value = target["measured"]
    if value is None:
        return "not measured"
    if target["unit"] == "x":
        return f"{value:.2f}×"
    if target["unit"] == "ms":
        return f"{value:.3f} ms"
    return f"{value:.0f}"


def machine_line(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    commit = (machine.get("git_commit") or "unknown")[:12]
    if machine.get("git_dirty"):
        commit += " (with uncommitted changes)"
    return (
        f"{machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['physical_cores']} physical), {machine['ram_gb']} GB RAM; {machine['os']}; "
        f"Python {machine['python']}; {versions}; commit {commit}; "
        f"load average at start {', '.join(str(x) for x in machine['load_average_at_start'])}"
    )


def workload_table(doc: dict[str, Any], workload_id: str) -> list[str]:
    """The Markdown table of one workload (no heading)."""
    lines = [
        "| target | clients | req/s | p50 ms | p99 ms | errors | peak RSS MB "
        "| × hand-written | × ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in doc["results"][workload_id]["targets"].values():
        for clients, m in target["levels"].items():
            lines.append(
                f"| {target['label']} | {clients} | {_num(m['requests_per_s'])} "
                f"| {_num(m['p50_ms'], 2)} | {_num(m['p99_ms'], 2)} | {m['errors']} "
                f"| {_num(m['peak_rss_mb'])} | {_times(m['vs_handwritten_rps'])} "
                f"| {_times(m['vs_ceiling_rps'])} |"
            )
    return lines


def markdown(doc: dict[str, Any]) -> str:
    machine, settings = doc["machine"], doc["settings"]
    out = [
        "# Modelyard data-plane benchmark",
        "",
        f"{machine['date']} on `{machine['hostname']}`, load generator: "
        f"**{machine['generator']}**.",
        "",
        f"- Machine: {machine_line(machine)}.",
        f"- Settings: {', '.join(str(c) for c in settings['levels'])} concurrent keep-alive "
        f"clients; warm-up {settings['warmup_s']:g} s and {settings['duration_s']:g} s measured "
        f"per level; {settings['workers']} uvicorn workers / platform replicas "
        f"({settings.get('batching_replicas', settings['workers'])} for the batching endpoint); "
        f"hand-written handler `{settings['handwritten_handler']} def`; "
        + (
            f"{settings['cold_start_rounds']} serverless cold-start rounds"
            if settings.get("cold_start_rounds")
            else "no serverless cold-start rounds"
        )
        + ("; **quick mode** (numbers are indicative only)" if settings["quick"] else "")
        + ".",
        "- Ratios are against runs in this same invocation; absolute numbers move with the "
        "machine's load, ratios hold better.",
    ]
    for workload_id, workload in doc["results"].items():
        raw = doc["raw_in_process"].get(workload_id)
        out += ["", f'## {workload_id} "{workload["name"]}": `{workload["model"]}`', ""]
        if raw:
            out += [
                f"Raw in-process: {_num(raw['calls_per_s'])} `predict_proba` calls/s on 1 row "
                f"(p50 {raw['p50_ms']:.3f} ms per call); {_num(raw['batch_rows_per_s'])} rows/s "
                f"at batch {raw['batch_rows']}.",
                "",
            ]
        out += workload_table(doc, workload_id)
    out += [
        "",
        "## Targets",
        "",
        "| target | measured | threshold | result |",
        "|---|---:|---:|---|",
    ]
    for target in doc["targets"]:
        out.append(
            f"| {target['description']} | {_measured(target)} | {target['threshold']} "
            f"| {target['status']} |"
        )
    added = doc["ratios"].get("w1_added_p50_ms")
    if added:
        out += [
            "",
            f"W1 at 1 client: platform p50 {added['platform_p50_ms']:.3f} ms, raw call p50 "
            f"{added['raw_call_p50_ms']:.3f} ms.",
        ]
    cold = doc.get("serverless_cold_start")
    if cold:
        out += ["", *cold_start_section(cold)]
    if doc["errors_total"]:
        out += ["", f"**{doc['errors_total']} requests failed**: these numbers are not valid."]
    return "\n".join(out) + "\n"


def cold_start_section(cold: dict[str, Any]) -> list[str]:
    """The Markdown of the serverless cold-start rounds (heading included)."""
    out = [
        f"## Serverless cold start ({cold['workload']})",
        "",
        f"Endpoint `{cold['endpoint']}`: `type: serverless`, `idle_timeout_s: "
        f"{cold['idle_timeout_s']}`, the {cold['workload']} model. Each round waits until it has "
        "no replica, then times one request from just before sending to its whole answer "
        f"(cold), then {cold['warm_requests_per_round']} more to the warm endpoint (warm); every "
        "request on a new connection. `gateway` columns: `serverless_status` from `describe`.",
        "",
        "| round | zero after s | cold ms | warm median ms | gateway cold starts "
        "| gateway held ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in cold["rounds"]:
        out.append(
            f"| {r['round']} | {r['zero_after_s']:.1f} | {r['cold_ms']:,.1f} "
            f"| {_num(r['warm_median_ms'], 2)} | {r.get('gateway_cold_starts', '–')} "
            f"| {_num(r.get('gateway_held_ms'), 1)} | {'; '.join(r['errors']) or '–'} |"
        )
    ratio = cold["cold_vs_warm_median"]
    out += [
        "",
        f"Cold: median {_num(cold['cold_ms_median'], 1)} ms, max {_num(cold['cold_ms_max'], 1)} "
        f"ms over {len(cold['rounds'])} rounds; warm: median {_num(cold['warm_ms_median'], 2)} "
        "ms" + (f"; cold / warm medians {ratio:,.1f}×." if ratio is not None else "."),
    ]
    gateway = cold["gateway_cold_starts"]
    if cold["rounds"]:
        counted = (gateway["after"] or 0) - (gateway["before"] or 0)
        if gateway["one_per_round"]:
            out.append(
                f"The gateway counted one cold start per round ({counted} for "
                f"{len(cold['rounds'])} rounds: `cold_starts` {gateway['before']} → "
                f"{gateway['after']})."
            )
        else:
            out.append(
                f"**The gateway counted {counted} cold starts for {len(cold['rounds'])} rounds** "
                f"(`cold_starts` {gateway['before']} → {gateway['after']}): not every round was "
                "one cold start (see below)."
            )
    if len(cold["rounds"]) < cold["rounds_wanted"]:
        out.append(f"**Only {len(cold['rounds'])} of {cold['rounds_wanted']} rounds ran.**")
    for problem in cold["problems"]:
        out.append(f"- **{problem}**")
    return out
