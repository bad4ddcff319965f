"""Deployments: how a new revision takes over from the one served (pure, table-tested).

A deployment is recorded with each new revision (services/apply.py) and moved on by the endpoint
controller once a tick: :func:`directives` says what the endpoint plan must do for the phase the
deployment is in, and :func:`advance` what the deployment does next, from what the tick found.
Nothing here does I/O or reads the clock; everything a deployment needs to go on is in its row,
so a control plane that restarts picks it up where it was (baking timers are wall-clock times).

Modes (chosen at apply time):

- ``create``: the endpoint's first revision; it ends when the revision is served.
- ``immediate``: nothing is replaced (the same replicas serve, weights or counts change): served
  as soon as ready, like ``create``.
- ``blue_green``: the whole new fleet (green) starts beside the old one (blue) and takes no
  traffic until every replica is ready. Traffic then moves in the policy's steps (canary: the
  canary share, then the rest; linear: equal steps; all at once: one step), each followed by
  ``wait_s`` of baking. At 100 % the new revision is promoted (it is what the endpoint serves),
  bakes once more with blue still running, and blue is kept ``termination_wait_s`` more before it
  is drained. Phases: provisioning → shifting (steps below 100 %) → promoting → baking →
  terminating.
- ``rolling``: capacity is replaced in batches of ``max_batch``: a batch of green replicas
  starts; once ready, as many blue ones are drained, and the batch bakes. Traffic follows the
  ready replicas (the gateway splits it in proportion). Phases: launching ⇄ baking → promoting.

Any watched alarm in ALARM (``auto_rollback``), an abort, or ``max_execution_s`` passing rolls
the deployment back: blue/green moves all traffic back to blue at once (before or after the
promotion: blue still runs); rolling restores blue in batches of ``rollback_max_batch``
(``rolling_back``/``aborting``). A new revision whose replicas never become ready fails the
deployment before any traffic moves (the endpoint plan's own rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from modelyard.controlplane.autoscale.autoscaler import planned_capacities
from modelyard.controlplane.reconcile.plan import Directives, variant_key
from modelyard.controlplane.store.autoscale_queries import CapacityRecord
from modelyard.controlplane.store.deployment_queries import DeploymentRecord
from modelyard.controlplane.store.repo import EndpointRecord, RevisionRecord
from modelyard.spec.deployment import DeploymentSpec

#: phases in which the watched alarms roll the deployment back
WATCHED = ("provisioning", "shifting", "promoting", "baking", "launching")
#: rolling back in batches, by why: the status it ends in
ROLLING_BACK = {"rolling_back": "RolledBack", "aborting": "Aborted", "failing": "Failed"}


@dataclass(frozen=True, slots=True)
class Sizes:
    """Replicas of the fleets a deployment moves between, per variant: ``green``, the new
    revision's variants that need new replicas; ``blue``, the old revision's variants whose
    replicas are replaced (variants that run the same replicas in both are in neither)."""

    green: Mapping[str, int] = field(default_factory=dict)
    blue: Mapping[str, int] = field(default_factory=dict)

    @property
    def green_total(self) -> int:
        return sum(self.green.values())

    @property
    def blue_total(self) -> int:
        return sum(self.blue.values())


def fleet_sizes(
    dep: DeploymentRecord,
    revisions: Mapping[int, RevisionRecord],
    capacities: Mapping[str, CapacityRecord],
) -> Sizes:
    """The :class:`Sizes` of ``dep``'s fleets (their capacities: autoscaled, or instance_count)."""
    green = revisions.get(dep.to_revision)
    blue = revisions.get(dep.from_revision) if dep.from_revision is not None else None
    if green is None or blue is None:
        return Sizes()

    def counts(rev: RevisionRecord, other: RevisionRecord) -> dict[str, int]:
        planned = planned_capacities(rev.spec, capacities)
        shared = {variant_key(other, v["name"]) for v in other.spec["variants"]}
        return {
            v["name"]: planned.get(v["name"], int(v["instance_count"]))
            for v in rev.spec["variants"]
            if variant_key(rev, v["name"]) not in shared
        }

    return Sizes(green=counts(green, blue), blue=counts(blue, green))


