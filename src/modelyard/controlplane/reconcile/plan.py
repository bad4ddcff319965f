"""The endpoint plan: pure, table-tested. Given an endpoint, its revisions, its replicas and what
the executor observed of them, it returns the actions that move the world toward the target
revision. Nothing here does I/O or reads the clock.

Replica states::

    starting ──ready──▶ ready            (process launched; /ping answered)
    starting|ready ──exit──▶ crashed     (restarted after a backoff)
    starting ──exit (load error, or too many tries) | startup timeout──▶ failed   (never retried)
    any ──scale-in, replaced, deleted──▶ stopping ──exit──▶ (row removed)

A new revision is promoted (becomes the routed one) once every variant has its wanted count of
ready replicas; replicas of other revisions that run the same model, variant and resources are
carried over instead of restarted.

How many replicas a variant wants depends on the endpoint type (:func:`wanted_replicas`):
real-time variants run ``instance_count``, or with autoscaling the capacity the autoscaler set
(controlplane/autoscale/); serverless ones run it while requests come and keep only their
provisioned concurrency after ``idle_timeout_s`` without one (zero by default); async ones run it
(or their autoscaled capacity, at least one) while their queue has work and none after
``idle_timeout_s`` with an empty queue. A revision being rolled out always starts at least one
replica per variant, so a model that cannot load fails the apply instead of the first request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from modelyard.controlplane.store.repo import EndpointRecord, ReplicaRecord, RevisionRecord

LOAD_ERROR_EXIT = 3  # the model server's exit status for a model that cannot load


@dataclass(frozen=True, slots=True)
class Observation:
    exit_code: int | None  # None: running
    ready: bool
    last_log_line: str = ""  # read when the replica has exited, for the failure's reason
    memory_mb: float | None = None  # resident memory of the replica's process tree


@dataclass(frozen=True, slots=True)
class Activity:
    """What drives scale to and from zero: the last request in progress, the async backlog."""

    last_request_at: float | None = None
    backlog: int = 0  # async requests queued or running


@dataclass(frozen=True, slots=True)
class PlanSettings:
    drain_delay_s: float
    stop_grace_s: float
    restart_backoff_s: tuple[float, ...]
    max_start_attempts: int


@dataclass(frozen=True, slots=True)
class Directives:
    """What a running deployment (reconcile/rollout.py) asks of this tick's plan.

    ``hold_promotion``: the new revision is not promoted even once its fleet is ready (traffic
    shifts first); ``updating``: the endpoint stays Updating (the deployment ends it), or
    RollingBack with ``rolling_back``;
    ``target_counts``: replicas wanted per variant of the target revision, instead of its
    capacity (a rolling batch); ``keep_others``: live replicas kept per (revision, variant) of
    other revisions (the rest are drained); ``retain``: revisions whose replicas all keep running
    (the old fleet while a promoted revision bakes); ``report_ready``: say :class:`FleetReady`
    when the target's fleet is ready; ``fail_revision``: a replica of the target that fails for
    good fails the revision (when False the deployment decides: a rolling update rolls back in
    batches)."""

    hold_promotion: bool = False
    report_ready: bool = False
    updating: bool = False
    rolling_back: bool = False
    fail_revision: bool = True
    target_counts: Mapping[str, int] | None = None
    keep_others: Mapping[tuple[int, str], int] | None = None
    retain: frozenset[int] = frozenset()


NO_DIRECTIVES = Directives()


@dataclass(frozen=True, slots=True)
class FleetReady:
    """Every variant of the target revision has the replicas it wants, ready (not an action
    on the world: what the deployment moves on)."""

    revision: int


@dataclass(frozen=True, slots=True)
class MarkReady:
    replica_id: str


@dataclass(frozen=True, slots=True)
class MarkExited:
    replica_id: str
    exit_code: int
    permanent: bool
    restart_at: float | None


@dataclass(frozen=True, slots=True)
class FailReplica:
    replica_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class KillOverMemory:
    replica_id: str
    used_mb: float
    limit_mb: int


@dataclass(frozen=True, slots=True)
class StartNew:
    revision: int
    variant: str


@dataclass(frozen=True, slots=True)
class Restart:
    replica_id: str


@dataclass(frozen=True, slots=True)
class Stop:
    replica_id: str


@dataclass(frozen=True, slots=True)
class Signal:
    replica_id: str
    how: Literal["term", "kill"]


@dataclass(frozen=True, slots=True)
class Forget:
    replica_id: str


@dataclass(frozen=True, slots=True)
class Retag:
    replica_id: str
    revision: int


@dataclass(frozen=True, slots=True)
class SetEndpoint:
    status: str
    message: str
    active_revision: int | None
    target_revision: int
    revision_states: tuple[tuple[int, str, str], ...] = ()  # (number, state, message)


@dataclass(frozen=True, slots=True)
class DeleteEndpoint:
    pass


Action = (
    MarkReady
    | MarkExited
    | FailReplica
    | KillOverMemory
    | StartNew
    | Restart
    | Stop
    | Signal
    | Forget
    | Retag
    | SetEndpoint
    | DeleteEndpoint
    | FleetReady
)

LIVE = ("starting", "ready", "crashed")


def variant_key(revision: RevisionRecord, variant: str) -> str | None:
    """What a replica runs: two variants with the same key can share replicas."""
    spec = next((v for v in revision.spec["variants"] if v["name"] == variant), None)
    if spec is None:
        return None
    model = revision.models.get(spec["model"])
    shape = [
        variant,
        spec["model"],
        model,
        spec.get("resources"),
        spec.get("startup_timeout_s"),
        spec.get("batching"),
    ]
    return json.dumps(shape, sort_keys=True)


def wanted_replicas(
    endpoint: EndpointRecord,
    spec: Mapping[str, Any],
    variant: Mapping[str, Any],
    activity: Activity,
    now: float,
    promoting: bool,
    capacity: int | None = None,
) -> int:
    """How many replicas ``variant`` of the endpoint spec ``spec`` wants now; ``capacity`` is
    the autoscaled capacity of the variant (None: it has no autoscaling)."""
    count = int(variant["instance_count"]) if capacity is None else capacity
    kind = spec.get("type", "realtime")
    if kind == "realtime":
        return count
    # Idle time counts from the last request, or from the last change of the endpoint.
    since = max(activity.last_request_at or 0.0, endpoint.updated_at)
    if kind == "serverless":
        cfg = spec["serverless"]
        provisioned = int(cfg["provisioned_concurrency"])
        busy = now - since < float(cfg["idle_timeout_s"])
        if busy:
            return max(count, provisioned)
        return max(1, provisioned) if promoting else provisioned
    # async (an autoscaled capacity may be 0: work in the queue still gets a replica)
    if promoting or activity.backlog > 0:
        return max(1, count)
    return count if now - since < float(spec["async"]["idle_timeout_s"]) else 0


def drain_grace_s(spec: Mapping[str, Any]) -> float | None:
    """How long a stopping replica may take to finish the requests it has: an async endpoint's
    requests may run for its invocation timeout; None: the model server's default."""
    if spec.get("type") == "async":
        return float(spec["async"]["invocation_timeout_s"])
    return None


