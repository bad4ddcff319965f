"""Shadow variants as users see them: `shadow report` (production against the shadow over a
window: traffic, errors, latency, agreement) and `shadow promote` (the shadow becomes the
production variant, through the endpoint's deployment policy)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from modelyard.controlplane.services import deployments
from modelyard.controlplane.store.repo import Store
from modelyard.errors import ConflictError, InvalidInputError, NotFoundError
from modelyard.metrics.series import Point, merged, statistic
from modelyard.spec import dump_spec
from modelyard.spec.documents import spec_error_from
from modelyard.spec.resources import EndpointSpec

#: what the report shows per side: (metric, statistics)
_LATENCIES = ("latency_ms", "model_latency_ms")


def _side(points: dict[str, list[Point]]) -> dict[str, Any]:
    """One side's figures from its points by metric."""

    def total(metric: str) -> float:
        return sum(p.sum for p in points.get(metric, []))

    invocations = total("invocations")
    side: dict[str, Any] = {
        "invocations": int(invocations),
        "errors_4xx": int(total("errors_4xx")),
        "errors_5xx": int(total("errors_5xx")),
    }
    errors = side["errors_4xx"] + side["errors_5xx"]
    side["error_rate"] = round(errors / invocations, 4) if invocations else None
    for metric in _LATENCIES:
        point = merged(points.get(metric, []), 0.0)
        side[metric] = {
            stat: (round(v, 3) if (v := statistic(point, stat, "histogram")) is not None else None)
            for stat in ("avg", "p50", "p90", "p99")
        }
    return side


def report(store: Store, name: str, now: float, since_s: int = 900) -> dict[str, Any]:
    """Production against the shadow over the last ``since_s`` seconds."""
    if not 0 < since_s <= 14 * 86400:
        raise InvalidInputError("since: must be 1 s to 14 days")
    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        rev = repo.get_revision(name, endpoint.active_revision or endpoint.target_revision)
        assert rev is not None
        shadow = rev.spec.get("shadow")
        if not shadow:
            raise ConflictError(
                f"endpoint {name!r} has no shadow variant; add `shadow: {{variant, "
                "sampling_percent}}` to its spec"
            )
        series = repo.metric_points(name, now - since_s, now + 1)
    by_side: dict[str, dict[str, list[Point]]] = {"production": {}, "shadow": {}}
    for key, points in series.items():
        if key.replica:
            continue
        side = "shadow" if key.variant == shadow["variant"] else "production"
        by_side[side].setdefault(key.metric, []).extend(points)
    compared = sum(p.sum for p in by_side["shadow"].get("shadow_compared", []))
    agreed = sum(p.sum for p in by_side["shadow"].get("shadow_agreed", []))
    shed = sum(p.sum for p in by_side["shadow"].get("shadow_shed", []))
    production, shadow_side = _side(by_side["production"]), _side(by_side["shadow"])
    deltas = {}
    for metric in _LATENCIES:
        deltas[metric] = {
            stat: round(shadow_side[metric][stat] - production[metric][stat], 3)
            if shadow_side[metric][stat] is not None and production[metric][stat] is not None
            else None
            for stat in ("avg", "p50", "p90", "p99")
        }
    return {
        "endpoint": name,
        "since_s": since_s,
        "shadow_variant": shadow["variant"],
        "sampling_percent": shadow["sampling_percent"],
        "production_variants": sorted(
            v["name"] for v in rev.spec["variants"] if v["name"] != shadow["variant"]
        ),
        "production": production,
        "shadow": shadow_side,
        "latency_delta_ms": deltas,
        "agreement": {
            "compared": int(compared),
            "agreed": int(agreed),
            "rate": round(agreed / compared, 4) if compared else None,
        },
        "copies_shed": int(shed),
    }


def promote(store: Store, name: str, by: str, now: float) -> dict[str, Any]:
    """The shadow variant becomes the endpoint's only production variant (with the capacity the
    production variants had), as a new revision rolled out by the deployment policy."""
    from modelyard.controlplane.services.apply import new_revision

    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        deployments.check_no_rollout(repo, name, "promote the shadow of")
        current = repo.get_revision(name, endpoint.target_revision)
        assert current is not None
        shadow = current.spec.get("shadow")
        if not shadow:
            raise ConflictError(f"endpoint {name!r} has no shadow variant to promote")
        variants = current.spec["variants"]
        chosen = next(v for v in variants if v["name"] == shadow["variant"])
        production = [v for v in variants if v["name"] != shadow["variant"]]
        promoted = {
            **chosen,
            "weight": 1.0,
            "instance_count": max(
                int(chosen["instance_count"]), sum(int(v["instance_count"]) for v in production)
            ),
        }
        spec = {k: v for k, v in current.spec.items() if k != "shadow"}
        spec["variants"] = [promoted]
        try:
            spec = dump_spec(EndpointSpec.model_validate(spec))
        except ValidationError as exc:
            raise spec_error_from(exc, "spec") from exc
        models = {chosen["model"]: current.models[chosen["model"]]}
        number = new_revision(repo, endpoint, spec, models, now)
        repo.add_event(name, f"shadow {chosen['name']} promoted; revision {number}", now)
        dep_id = deployments.record(
            repo, endpoint, number, now, by, f"shadow {chosen['name']} promoted"
        )
    return {"endpoint": name, "revision": number, "rollout": dep_id, "variant": chosen["name"]}