@dataclass(frozen=True, slots=True)
class Facts:
    """What a tick found, after the endpoint plan's actions were applied."""

    now: float
    endpoint: EndpointRecord
    #: the plan's target fleet has what it wants, ready (FleetReady)
    fleet_ready: bool
    #: the new revision's state and message (``failed`` once its replicas could not start)
    revision_state: tuple[str, str]
    #: watched alarms: name → (state, reason); a deleted alarm is absent
    alarms: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: a replica of the new revision that failed for good (why), while a rolling update runs
    failed: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    """The deployment's next state: ``values`` for its row, a ``note`` for its log, and what
    changes on the endpoint (``endpoint``: fields of the endpoint row; ``revisions``: (number,
    state, message) of revisions)."""

    values: dict[str, Any]
    note: str
    endpoint: dict[str, Any] = field(default_factory=dict)
    revisions: tuple[tuple[int, str, str], ...] = ()


def policy_of(dep: DeploymentRecord) -> DeploymentSpec:
    return DeploymentSpec.model_validate(dep.policy or {})


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


# what the plan does ------------------------------------------------------------------------------
def directives(dep: DeploymentRecord, sizes: Sizes) -> Directives:
    """What the endpoint plan does this tick for ``dep``'s phase."""
    if not dep.active or dep.mode in ("create", "immediate"):
        return Directives()
    blue = dep.from_revision
    retain = frozenset({blue}) if blue is not None else frozenset()
    if dep.mode == "blue_green":
        bg = policy_of(dep).blue_green
        at_once = bg is None or bg.traffic.type == "all_at_once"
        hold = dep.phase == "shifting" or (dep.phase == "provisioning" and not at_once)
        # Blue serves until the promotion, and runs until the deployment ends (while green
        # bakes, for the termination wait): a rollback decided in the very tick that promoted
        # green still finds it. An abort asked is carried out before anything is promoted.
        return Directives(
            hold_promotion=hold or dep.abort_by is not None,
            updating=True,
            retain=retain,
            report_ready=True,
        )
    # rolling
    if dep.phase in ROLLING_BACK:
        restore = _restore_to(dep)
        return Directives(
            updating=True,
            rolling_back=True,
            fail_revision=False,
            report_ready=True,
            target_counts={v: replicas(restore, n) for v, n in sizes.blue.items()},
            keep_others={
                (dep.to_revision, v): n - replicas(dep.restored, n) for v, n in sizes.green.items()
            },
        )
    if dep.phase == "promoting":
        return Directives(
            updating=True,
            report_ready=True,
            fail_revision=False,
            keep_others=_blue_keep(dep, 1.0, sizes),
        )
    launched = _rolling_fraction(dep, dep.step)
    retired = launched if dep.phase == "baking" else _rolling_fraction(dep, dep.step - 1)
    return Directives(
        hold_promotion=True,
        updating=True,
        report_ready=True,
        fail_revision=False,  # a replica that fails rolls the update back, in batches
        target_counts={v: replicas(launched, n) for v, n in sizes.green.items()},
        keep_others=_blue_keep(dep, retired, sizes),
    )


def _blue_keep(dep: DeploymentRecord, retired: float, sizes: Sizes) -> dict[tuple[int, str], int]:
    assert dep.from_revision is not None
    return {(dep.from_revision, v): n - replicas(retired, n) for v, n in sizes.blue.items()}


def _rolling_fraction(dep: DeploymentRecord, step: int) -> float:
    """The share of the fleet replaced once batch ``step`` (0-based) is in."""
    if step < 0 or not dep.steps:
        return 0.0
    return dep.steps[min(step, len(dep.steps) - 1)]


def _restore_to(dep: DeploymentRecord) -> float:
    """Rolling back: the share of the old fleet wanted back once the current batch is in."""
    return min(1.0, dep.restored + dep.rollback_batch)