def _drain_of(revisions: Mapping[int, RevisionRecord], rep: ReplicaRecord) -> float | None:
    rev = revisions.get(rep.revision)
    return drain_grace_s(rev.spec) if rev is not None else None


def memory_limit_mb(
    revision: RevisionRecord | None, variant: Mapping[str, Any] | None
) -> int | None:
    """The memory a replica may use: ``serverless.memory_mb``, or the variant's
    ``resources.memory_mb``."""
    if revision is not None and revision.spec.get("type") == "serverless":
        return int(revision.spec["serverless"]["memory_mb"])
    limit = ((variant or {}).get("resources") or {}).get("memory_mb")
    return int(limit) if limit else None


def _variant_spec(revision: RevisionRecord | None, variant: str) -> Mapping[str, Any] | None:
    if revision is None:
        return None
    return next((v for v in revision.spec["variants"] if v["name"] == variant), None)


def _observe(
    rep: ReplicaRecord,
    obs: Observation | None,
    variant_spec: Mapping[str, Any] | None,
    now: float,
    cfg: PlanSettings,
    may_fail: bool = True,
    memory_limit: int | None = None,
    drain_s: float | None = None,
) -> tuple[str, list[Action]]:
    """The replica's state after this tick's observation, and the actions that record it.

    ``may_fail`` is False for replicas of the revision being served: those are always restarted
    (with backoff), since giving up on them would leave the endpoint without capacity.
    """
    if obs is None or rep.state not in ("starting", "ready", "stopping"):
        return rep.state, []
    if rep.state == "stopping":
        if obs.exit_code is not None:
            return "gone", [Forget(rep.id)]
        assert rep.stop_requested_at is not None
        waited = now - rep.stop_requested_at
        if rep.signalled == 0 and waited >= cfg.drain_delay_s:
            return "stopping", [Signal(rep.id, "term")]
        # SIGKILL once the replica's own drain grace has passed (with a margin), or ours.
        grace = cfg.stop_grace_s if drain_s is None else max(cfg.stop_grace_s, drain_s + 5.0)
        if rep.signalled == 1 and waited >= cfg.drain_delay_s + grace:
            return "stopping", [Signal(rep.id, "kill")]
        return "stopping", []
    if obs.exit_code is not None:
        never_ready = not rep.ever_ready
        permanent = (
            may_fail
            and never_ready
            and (obs.exit_code == LOAD_ERROR_EXIT or rep.attempts >= cfg.max_start_attempts)
        )
        backoff = cfg.restart_backoff_s[min(rep.restarts, len(cfg.restart_backoff_s) - 1)]
        restart_at = None if permanent else now + backoff
        return ("failed" if permanent else "crashed"), [
            MarkExited(rep.id, obs.exit_code, permanent, restart_at)
        ]
    limit = memory_limit
    if limit and obs.memory_mb is not None and obs.memory_mb > limit:
        return rep.state, [KillOverMemory(rep.id, obs.memory_mb, limit)]
    if rep.state == "starting":
        if obs.ready:
            return "ready", [MarkReady(rep.id)]
        timeout = float(variant_spec["startup_timeout_s"]) if variant_spec else 240.0
        if rep.started_at is not None and now - rep.started_at > timeout:
            reason = f"did not answer GET /ping within {timeout:g} s"
            if not may_fail:
                return "starting", [Signal(rep.id, "kill")]  # seen as an exit next tick
            return "failed", [FailReplica(rep.id, reason), Signal(rep.id, "kill")]
    return rep.state, []


