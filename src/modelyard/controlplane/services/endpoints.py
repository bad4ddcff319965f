"""Endpoints: views for get/describe, delete, logs, and the gateway's routing table."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from modelyard.controlplane.autoscale.autoscaler import planned_capacities
from modelyard.controlplane.reconcile import asyncq
from modelyard.controlplane.reconcile.endpoints import tail_lines
from modelyard.controlplane.reconcile.plan import variant_key
from modelyard.controlplane.store.autoscale_queries import CapacityRecord, ScalingActivityRecord
from modelyard.controlplane.store.deployment_queries import DeploymentRecord
from modelyard.controlplane.store.repo import (
    CounterRecord,
    EndpointRecord,
    ReplicaRecord,
    Repo,
    RevisionRecord,
    Store,
)
from modelyard.errors import NotFoundError


def _counts(records: list[CounterRecord]) -> dict[str, dict[str, Any]]:
    return {
        c.variant: {
            "invocations": c.invocations,
            "errors_4xx": c.errors_4xx,
            "errors_5xx": c.errors_5xx,
            "cold_starts": c.cold_starts,
            "cold_start_ms_avg": round(c.cold_start_ms / c.cold_starts, 1)
            if c.cold_starts
            else None,
        }
        for c in records
    }


def _summary(repo: Repo, endpoint: EndpointRecord) -> dict[str, Any]:
    counts = _counts(repo.list_counts(endpoint.name))
    served = repo.get_revision(endpoint.name, endpoint.active_revision or endpoint.target_revision)
    shadow = ((served.spec if served else {}).get("shadow") or {}).get("variant")
    if shadow:
        counts.pop(str(shadow), None)  # copies for a shadow variant are not the endpoint's traffic
    replicas = repo.list_replicas(endpoint.name)
    live = [r for r in replicas if r.revision == endpoint.active_revision]
    return {
        "kind": "Endpoint",
        "name": endpoint.name,
        "status": endpoint.status,
        "message": endpoint.message,
        "revision": endpoint.target_revision,
        "active_revision": endpoint.active_revision,
        "replicas_ready": sum(r.state == "ready" for r in live),
        "invocations": sum(c["invocations"] for c in counts.values()),
        "errors_4xx": sum(c["errors_4xx"] for c in counts.values()),
        "errors_5xx": sum(c["errors_5xx"] for c in counts.values()),
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


def list_endpoints(store: Store) -> list[dict[str, Any]]:
    with store.tx() as repo:
        return [_summary(repo, e) for e in repo.list_endpoints()]


#: scaling activities shown by describe (the API lists more)
ACTIVITIES_SHOWN = 20

# A routing-table read that began this long after an endpoint's last change surely saw it.
ROUTES_MARGIN_S = 0.1


def describe_endpoint(
    store: Store,
    name: str,
    gateway_url: str,
    routes_read_at: float | None = None,
    state_dir: Path | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything about one endpoint. ``routed`` says whether the gateway has picked up the
    endpoint's latest change, so `apply --wait` returns only once invocations see it."""
    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        view = _summary(repo, endpoint)
        revision = repo.get_revision(name, endpoint.target_revision)
        replicas = repo.list_replicas(name)
        raw_counts = repo.list_counts(name)
        counts = _counts(raw_counts)
        events = repo.list_events(name)
        revisions = repo.list_revisions(name)
        backlog = repo.backlog().get(name)
        totals = repo.async_totals(name)
        records = {c.variant: c for c in repo.list_capacities(name)}
        activities = repo.list_scaling_activities(name, limit=ACTIVITIES_SHOWN)
    assert revision is not None
    capacities = planned_capacities(revision.spec, records)
    variants = []
    for v in revision.spec["variants"]:
        reps = [r for r in replicas if r.variant == v["name"]]
        status = {}
        if v["name"] in capacities:
            record = records.get(v["name"])
            status["autoscaling_status"] = _autoscaling_status(
                capacities[v["name"]], record, v["autoscaling"]
            )
        variants.append(
            {
                **v,
                **status,
                **counts.get(v["name"], {"invocations": 0, "errors_4xx": 0, "errors_5xx": 0}),
                "replicas": [
                    {
                        "id": r.id,
                        "revision": r.revision,
                        "state": r.state,
                        "pid": r.pid,
                        "address": r.address,
                        "restarts": r.restarts,
                        "started_at": r.started_at,
                        "message": r.message,
                        **(
                            {"last_log_lines": tail_lines(r.log_path, 10)}
                            if r.state in ("failed", "crashed") or r.last_exit_code is not None
                            else {}
                        ),
                    }
                    for r in reps
                ],
            }
        )
    names = {v["name"] for v in revision.spec["variants"]}
    # Replicas of variants the target revision does not have: the old fleet during a rollout.
    others = [
        {"id": r.id, "revision": r.revision, "variant": r.variant, "state": r.state, "pid": r.pid}
        for r in replicas
        if r.variant not in names
    ]
    failed_logs = [
        line
        for r in replicas
        if r.state == "failed" and r.revision == endpoint.target_revision
        for line in tail_lines(r.log_path, 10)
    ]
    view.update(
        {
            "url": f"{gateway_url}/endpoints/{name}/invocations",
            "routed": routes_read_at is not None
            and routes_read_at > endpoint.updated_at + ROUTES_MARGIN_S,
            "spec": revision.spec,
            "models": revision.models,
            "variants": variants,
            "revisions": [
                {
                    "number": r.number,
                    "state": r.state,
                    "message": r.message,
                    "created_at": r.created_at,
                }
                for r in revisions
            ],
            "events": [{"at": e.at, "message": e.message} for e in events],
            "scaling_activities": [_activity(a) for a in reversed(activities)],
            "other_replicas": others,
        }
    )
    if failed_logs:
        view["last_log_lines"] = failed_logs
    kind = revision.spec.get("type", "realtime")
    if kind == "serverless":
        starts = sum(c.cold_starts for c in raw_counts)
        held_ms = sum(c.cold_start_ms for c in raw_counts)
        view["serverless_status"] = {
            "cold_starts": starts,
            "cold_start_ms_avg": round(held_ms / starts, 1) if starts else None,
            "last_request_at": endpoint.last_request_at,
        }
    elif kind == "async":
        clock = time.time() if now is None else now
        oldest = backlog.oldest_queued_at if backlog else None
        view["async_status"] = {
            "queued": backlog.queued if backlog else 0,
            "running": backlog.running if backlog else 0,
            "oldest_queued_age_s": round(clock - oldest, 3) if oldest is not None else None,
            "succeeded": totals.get("succeeded", 0),
            "failed": totals.get("failed", 0),
            "webhook_secret": endpoint.webhook_secret,
            **(
                {"locations": asyncq.locations(revision.spec, name, state_dir)}
                if state_dir is not None
                else {}
            ),
        }
        view["async_url"] = f"{gateway_url}/endpoints/{name}/async-invocations"
    return view