# what the deployment does next -------------------------------------------------------------------
def advance(dep: DeploymentRecord, facts: Facts, sizes: Sizes) -> Transition | None:
    """The deployment's next state after a tick, or None while it waits: every step it can
    take now, in one (an all-at-once deployment without waits ends in the tick that promotes)."""
    merged: Transition | None = None
    for _ in range(8):
        step = _advance_once(dep, facts, sizes)
        if step is None:
            break
        if merged is None:
            merged = step
        else:
            merged = Transition(
                {**merged.values, **step.values},
                f"{merged.note}; {step.note}",
                {**merged.endpoint, **step.endpoint},
                merged.revisions + step.revisions,
            )
        dep = replace(dep, **step.values)
        # The fleet's readiness was judged for the phase just left: the next phase's is for
        # the next plan to judge.
        facts = replace(facts, fleet_ready=False)
        if step.endpoint:
            facts = replace(facts, endpoint=replace(facts.endpoint, **step.endpoint))
    return merged


def _advance_once(dep: DeploymentRecord, facts: Facts, sizes: Sizes) -> Transition | None:
    if not dep.active:
        return None
    state, message = facts.revision_state
    if state == "failed":
        return _end(dep, facts, "Failed", f"revision {dep.to_revision} failed: {message}")
    if dep.mode in ("create", "immediate"):
        if facts.endpoint.active_revision == dep.to_revision:
            return _end(dep, facts, "Succeeded", f"revision {dep.to_revision} is served")
        return None
    if dep.phase in ROLLING_BACK:
        return _rolling_back(dep, facts, sizes)
    trigger = _rollback_trigger(dep, facts)
    if trigger is not None:
        status, reason, alarm = trigger
        return _roll_back(dep, facts, sizes, status, reason, alarm)
    if dep.mode == "blue_green":
        return _blue_green(dep, facts, sizes)
    return _rolling(dep, facts, sizes)


def _rollback_trigger(dep: DeploymentRecord, facts: Facts) -> tuple[str, str, str | None] | None:
    if dep.abort_by is not None:
        return "Aborted", f"aborted by {dep.abort_by}", None
    if facts.failed and dep.mode == "rolling":  # (blue/green: the revision fails first)
        return "Failed", facts.failed, None
    if dep.phase not in WATCHED:
        return None
    policy = policy_of(dep)
    if policy.auto_rollback is not None:
        for name in policy.auto_rollback.alarms:
            alarm_state, reason = facts.alarms.get(name, ("", ""))
            if alarm_state == "ALARM":
                return "RolledBack", f"alarm {name} is in ALARM: {reason}", name
    limit = max_execution_s(policy)
    if facts.now - dep.started_at > limit:
        return "RolledBack", f"not finished within max_execution_s ({limit} s)", None
    return None


def max_execution_s(policy: DeploymentSpec) -> int:
    """Seconds a deployment may take before it rolls back."""
    if policy.rolling is not None:
        return policy.rolling.max_execution_s
    return policy.blue_green.max_execution_s if policy.blue_green else 3600


def wait_s(policy: DeploymentSpec) -> int:
    """Seconds each step bakes."""
    if policy.rolling is not None:
        return policy.rolling.wait_s
    return policy.blue_green.traffic.wait_s if policy.blue_green else 0


def _baked(dep: DeploymentRecord, facts: Facts, seconds: float) -> bool:
    return dep.step_started_at is not None and facts.now - dep.step_started_at >= seconds