def _failure_summary(failed: Sequence[ReplicaRecord], reasons: Mapping[str, str]) -> str:
    rep = failed[0]
    return f"replica {rep.id} of variant {rep.variant!r} failed: {reasons.get(rep.id, rep.message)}"


def plan(
    endpoint: EndpointRecord,
    revisions: Mapping[int, RevisionRecord],
    replicas: Sequence[ReplicaRecord],
    observed: Mapping[str, Observation],
    now: float,
    cfg: PlanSettings,
    activity: Activity = Activity(),
    capacity: Mapping[str, int] | None = None,
    directives: Directives = NO_DIRECTIVES,
) -> list[Action]:
    """The actions for this tick. ``capacity``: the autoscaled variants' capacities (the others
    run ``instance_count``); ``directives``: what a running deployment asks."""
    actions: list[Action] = []
    capacity = capacity or {}
    target = revisions[endpoint.target_revision]
    variants = {v["name"]: v for v in target.spec["variants"]}

    if endpoint.deleting:
        for rep in replicas:
            if rep.state == "stopping":
                actions += _observe(
                    rep, observed.get(rep.id), None, now, cfg, drain_s=_drain_of(revisions, rep)
                )[1]
            else:
                actions.append(Stop(rep.id))
        if not replicas and activity.backlog == 0:  # accepted async requests end first
            actions.append(DeleteEndpoint())
        return actions

    if endpoint.status == "Failed" and endpoint.active_revision is None:
        # Nothing is retried until the user applies again; only finish stopping what runs.
        for rep in replicas:
            if rep.state == "stopping":
                actions += _observe(
                    rep, observed.get(rep.id), None, now, cfg, drain_s=_drain_of(revisions, rep)
                )[1]
            elif rep.state != "failed":
                actions.append(Stop(rep.id))
        return actions

    state: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for rep in replicas:
        rev = revisions.get(rep.revision)
        spec = _variant_spec(rev, rep.variant)
        serving = rep.revision == endpoint.active_revision
        new_state, acts = _observe(
            rep,
            observed.get(rep.id),
            spec,
            now,
            cfg,
            not serving,
            memory_limit_mb(rev, spec),
            _drain_of(revisions, rep),
        )
        state[rep.id] = new_state
        actions += acts
        for act in acts:
            if isinstance(act, FailReplica):
                reasons[rep.id] = act.reason
            if isinstance(act, MarkExited) and act.permanent:
                line = observed[rep.id].last_log_line
                reasons[rep.id] = f"exited with status {act.exit_code} before it was ready" + (
                    f": {line}" if line else ""
                )

    # Crashed replicas of the target or the served revision come back after their backoff (the
    # served ones keep the endpoint's capacity during an update); others are forgotten.
    keep_revisions = {target.number, endpoint.active_revision, *directives.retain}
    for rep in replicas:
        if state[rep.id] != "crashed":
            continue
        if rep.revision not in keep_revisions:
            actions.append(Forget(rep.id))
            state[rep.id] = "gone"
        elif rep.next_start_at is not None and now >= rep.next_start_at:
            actions.append(Restart(rep.id))

    failed = [r for r in replicas if r.revision == target.number and state[r.id] == "failed"]
    promoting = endpoint.active_revision != target.number
    if failed and promoting and directives.fail_revision:
        return actions + _fail_revision(endpoint, target, replicas, state, failed, reasons)

    # Replicas of other revisions that run exactly what a target variant needs count toward it.
    def key_of(rep: ReplicaRecord) -> str | None:
        rev = revisions.get(rep.revision)
        return variant_key(rev, rep.variant) if rev else None

    plans: dict[str, tuple[list[ReplicaRecord], list[ReplicaRecord]]] = {}
    for name in variants:
        want = variant_key(target, name)
        own = [r for r in replicas if r.revision == target.number and r.variant == name]
        carried = [
            r
            for r in replicas
            if r.revision != target.number and state[r.id] in LIVE and key_of(r) == want
        ]
        plans[name] = (own, carried)

    wanted = {
        name: wanted_replicas(
            endpoint, target.spec, v, activity, now, promoting, capacity.get(name)
        )
        for name, v in variants.items()
    }
    if directives.target_counts is not None:
        wanted.update({n: c for n, c in directives.target_counts.items() if n in wanted})
    all_ready = True
    for name, (own, carried) in plans.items():
        count = wanted[name]
        live = [r for r in own if state[r.id] in LIVE] + carried
        ready = [r for r in live if state[r.id] == "ready"]
        if len(ready) < count:
            all_ready = False
        for _ in range(count - len(live)):
            actions.append(StartNew(target.number, name))
        if len(live) > count and not promoting:
            # Scale in: stop the least useful first (not ready before ready).
            extra = sorted(live, key=lambda r: state[r.id] == "ready")[: len(live) - count]
            actions += [Stop(r.id) for r in extra]

    if all_ready and directives.report_ready:
        actions.append(FleetReady(target.number))
    kept = {r.id for own, carried in plans.values() for r in own + carried}
    others = [r for r in replicas if r.id not in kept and r.revision not in directives.retain]
    if promoting and all_ready and not directives.hold_promotion:
        return actions + _promote(endpoint, target, wanted, replicas, state, plans, directives)

    if directives.keep_others is not None:
        actions += _trim_others(others, state, directives.keep_others, stop_unlisted=not promoting)
    elif not promoting:
        actions += [Stop(r.id) for r in others if state[r.id] in (*LIVE, "failed")]
    if not promoting:
        status = "Updating" if directives.updating else "InService"
        if directives.rolling_back:
            status = "RollingBack"
        if endpoint.status != status:
            actions.append(SetEndpoint(status, endpoint.message, target.number, target.number))
    else:
        status = "Creating" if endpoint.active_revision is None else "Updating"
        if endpoint.status != status:
            actions.append(
                SetEndpoint(status, "", endpoint.active_revision, endpoint.target_revision)
            )
    return actions