def _autoscaling_status(
    capacity: int, record: CapacityRecord | None, config: dict[str, Any]
) -> dict[str, Any]:
    """A variant's autoscaling now: its capacity and the bounds in force (the spec's until the
    autoscaler has taken up this autoscaling spec)."""
    fresh = record if record is not None and record.config == config else None
    return {
        "capacity": capacity,
        "min": fresh.min if fresh else config["min"],
        "max": fresh.max if fresh else config["max"],
        "scheduled_at": fresh.scheduled_at if fresh else None,
        "last_scaling_at": fresh.last_scaling_at if fresh else None,
    }


def _activity(a: ScalingActivityRecord) -> dict[str, Any]:
    return {
        "at": a.at,
        "variant": a.variant,
        "from": a.from_capacity,
        "to": a.to_capacity,
        "cause": a.cause,
        "details": a.details,
    }


def scaling_activities(
    store: Store, name: str, limit: int = 100, variant: str | None = None
) -> list[dict[str, Any]]:
    """An endpoint's scaling activities, newest first."""
    with store.tx() as repo:
        if repo.get_endpoint(name) is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        return [_activity(a) for a in repo.list_scaling_activities(name, limit, variant)]


def delete_endpoint(store: Store, name: str, now: float) -> None:
    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        repo.update_endpoint(name, now, deleting=True, status="Deleting")
        repo.add_event(name, "deleting", now)


