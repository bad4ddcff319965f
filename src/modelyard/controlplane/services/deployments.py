"""Deployments as users see them: recorded with each new revision, refused while one runs,
shown by `rollout status` and `history`, aborted and resumed (the rollout itself is
controlplane/reconcile/rollout.py)."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from modelyard.controlplane.reconcile import rollout
from modelyard.controlplane.reconcile.plan import variant_key
from modelyard.controlplane.services.endpoints import traffic_split
from modelyard.controlplane.store.deployment_queries import DeploymentRecord
from modelyard.controlplane.store.repo import EndpointRecord, Repo, RevisionRecord, Store
from modelyard.errors import ConflictError, NotFoundError, RolloutInProgressError, SpecError
from modelyard.spec import dump_spec
from modelyard.spec.documents import spec_error_from
from modelyard.spec.resources import EndpointSpec

#: how many changes a deployment's summary lists
CHANGES_SHOWN = 12


def check_no_rollout(repo: Repo, name: str, doing: str = "update") -> None:
    """RolloutInProgressError (409, with the rollout's id) while one runs on ``name``."""
    dep = repo.active_deployment(name)
    if dep is None or dep.mode in ("create", "immediate"):
        return
    raise RolloutInProgressError(
        f"cannot {doing} endpoint {name!r}: rollout {dep.id} (revision {dep.from_revision} → "
        f"{dep.to_revision}) is in progress ({dep.phase}); wait for it to finish, or stop it "
        f"with `modelyard rollout abort {name}`",
        dep.id,
    )


def _production(spec: dict[str, Any]) -> list[str]:
    shadow = (spec.get("shadow") or {}).get("variant")
    return sorted(v["name"] for v in spec["variants"] if v["name"] != shadow)


def choose_mode(old: RevisionRecord | None, new: RevisionRecord) -> str:
    """create (no revision served yet), immediate (no replica is replaced: the same production
    variants run the same replicas), or the policy's blue_green / rolling."""
    if old is None:
        return "create"
    old_keys = {variant_key(old, v["name"]) for v in old.spec["variants"]}
    new_keys = {variant_key(new, v["name"]) for v in new.spec["variants"]}
    same_variants = _production(old.spec) == _production(new.spec)
    if new_keys <= old_keys and same_variants:
        return "immediate"
    return "rolling" if (new.spec.get("deployment") or {}).get("rolling") else "blue_green"


def changes(old: RevisionRecord | None, new: RevisionRecord) -> list[str]:
    """What a new revision changes, in short lines (for `history`)."""
    if old is None:
        return [f"created with variants {', '.join(v['name'] for v in new.spec['variants'])}"]
    out: list[str] = []
    before = {v["name"]: v for v in old.spec["variants"]}
    after = {v["name"]: v for v in new.spec["variants"]}
    for name in sorted(set(after) - set(before)):
        out.append(f"variant {name} added (model {after[name]['model']})")
    for name in sorted(set(before) - set(after)):
        out.append(f"variant {name} removed")
    for name in sorted(set(before) & set(after)):
        old_v, new_v = before[name], after[name]
        for key in sorted(set(old_v) | set(new_v)):
            if old_v.get(key) == new_v.get(key):
                continue
            if isinstance(new_v.get(key), int | float | str) and not isinstance(
                old_v.get(key), dict
            ):
                out.append(f"variant {name}: {key} {old_v.get(key)} → {new_v.get(key)}")
            else:
                out.append(f"variant {name}: {key} changed")
        model = new_v["model"]
        if old_v["model"] == model and old.models.get(model) != new.models.get(model):
            fields = sorted(
                k
                for k in set(old.models.get(model, {})) | set(new.models.get(model, {}))
                if old.models.get(model, {}).get(k) != new.models.get(model, {}).get(k)
            )
            out.append(f"model {model}: {', '.join(fields)} changed")
    for block in ("type", "serverless", "async", "deployment", "shadow"):
        if old.spec.get(block) != new.spec.get(block):
            out.append(f"{block} changed")
    out = list(dict.fromkeys(out))  # a model shared by two variants is named once
    if len(out) > CHANGES_SHOWN:
        out = [*out[:CHANGES_SHOWN], f"and {len(out) - CHANGES_SHOWN} more"]
    return out or ["no change (applied again)"]


def record(
    repo: Repo, endpoint: EndpointRecord, number: int, now: float, by: str, note: str = ""
) -> int:
    """Record the deployment of revision ``number`` (just added) of ``endpoint`` (as it was
    before); returns its id."""
    new = repo.get_revision(endpoint.name, number)
    assert new is not None
    served = endpoint.active_revision
    old = repo.get_revision(endpoint.name, served) if served is not None else None
    mode = choose_mode(old, new)
    # Deployments that never ran to the end (a failed creation retried) are closed first.
    previous = repo.active_deployment(endpoint.name)
    if previous is not None:
        repo.update_deployment_if(
            previous,
            now,
            f"superseded by revision {number}",
            status="Stopped",
            phase="",
            finished_at=now,
            reason=f"superseded by revision {number}",
        )
    what = changes(old, new)
    if note:
        what.insert(0, note)
    start = {
        "create": f"creating revision {number}",
        "immediate": f"revision {number} replaces no replica: served once ready",
        "blue_green": f"blue/green from revision {served} to {number}: starting the new fleet",
        "rolling": f"rolling update from revision {served} to {number}",
    }[mode]
    return repo.add_deployment(
        endpoint.name,
        from_revision=served if old is not None else None,
        to_revision=number,
        mode=mode,
        policy=new.spec.get("deployment") or {},
        by=by or "unknown",
        changes=what,
        now=now,
        message=start,
    )


# views -------------------------------------------------------------------------------------
def _step_state(dep: DeploymentRecord, i: int) -> str:
    """done, current or pending while it runs; once it ended without success, the step it
    was on is ``stopped`` and those after it ``skipped``."""
    ended = not dep.active and dep.status != "Succeeded"
    if i < dep.step or (i == dep.step and dep.status == "Succeeded"):
        return "done"
    if i == dep.step:
        if ended:
            return "stopped"
        return "done" if dep.phase == "terminating" else "current"
    return "skipped" if ended else "pending"


def _view(dep: DeploymentRecord, now: float) -> dict[str, Any]:
    policy = rollout.policy_of(dep)
    view: dict[str, Any] = {
        "id": dep.id,
        "endpoint": dep.endpoint,
        "from_revision": dep.from_revision,
        "to_revision": dep.to_revision,
        "mode": dep.mode,
        "status": dep.status,
        "phase": dep.phase,
        "by": dep.by,
        "changes": dep.changes,
        "started_at": dep.started_at,
        "finished_at": dep.finished_at,
        "duration_s": round((dep.finished_at or now) - dep.started_at, 3),
        "reason": dep.reason,
        "alarm": dep.alarm,
        "policy": dep.policy,
        "steps": [
            {"share": share, "state": _step_state(dep, i)} for i, share in enumerate(dep.steps)
        ],
        "step": dep.step,
        "log": dep.log,
    }
    if dep.active:
        wait = None
        if dep.phase in ("shifting", "baking"):
            wait = rollout.wait_s(policy)
        elif dep.phase == "terminating" and policy.blue_green is not None:
            wait = policy.blue_green.termination_wait_s
        if wait is not None and dep.step_started_at is not None:
            view["wait_s"] = wait
            view["wait_left_s"] = max(0.0, round(dep.step_started_at + wait - now, 1))
        limit = rollout.max_execution_s(policy)
        view["max_execution_left_s"] = max(0.0, round(dep.started_at + limit - now, 1))
    return view


def rollout_status(store: Store, name: str, now: float) -> dict[str, Any]:
    """The endpoint's running deployment (or its latest one), the traffic split now and the
    state of the alarms it watches."""
    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        deployments = repo.list_deployments(name, limit=1)
        dep = deployments[0] if deployments else None
        traffic = traffic_split(repo, endpoint, dep if dep is not None and dep.active else None)
        alarms = []
        policy = rollout.policy_of(dep) if dep is not None else None
        if policy is not None and policy.auto_rollback is not None:
            for alarm_name in policy.auto_rollback.alarms:
                alarm = repo.get_alarm(alarm_name)
                alarms.append(
                    {
                        "name": alarm_name,
                        "state": alarm.state if alarm else "deleted",
                        "reason": alarm.reason if alarm else "",
                    }
                )
    return {
        "endpoint": name,
        "status": endpoint.status,
        "active_revision": endpoint.active_revision,
        "target_revision": endpoint.target_revision,
        "rollout": _view(dep, now) if dep is not None else None,
        "traffic": traffic,
        "alarms": alarms,
    }


def history(store: Store, name: str, now: float, limit: int = 50) -> list[dict[str, Any]]:
    with store.tx() as repo:
        if repo.get_endpoint(name) is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        return [_view(d, now) for d in repo.list_deployments(name, limit)]


def abort(store: Store, name: str, by: str, now: float) -> dict[str, Any]:
    """Ask the controller to roll the running deployment back (it does at its next pass)."""
    for _ in range(5):  # the controller moved it on between the read and the write: again
        view = _abort_once(store, name, by, now)
        if view is not None:
            return view
    raise ConflictError(f"the rollout of endpoint {name!r} kept changing; try the abort again")


def _abort_once(store: Store, name: str, by: str, now: float) -> dict[str, Any] | None:
    with store.tx() as repo:
        if repo.get_endpoint(name) is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        dep = repo.active_deployment(name)
        if dep is None or dep.mode in ("create", "immediate"):
            raise ConflictError(f"endpoint {name!r} has no rollout in progress to abort")
        if dep.phase in rollout.ROLLING_BACK or dep.abort_by is not None:
            return _view(dep, now)
        if dep.phase == "terminating":
            raise ConflictError(
                f"rollout {dep.id} has moved all traffic and baked; only the old fleet's "
                f"termination wait is left. To go back, run `modelyard rollback {name} "
                f"--to-revision {dep.from_revision}` once it ends"
            )
        if not repo.update_deployment_if(dep, now, f"abort asked by {by}", abort_by=by or "?"):
            return None
        fresh = repo.get_deployment(dep.id)
    assert fresh is not None
    return _view(fresh, now)


def resume(store: Store, name: str, by: str, now: float) -> dict[str, Any]:
    """Deploy again the revision whose rollout was rolled back, aborted or failed (as a new
    revision with the same specs, through the deployment policy)."""
    from modelyard.controlplane.services.apply import new_revision

    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        check_no_rollout(repo, name, "resume a rollout on")
        last = next(
            (d for d in repo.list_deployments(name, limit=20) if d.mode not in ("immediate",)),
            None,
        )
        if last is None or last.status not in ("RolledBack", "Aborted", "Failed", "Stopped"):
            state = f"its last rollout {last.status}" if last else "it has no rollout"
            raise ConflictError(f"endpoint {name!r} has no rollout to resume ({state})")
        old = repo.get_revision(name, last.to_revision)
        assert old is not None
        number = new_revision(repo, endpoint, old.spec, old.models, now)
        repo.add_event(name, f"resuming rollout {last.id} as revision {number}", now)
        dep_id = record(repo, endpoint, number, now, by, f"resumes rollout {last.id}")
        dep = repo.get_deployment(dep_id)
    assert dep is not None
    return _view(dep, now)


def update_weights_and_capacities(
    store: Store, name: str, changes_: list[dict[str, Any]], by: str, now: float
) -> dict[str, Any]:
    """Set variants' weights and instance counts without replacing a replica (SageMaker's
    UpdateEndpointWeightsAndCapacities): a new revision that differs only in those, served as
    soon as its replicas are ready (no deployment policy: nothing is replaced)."""
    from modelyard.controlplane.services.apply import new_revision

    if not changes_:
        raise SpecError("name at least one variant to change", "variants")
    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        if endpoint.deleting:
            raise ConflictError(f"endpoint {name!r} is being deleted")
        check_no_rollout(repo, name, "change the weights of")
        if endpoint.active_revision is None or endpoint.status != "InService":
            raise ConflictError(
                f"endpoint {name!r} is {endpoint.status}; weights and capacities change only "
                "while it is InService"
            )
        current = repo.get_revision(name, endpoint.target_revision)
        assert current is not None
        spec = copy.deepcopy(current.spec)
        by_name = {v["name"]: v for v in spec["variants"]}
        for i, change in enumerate(changes_):
            field = f"variants[{i}]"
            variant = by_name.get(str(change.get("name")))
            if variant is None:
                known = ", ".join(by_name)
                raise SpecError(
                    f"no variant named {change.get('name')!r} (variants: {known})", f"{field}.name"
                )
            unknown = set(change) - {"name", "weight", "instance_count"}
            if unknown:
                raise SpecError(
                    f"only weight and instance_count can change here, not {sorted(unknown)}",
                    field,
                )
            if "instance_count" in change and variant.get("autoscaling"):
                raise SpecError(
                    f"variant {variant['name']!r} is autoscaled: change its autoscaling min and "
                    "max instead",
                    f"{field}.instance_count",
                )
            if "weight" in change:
                weight = change["weight"]
                if isinstance(weight, bool) or not isinstance(weight, int | float):
                    raise SpecError("must be a number", f"{field}.weight")
                if not 0 <= weight < float("inf"):
                    raise SpecError("must be 0 or more", f"{field}.weight")
                variant["weight"] = float(weight)
            if "instance_count" in change:
                count = change["instance_count"]
                if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
                    raise SpecError("must be a whole number, 1 to 64", f"{field}.instance_count")
                variant["instance_count"] = count
        try:
            checked = EndpointSpec.model_validate(spec)
        except ValidationError as exc:
            raise spec_error_from(exc, "spec") from exc
        spec = dump_spec(checked)
        if spec == current.spec:
            return {"endpoint": name, "revision": current.number, "action": "unchanged"}
        number = new_revision(repo, endpoint, spec, current.models, now)
        repo.add_event(name, f"weights and capacities changed; revision {number}", now)
        dep_id = record(repo, endpoint, number, now, by, "weights and capacities")
    return {"endpoint": name, "revision": number, "action": "updated", "rollout": dep_id}