def _trim_others(
    others: Sequence[ReplicaRecord],
    state: Mapping[str, str],
    keep: Mapping[tuple[int, str], int],
    stop_unlisted: bool,
) -> list[Action]:
    """Stop the replicas of other revisions beyond ``keep`` per (revision, variant), those not
    ready first; unlisted ones are stopped only with ``stop_unlisted``."""
    actions: list[Action] = []
    groups: dict[tuple[int, str], list[ReplicaRecord]] = {}
    for rep in others:
        if state[rep.id] in (*LIVE, "failed"):
            groups.setdefault((rep.revision, rep.variant), []).append(rep)
    for key, reps in groups.items():
        if key not in keep:
            if stop_unlisted:
                actions += [Stop(r.id) for r in reps]
            continue
        reps.sort(key=lambda r: state[r.id] == "ready")  # not ready ones go first
        extra = len(reps) - max(0, keep[key])
        actions += [Stop(r.id) for r in reps[: max(0, extra)]]
    return actions


def _promote(
    endpoint: EndpointRecord,
    target: RevisionRecord,
    wanted: Mapping[str, int],
    replicas: Sequence[ReplicaRecord],
    state: Mapping[str, str],
    plans: Mapping[str, tuple[list[ReplicaRecord], list[ReplicaRecord]]],
    directives: Directives = NO_DIRECTIVES,
) -> list[Action]:
    actions: list[Action] = []
    kept: set[str] = set()
    for name, (own, carried) in plans.items():
        count = wanted[name]
        live = [r for r in own if state[r.id] in LIVE] + carried
        live.sort(key=lambda r: (state[r.id] != "ready", r.revision != target.number))
        for rep in live[:count]:
            kept.add(rep.id)
            if rep.revision != target.number:
                actions.append(Retag(rep.id, target.number))
    for rep in replicas:
        if rep.id in kept or rep.revision in directives.retain:
            continue
        if state[rep.id] not in ("stopping", "gone"):
            actions.append(Stop(rep.id))
    states: list[tuple[int, str, str]] = [(target.number, "active", "")]
    if endpoint.active_revision is not None:
        states.append((endpoint.active_revision, "retired", ""))
    status = "Updating" if directives.updating else "InService"
    actions.append(SetEndpoint(status, "", target.number, target.number, tuple(states)))
    return actions


def _fail_revision(
    endpoint: EndpointRecord,
    target: RevisionRecord,
    replicas: Sequence[ReplicaRecord],
    state: Mapping[str, str],
    failed: Sequence[ReplicaRecord],
    reasons: Mapping[str, str],
) -> list[Action]:
    """A revision that cannot come up: creation fails the endpoint; an update keeps the old one."""
    reason = _failure_summary(failed, reasons)
    # Failed replicas have exited already; their rows stay so `describe` can show their logs.
    actions: list[Action] = [
        Stop(r.id) for r in replicas if r.revision == target.number and state[r.id] in LIVE
    ]
    rev_state = ((target.number, "failed", reason),)
    if endpoint.active_revision is None:
        actions.append(SetEndpoint("Failed", reason, None, target.number, rev_state))
    else:
        message = (
            f"update to revision {target.number} failed ({reason}); "
            f"still serving revision {endpoint.active_revision}"
        )
        actions.append(
            SetEndpoint(
                "InService", message, endpoint.active_revision, endpoint.active_revision, rev_state
            )
        )
    return actions