def _blue_green(dep: DeploymentRecord, facts: Facts, sizes: Sizes) -> Transition | None:
    policy = policy_of(dep)
    bg = policy.blue_green
    bake_s = wait_s(policy)
    now = facts.now
    if dep.phase == "provisioning":
        if facts.endpoint.active_revision == dep.to_revision:  # all at once: promoted when ready
            return Transition(
                {
                    "steps": [1.0],
                    "step": 0,
                    "share": 1.0,
                    "phase": "baking",
                    "step_started_at": now,
                },
                f"new fleet ready; revision {dep.to_revision} serves all traffic"
                + (f"; baking {bake_s} s" if bake_s else ""),
            )
        if not facts.fleet_ready:
            return None
        traffic_steps = bg.traffic.steps(max(1, sizes.green_total)) if bg else [1.0]
        first = traffic_steps[0]
        return Transition(
            {
                "steps": traffic_steps,
                "step": 0,
                "share": first if first < 1.0 else 0.0,
                "phase": "shifting" if first < 1.0 else "promoting",
                "step_started_at": now,
            },
            f"new fleet ready; step 1 of {len(traffic_steps)}: {_pct(first)} of traffic "
            f"to revision {dep.to_revision}",
        )
    if dep.phase == "shifting":
        if not _baked(dep, facts, bake_s):
            return None
        step = dep.step + 1
        share = dep.steps[step]
        return Transition(
            {
                "step": step,
                "share": share if share < 1.0 else dep.share,
                "phase": "shifting" if share < 1.0 else "promoting",
                "step_started_at": now,
            },
            f"step {step + 1} of {len(dep.steps)}: {_pct(share)} of traffic "
            f"to revision {dep.to_revision}",
        )
    if dep.phase == "promoting":
        if facts.endpoint.active_revision != dep.to_revision:
            return None  # the plan promotes once the fleet is ready
        return Transition(
            {"phase": "baking", "share": 1.0, "step_started_at": now},
            f"revision {dep.to_revision} serves all traffic; baking {bake_s} s"
            + (f" (revision {dep.from_revision} kept)" if dep.from_revision else ""),
        )
    if dep.phase == "baking":
        if not _baked(dep, facts, bake_s):
            return None
        wait = bg.termination_wait_s if bg else 0
        if wait <= 0:
            return _end(dep, facts, "Succeeded", "baked; the old fleet is drained")
        return Transition(
            {"phase": "terminating", "step_started_at": now},
            f"baked; revision {dep.from_revision} is drained in {wait} s",
        )
    if dep.phase == "terminating" and _baked(dep, facts, bg.termination_wait_s if bg else 0):
        return _end(dep, facts, "Succeeded", "the old fleet is drained")
    return None


def _rolling(dep: DeploymentRecord, facts: Facts, sizes: Sizes) -> Transition | None:
    policy = policy_of(dep)
    rolling = policy.rolling
    assert rolling is not None
    now = facts.now
    if dep.phase == "provisioning":  # the batches are fixed once, from the fleet's size
        total = max(1, sizes.green_total)
        size = rolling.max_batch
        batch = size.value if size.type == "instance_count" else math.ceil(size.value * total / 100)
        batch = max(1, min(total, batch))  # whole replicas: every batch replaces some
        steps = [min(total, batch * (i + 1)) / total for i in range(math.ceil(total / batch))]
        return Transition(
            {"steps": steps, "step": 0, "phase": "launching", "step_started_at": now},
            f"batch 1 of {len(steps)}: starting {_count(steps[0], sizes.green)} replica(s) "
            f"of revision {dep.to_revision}",
        )
    if dep.phase == "launching":
        if not facts.fleet_ready:
            return None
        done, before = _rolling_fraction(dep, dep.step), _rolling_fraction(dep, dep.step - 1)
        drained = _count(done, sizes.blue) - _count(before, sizes.blue)
        return Transition(
            {"phase": "baking", "step_started_at": now},
            f"batch {dep.step + 1} of {len(dep.steps)} ready; "
            f"{drained} replica(s) of revision {dep.from_revision} drained; "
            f"baking {rolling.wait_s} s",
        )
    if dep.phase == "baking":
        if not _baked(dep, facts, rolling.wait_s):
            return None
        if dep.step + 1 >= len(dep.steps):
            return Transition(
                {"phase": "promoting", "step_started_at": now},
                f"every batch is in; revision {dep.to_revision} is promoted",
            )
        step = dep.step + 1
        more = _count(dep.steps[step], sizes.green) - _count(dep.steps[step - 1], sizes.green)
        return Transition(
            {"step": step, "phase": "launching", "step_started_at": now},
            f"batch {step + 1} of {len(dep.steps)}: starting {more} more replica(s) of "
            f"revision {dep.to_revision}",
        )
    if dep.phase == "promoting" and facts.endpoint.active_revision == dep.to_revision:
        return _end(dep, facts, "Succeeded", f"revision {dep.to_revision} serves all traffic")
    return None


def _count(share: float, sizes: Mapping[str, int]) -> int:
    return sum(replicas(share, n) for n in sizes.values())


def replicas(share: float, count: int) -> int:
    """The replicas a share of a fleet of ``count`` is (rounded up; a share computed as
    k / count gives k back exactly)."""
    return max(0, min(count, math.ceil(share * count - 1e-6)))