def _fleet(
    rev: RevisionRecord,
    replicas: list[ReplicaRecord],
    keys: dict[tuple[int, str], str | None] | None,
) -> list[dict[str, Any]]:
    """The variants of revision ``rev`` as the gateway routes them: weight, whether replicas
    take bundles, and the addresses of the ready replicas that run them (with ``keys``, the
    variant keys of the endpoint's replicas: also replicas of other revisions that run exactly
    the same thing, shared by two revisions while a deployment runs)."""
    out = []
    shadow = (rev.spec.get("shadow") or {}).get("variant")
    for v in rev.spec["variants"]:
        name = v["name"]
        want = variant_key(rev, name) if keys is not None else None
        addresses = sorted(
            {
                r.address
                for r in replicas
                if r.state == "ready"
                and r.address
                and (
                    (r.revision == rev.number and r.variant == name)
                    or (keys is not None and keys.get((r.revision, r.variant)) == want)
                )
            }
        )
        out.append(
            {
                "name": name,
                "weight": 0.0 if name == shadow else v["weight"],  # copies only, never answers
                # Model servers take bundled invocations; containers plain ones only.
                "bundles": (rev.models.get(v["model"]) or {}).get("runtime")
                not in (None, "container"),
                "replicas": addresses,
            }
        )
    return out


def _fleets(
    repo: Repo,
    endpoint: EndpointRecord,
    dep: DeploymentRecord | None,
    replicas: list[ReplicaRecord],
) -> tuple[RevisionRecord, list[dict[str, Any]], tuple[int, float, list[dict[str, Any]]] | None]:
    """The served revision and its variants, and while a deployment shifts traffic the new
    revision's (number, share of traffic, variants)."""
    assert endpoint.active_revision is not None
    rev = repo.get_revision(endpoint.name, endpoint.active_revision)
    assert rev is not None
    mine = [r for r in replicas if r.endpoint == endpoint.name]
    keys = None
    if any(r.revision != rev.number for r in mine):  # replicas may be shared by two revisions
        revisions = {r.number: r for r in repo.list_revisions(endpoint.name)}
        keys = {
            (r.revision, r.variant): variant_key(revisions[r.revision], r.variant)
            for r in mine
            if r.revision in revisions
        }
    served = _fleet(rev, mine, keys)
    if (
        dep is None
        or dep.to_revision == rev.number
        or rev.spec.get("type", "realtime") != "realtime"
    ):
        return rev, served, None
    new = repo.get_revision(endpoint.name, dep.to_revision)
    if new is None:
        return rev, served, None
    # Only the new revision's variants with a ready replica take part of its share (a replica
    # that crashed while traffic shifts is not routed to); with none, it gets no share.
    green = [v for v in _fleet(new, mine, keys) if v["replicas"]]
    if not any(v["weight"] > 0 for v in green):
        return rev, served, None
    if dep.mode == "blue_green":
        return rev, served, (new.number, dep.share, green) if dep.share > 0 else None
    if dep.mode != "rolling":
        return rev, served, None
    # A rolling update splits the traffic of the variants it replaces as their replicas are
    # split (shared variants are in both revisions: they do not count).
    new_keys = {variant_key(new, v["name"]) for v in new.spec["variants"]}
    old_keys = {variant_key(rev, v["name"]) for v in rev.spec["variants"]}

    def ready(fleet: list[dict[str, Any]], r: RevisionRecord, other: set[str | None]) -> int:
        return sum(
            len(v["replicas"])
            for v in fleet
            if v["weight"] > 0 and variant_key(r, v["name"]) not in other
        )

    n_green, n_blue = ready(green, new, old_keys), ready(served, rev, new_keys)
    if n_green == 0:
        return rev, served, None
    return rev, served, (new.number, n_green / (n_green + n_blue), green)


def routes(store: Store, state_dir: Path) -> dict[str, Any]:
    """The gateway's routing table: per endpoint, its type, the served revision's variants and
    the addresses of their ready replicas; while a deployment shifts traffic, the new revision's
    (``canary``: its share and variants); for serverless endpoints the concurrency cap, for
    async ones where inputs, results and failures go."""
    table: dict[str, Any] = {}
    with store.tx() as repo:
        endpoints = repo.list_endpoints()
        replicas = repo.list_replicas()
        deployments = repo.active_deployments()
        for endpoint in endpoints:
            if endpoint.deleting or endpoint.active_revision is None:
                continue
            rev, served, canary = _fleets(repo, endpoint, deployments.get(endpoint.name), replicas)
            kind = rev.spec.get("type", "realtime")
            extra: dict[str, Any] = {}
            if kind == "serverless":
                extra["max_concurrency"] = rev.spec["serverless"]["max_concurrency"]
            elif kind == "async":
                extra["async"] = asyncq.locations(rev.spec, endpoint.name, state_dir)
                extra["input_locations"] = rev.spec["async"].get("input_locations") or []
            if rev.spec.get("shadow"):
                extra["shadow"] = {
                    "variant": rev.spec["shadow"]["variant"],
                    "percent": rev.spec["shadow"]["sampling_percent"],
                }
            if canary is not None:
                number, share, variants = canary
                extra["canary"] = {"revision": number, "share": share, "variants": variants}
            table[endpoint.name] = {
                **extra,
                "type": kind,
                "revision": rev.number,
                "variants": served,
            }
    return table


def traffic_split(
    repo: Repo, endpoint: EndpointRecord, dep: DeploymentRecord | None
) -> list[dict[str, Any]]:
    """Each revision's share of traffic now, and each variant's share of it (what the gateway
    does with the routing table)."""
    if endpoint.active_revision is None or endpoint.deleting:
        return []
    rev, served, canary = _fleets(repo, endpoint, dep, repo.list_replicas(endpoint.name))
    fleets = [(rev.number, 1.0 - (canary[1] if canary else 0.0), served)]
    if canary is not None:
        fleets.append(canary)
    out = []
    for number, share, variants in fleets:
        total = sum(v["weight"] for v in variants) or 1.0
        out.append(
            {
                "revision": number,
                "share": round(share, 4),
                "variants": [
                    {
                        "name": v["name"],
                        "share": round(share * v["weight"] / total, 4),
                        "replicas_ready": len(v["replicas"]),
                    }
                    for v in variants
                ],
            }
        )
    return out


def record_counts(store: Store, counts: dict[str, dict[str, list[float]]], now: float) -> None:
    """Add a gateway's invocation counts: {endpoint: {variant: [invocations, 4xx, 5xx,
    cold starts, milliseconds held by cold starts]}} (the last two may be absent)."""
    if not counts:
        return
    with store.tx() as repo:
        for endpoint, variants in counts.items():
            for variant, values in variants.items():
                n, e4, e5, cold, cold_ms = [*values, 0, 0, 0, 0, 0][:5]
                repo.add_counts(
                    endpoint, variant, int(n), int(e4), int(e5), now, int(cold), float(cold_ms)
                )
        repo.touch_endpoints(list(counts), now)


def record_activity(store: Store, names: list[str], now: float) -> None:
    """Endpoints with requests in progress at a gateway now."""
    with store.tx() as repo:
        repo.touch_endpoints(names, now)


def read_logs(
    store: Store, logs_dir: Path, name: str, tail: int, cursor: dict[str, int] | None
) -> dict[str, Any]:
    """Replica log lines of an endpoint. Without a cursor: the last ``tail`` lines of each log;
    with one: what was written since, and the cursor to pass next time (for --follow)."""
    with store.tx() as repo:
        if repo.get_endpoint(name) is None:
            raise NotFoundError(f"no endpoint named {name!r}")
    folder = logs_dir / name
    files = sorted(folder.glob("*.log"), key=os.path.getmtime) if folder.is_dir() else []
    lines: list[str] = []
    new_cursor: dict[str, int] = {}
    for path in files:
        replica = path.stem
        size = path.stat().st_size
        new_cursor[replica] = size
        if cursor is None:
            chunk = tail_lines(path, tail)
        else:
            start = cursor.get(replica, 0)
            if start >= size:
                continue
            with open(path, "rb") as fh:
                fh.seek(start)
                chunk = fh.read(size - start).decode("utf-8", "replace").splitlines()
        lines += [f"[{replica}] {line}" for line in chunk]
    return {"lines": lines, "cursor": new_cursor}