def _end(dep: DeploymentRecord, facts: Facts, status: str, note: str) -> Transition:
    endpoint: dict[str, Any] = {}
    if status in ("Succeeded", "RolledBack", "Aborted") and facts.endpoint.status in (
        "Updating",
        "RollingBack",
    ):
        message = "" if status == "Succeeded" else f"rollout {dep.id} {_ended(status)}: {note}"
        endpoint = {"status": "InService", "message": message}
    values: dict[str, Any] = {"status": status, "phase": "", "finished_at": facts.now}
    if status == "Succeeded":
        values["share"] = 1.0
    else:
        values["reason"] = note
    return Transition(values, f"{_ended(status)}: {note}", endpoint)


def _ended(status: str) -> str:
    return {
        "Succeeded": "succeeded",
        "RolledBack": "rolled back",
        "Aborted": "aborted",
        "Failed": "failed",
    }.get(status, status.lower())


def _roll_back(
    dep: DeploymentRecord,
    facts: Facts,
    sizes: Sizes,
    status: str,
    reason: str,
    alarm: str | None,
) -> Transition:
    """Send everything back to the old revision (blue/green: at once; rolling: in batches)."""
    blue = dep.from_revision
    state = "failed" if status == "Failed" else "rolled_back"
    revisions: tuple[tuple[int, str, str], ...] = ((dep.to_revision, state, reason),)
    if blue is None:  # nothing to go back to (a first revision has no deployment policy)
        return _end(dep, facts, "Failed", reason)
    endpoint: dict[str, Any] = {"target_revision": blue}
    if dep.mode == "rolling":
        policy = policy_of(dep).rolling
        assert policy is not None
        retired = _rolling_fraction(dep, dep.step if dep.phase != "launching" else dep.step - 1)
        batch = policy.rollback_max_batch
        share = batch.fraction(max(1, sizes.blue_total)) if batch is not None else 1.0
        if facts.endpoint.active_revision == dep.to_revision:  # promoted already: swap back
            endpoint["active_revision"] = blue
            revisions += ((blue, "active", ""),)
        endpoint["status"] = "RollingBack"
        phase = {"Aborted": "aborting", "Failed": "failing"}.get(status, "rolling_back")
        return Transition(
            {
                "phase": phase,
                "restored": 1.0 - retired,
                "rollback_batch": share,
                "reason": reason,
                "alarm": alarm,
                "step_started_at": facts.now,
            },
            f"rolling back: {reason}",
            endpoint,
            revisions,
        )
    endpoint["active_revision"] = blue
    if facts.endpoint.active_revision == dep.to_revision:
        revisions += ((blue, "active", ""),)
    done = _end(dep, facts, status, reason)
    done.values.update({"share": 0.0, "alarm": alarm})
    endpoint.update({"status": "InService", "message": done.endpoint.get("message", "")})
    if not endpoint["message"]:
        endpoint["message"] = f"rollout {dep.id} {_ended(status)}: {reason}"
    return Transition(done.values, done.note, endpoint, revisions)


def _rolling_back(dep: DeploymentRecord, facts: Facts, sizes: Sizes) -> Transition | None:
    """Rolling back in batches: each batch of old replicas ready drains as many new ones. A
    rollback that cannot bring the old fleet back within ``max_execution_s`` ends Failed (the
    endpoint then runs the old revision as any endpoint does: restarting what fails)."""
    status = ROLLING_BACK[dep.phase]
    limit = max_execution_s(policy_of(dep))
    if dep.step_started_at is not None and facts.now - dep.step_started_at > limit:
        reason = f"{dep.reason}; revision {dep.from_revision} not restored within {limit} s"
        end = _end(dep, facts, "Failed", reason)
        end.endpoint.update(
            {"status": "InService", "message": f"rollout {dep.id} failed: {reason}"}
        )
        return end
    if not facts.fleet_ready:
        return None
    restored = _restore_to(dep)
    if restored >= 1.0 - 1e-9:
        end = _end(dep, facts, status, dep.reason)
        end.values.update({"restored": 1.0, "reason": dep.reason})
        message = f"rollout {dep.id} {_ended(status)}: {dep.reason}"
        end.endpoint.update({"status": "InService", "message": message})
        return end
    return Transition(
        {"restored": restored},
        f"rolling back: {_pct(restored)} of revision {dep.from_revision} restored",
    )
