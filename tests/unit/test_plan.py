"""The endpoint plan, table by table: records and observations in, actions out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from modelyard.controlplane.reconcile.plan import (
    LOAD_ERROR_EXIT,
    Action,
    Activity,
    DeleteEndpoint,
    FailReplica,
    Forget,
    KillOverMemory,
    MarkExited,
    MarkReady,
    Observation,
    PlanSettings,
    Restart,
    Retag,
    SetEndpoint,
    Signal,
    StartNew,
    Stop,
    plan,
    variant_key,
)
from modelyard.controlplane.store.repo import EndpointRecord, ReplicaRecord, RevisionRecord

CFG = PlanSettings(
    drain_delay_s=1.5, stop_grace_s=30.0, restart_backoff_s=(1.0, 2.0, 5.0), max_start_attempts=3
)
MODEL_A = {"runtime": "sklearn", "artifact": "file:///models/a.joblib", "environment": {}}
MODEL_B = {"runtime": "sklearn", "artifact": "file:///models/b.joblib", "environment": {}}

RUNNING = Observation(exit_code=None, ready=False)
READY = Observation(exit_code=None, ready=True)


def exited(code: int) -> Observation:
    return Observation(exit_code=code, ready=False)


def variant(
    name: str = "v",
    model: str = "a",
    count: int = 2,
    weight: float = 1.0,
    timeout: int = 30,
) -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "instance_count": count,
        "weight": weight,
        "resources": {"cpus": None, "memory_mb": None},
        "startup_timeout_s": timeout,
    }


def revision(
    number: int,
    *variants: dict[str, Any],
    models: Mapping[str, Any] | None = None,
) -> RevisionRecord:
    variants = variants or (variant(),)
    return RevisionRecord(
        endpoint="e",
        number=number,
        spec={"type": "realtime", "variants": list(variants)},
        models=dict(models or {"a": MODEL_A, "b": MODEL_B}),
        state="pending",
        message="",
        created_at=0.0,
    )


def endpoint(
    target: int = 1,
    active: int | None = None,
    status: str | None = None,
    deleting: bool = False,
    message: str = "",
) -> EndpointRecord:
    if status is None:
        status = "Creating" if active is None else ("InService" if active == target else "Updating")
    return EndpointRecord(
        name="e",
        status=status,
        message=message,
        target_revision=target,
        active_revision=active,
        deleting=deleting,
        created_at=0.0,
        updated_at=0.0,
        last_request_at=None,
        webhook_secret="",
    )


def replica(rid: str, revision: int = 1, state: str = "ready", **values: Any) -> ReplicaRecord:
    fields: dict[str, Any] = {
        "id": rid,
        "endpoint": "e",
        "revision": revision,
        "variant": "v",
        "state": state,
        "pid": 100,
        "pid_started_at": 1.0,
        "address": f"mem://{rid}",
        "log_path": "",
        "attempts": 1,
        "restarts": 0,
        "ever_ready": state == "ready",
        "last_exit_code": None,
        "message": "",
        "started_at": 0.0,
        "ready_at": None,
        "next_start_at": None,
        "stop_requested_at": None,
        "signalled": 0,
    }
    fields.update(values)
    return ReplicaRecord(**fields)


def run(
    ep: EndpointRecord,
    revisions: Sequence[RevisionRecord],
    replicas: Sequence[ReplicaRecord] = (),
    observed: Mapping[str, Observation] | None = None,
    now: float = 10.0,
) -> list[Action]:
    if observed is None:  # by default every replica is seen as it is recorded
        observed = {
            r.id: (READY if r.state == "ready" else RUNNING)
            for r in replicas
            if r.state in ("starting", "ready", "stopping")
        }
    return plan(ep, {r.number: r for r in revisions}, replicas, observed, now, CFG)


def in_service(active: int, *states: tuple[int, str, str]) -> SetEndpoint:
    return SetEndpoint("InService", "", active, active, states)


# -- creation ----------------------------------------------------------------------------------


def test_new_endpoint_starts_one_replica_per_instance() -> None:
    rev = revision(1, variant("blue", count=2), variant("green", count=1))
    assert run(endpoint(), [rev]) == [
        StartNew(1, "blue"),
        StartNew(1, "blue"),
        StartNew(1, "green"),
    ]


def test_starting_replica_that_answers_ping_is_marked_ready() -> None:
    reps = [replica("r1", state="starting"), replica("r2", state="starting")]
    actions = run(endpoint(), [revision(1)], reps, {"r1": READY, "r2": RUNNING})
    assert actions == [MarkReady("r1")]


def test_all_replicas_ready_puts_the_endpoint_in_service_on_that_revision() -> None:
    reps = [replica("r1", state="starting"), replica("r2", state="starting")]
    actions = run(endpoint(), [revision(1)], reps, {"r1": READY, "r2": READY})
    assert actions == [MarkReady("r1"), MarkReady("r2"), in_service(1, (1, "active", ""))]


def test_steady_state_plans_nothing() -> None:
    reps = [replica("r1"), replica("r2")]
    assert run(endpoint(1, 1), [revision(1)], reps) == []


def test_missing_replica_of_a_served_revision_is_replaced() -> None:
    assert run(endpoint(1, 1), [revision(1)], [replica("r1")]) == [StartNew(1, "v")]


def test_a_status_out_of_date_is_corrected_to_in_service() -> None:
    reps = [replica("r1"), replica("r2")]
    actions = run(endpoint(1, 1, status="Updating", message="kept"), [revision(1)], reps)
    assert actions == [SetEndpoint("InService", "kept", 1, 1)]


# -- crashes and restarts ----------------------------------------------------------------------


def test_crashed_ready_replica_of_the_served_revision_is_restarted_after_backoff() -> None:
    reps = [replica("r1"), replica("r2")]
    actions = run(endpoint(1, 1), [revision(1)], reps, {"r1": exited(137), "r2": READY}, now=50)
    assert actions == [MarkExited("r1", 137, permanent=False, restart_at=51.0)]


@pytest.mark.parametrize(
    ("restarts", "backoff"), [(0, 1.0), (1, 2.0), (2, 5.0), (3, 5.0), (40, 5.0)]
)
def test_backoff_grows_with_restarts_and_stays_at_the_last_step(
    restarts: int, backoff: float
) -> None:
    reps = [replica("r1", restarts=restarts), replica("r2")]
    (action,) = run(endpoint(1, 1), [revision(1)], reps, {"r1": exited(1), "r2": READY}, now=100)
    assert action == MarkExited("r1", 1, False, 100 + backoff)


@pytest.mark.parametrize(("now", "restarts"), [(50.9, False), (51.0, True), (60.0, True)])
def test_crashed_replica_is_restarted_once_its_time_comes(now: float, restarts: bool) -> None:
    reps = [replica("r1", state="crashed", next_start_at=51.0, ever_ready=True), replica("r2")]
    actions = run(endpoint(1, 1), [revision(1)], reps, {"r2": READY}, now=now)
    assert actions == ([Restart("r1")] if restarts else [])


def test_served_replica_that_never_got_ready_is_still_restarted() -> None:
    # A served revision must keep its capacity, even through load errors and many attempts.
    reps = [replica("r1", state="starting", ever_ready=False, attempts=9), replica("r2")]
    obs = {"r1": exited(LOAD_ERROR_EXIT), "r2": READY}
    assert run(endpoint(1, 1), [revision(1)], reps, obs, now=5) == [
        MarkExited("r1", LOAD_ERROR_EXIT, False, 6.0)
    ]


def test_served_replica_past_its_startup_timeout_is_killed_not_failed() -> None:
    reps = [replica("r1", state="starting", started_at=0.0), replica("r2")]
    actions = run(endpoint(1, 1), [revision(1, variant(timeout=30))], reps, now=31)
    assert actions == [Signal("r1", "kill")]


# -- failures of a new revision ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "attempts", "permanent"),
    [
        (LOAD_ERROR_EXIT, 1, True),  # the model cannot load: no point retrying
        (1, 1, False),
        (1, 2, False),
        (1, 3, True),  # max_start_attempts reached
        (-9, 3, True),
    ],
)
def test_exit_before_ready_of_a_new_revision(code: int, attempts: int, permanent: bool) -> None:
    reps = [replica("r1", state="starting", attempts=attempts)]
    actions = run(endpoint(), [revision(1, variant(count=1))], reps, {"r1": exited(code)}, now=7)
    assert actions[0] == MarkExited("r1", code, permanent, None if permanent else 8.0)
    failed_endpoint = any(isinstance(a, SetEndpoint) and a.status == "Failed" for a in actions)
    assert failed_endpoint is permanent


def test_load_error_on_creation_fails_the_endpoint_with_the_reason() -> None:
    reps = [replica("r1", state="starting"), replica("r2", state="starting")]
    obs = {"r1": exited(LOAD_ERROR_EXIT), "r2": RUNNING}
    actions = run(endpoint(), [revision(1)], reps, obs)
    reason = "replica r1 of variant 'v' failed: exited with status 3 before it was ready"
    # the failed replica has exited already; its row stays so `describe` can show its logs
    assert actions == [
        MarkExited("r1", 3, True, None),
        Stop("r2"),
        SetEndpoint("Failed", reason, None, 1, ((1, "failed", reason),)),
    ]


def test_failure_reason_quotes_the_last_log_line() -> None:
    reps = [replica("r1", state="starting")]
    obs = {"r1": Observation(LOAD_ERROR_EXIT, False, "ModuleNotFoundError: No module 'xgb'")}
    actions = run(endpoint(), [revision(1, variant(count=1))], reps, obs)
    reason = (
        "replica r1 of variant 'v' failed: exited with status 3 before it was ready: "
        "ModuleNotFoundError: No module 'xgb'"
    )
    assert actions[-1] == SetEndpoint("Failed", reason, None, 1, ((1, "failed", reason),))


def test_startup_timeout_fails_the_replica_and_kills_it() -> None:
    reps = [replica("r1", state="starting", started_at=0.0)]
    rev = revision(1, variant(count=1, timeout=30))
    assert run(endpoint(), [rev], reps, now=30.0) == []  # not yet: strictly more than 30 s
    actions = run(endpoint(), [rev], reps, now=30.5)
    reason = "did not answer GET /ping within 30 s"
    summary = f"replica r1 of variant 'v' failed: {reason}"
    assert actions == [
        FailReplica("r1", reason),
        Signal("r1", "kill"),
        SetEndpoint("Failed", summary, None, 1, ((1, "failed", summary),)),
    ]


def test_failed_endpoint_is_not_retried_and_its_replicas_stop() -> None:
    reps = [
        replica("r1", state="failed"),
        replica("r2", state="stopping", stop_requested_at=9.0),
        replica("r3", state="starting"),
    ]
    obs = {"r2": exited(0), "r3": READY}
    actions = run(endpoint(status="Failed"), [revision(1)], reps, obs)
    assert actions == [Forget("r2"), Stop("r3")]  # the failed replica's row stays for `describe`
    assert run(endpoint(status="Failed"), [revision(1)], []) == []


def test_failing_update_keeps_serving_the_old_revision() -> None:
    revs = [revision(1), revision(2, variant(model="b"))]
    reps = [
        replica("old1"),
        replica("old2"),
        replica("new1", revision=2, state="starting"),
        replica("new2", revision=2, state="starting"),
    ]
    obs = {"old1": READY, "old2": READY, "new1": exited(LOAD_ERROR_EXIT), "new2": RUNNING}
    actions = run(endpoint(2, 1), revs, reps, obs)
    reason = "replica new1 of variant 'v' failed: exited with status 3 before it was ready"
    message = f"update to revision 2 failed ({reason}); still serving revision 1"
    assert actions == [
        MarkExited("new1", 3, True, None),
        Stop("new2"),
        SetEndpoint("InService", message, 1, 1, ((2, "failed", reason),)),
    ]


# -- updates -----------------------------------------------------------------------------------


def test_weight_only_update_carries_replicas_over() -> None:
    revs = [revision(1, variant(weight=1.0)), revision(2, variant(weight=5.0))]
    reps = [replica("r1"), replica("r2")]
    actions = run(endpoint(2, 1), revs, reps)
    assert actions == [
        Retag("r1", 2),
        Retag("r2", 2),
        in_service(2, (2, "active", ""), (1, "retired", "")),
    ]
    assert not any(isinstance(a, (StartNew, Stop)) for a in actions)


def test_variant_key_ignores_weight_and_count_but_not_model_or_resources() -> None:
    base = revision(1, variant(weight=1, count=1))
    assert variant_key(base, "v") == variant_key(revision(2, variant(weight=9, count=4)), "v")
    assert variant_key(base, "v") != variant_key(revision(2, variant(model="b")), "v")
    assert variant_key(base, "v") != variant_key(revision(2, variant(timeout=99)), "v")
    changed_model = revision(2, variant(), models={"a": {**MODEL_A, "artifact": "file:///x"}})
    assert variant_key(base, "v") != variant_key(changed_model, "v")
    assert variant_key(base, "nope") is None


def test_model_update_starts_new_replicas_and_stops_old_ones_only_after_promotion() -> None:
    revs = [revision(1), revision(2, variant(model="b"))]
    old = [replica("old1"), replica("old2")]
    ep = endpoint(2, 1)

    # 1: new replicas are started; the old ones keep serving
    assert run(ep, revs, old) == [StartNew(2, "v"), StartNew(2, "v")]

    # 2: one new replica is ready: still nothing stops
    new = [replica("new1", 2, "starting"), replica("new2", 2, "starting")]
    obs = {"old1": READY, "old2": READY, "new1": READY, "new2": RUNNING}
    assert run(ep, revs, old + new, obs) == [MarkReady("new1")]

    # 3: both ready: promotion stops the old replicas
    new = [replica("new1", 2, "ready"), replica("new2", 2, "starting")]
    obs = {"old1": READY, "old2": READY, "new1": READY, "new2": READY}
    assert run(ep, revs, old + new, obs) == [
        MarkReady("new2"),
        Stop("old1"),
        Stop("old2"),
        in_service(2, (2, "active", ""), (1, "retired", "")),
    ]


def test_update_marks_the_endpoint_updating_while_it_rolls_out() -> None:
    revs = [revision(1), revision(2, variant(model="b"))]
    actions = run(endpoint(2, 1, status="InService"), revs, [replica("o1"), replica("o2")])
    assert actions[-1] == SetEndpoint("Updating", "", 1, 2)


def test_scale_in_stops_extra_replicas_at_promotion() -> None:
    revs = [revision(1, variant(count=3)), revision(2, variant(count=1))]
    reps = [replica("r1"), replica("r2"), replica("r3")]
    actions = run(endpoint(2, 1), revs, reps)
    assert actions == [
        Retag("r1", 2),
        Stop("r2"),
        Stop("r3"),
        in_service(2, (2, "active", ""), (1, "retired", "")),
    ]


def test_scale_out_with_the_same_model_keeps_the_old_replicas() -> None:
    revs = [revision(1, variant(count=2)), revision(2, variant(count=3))]
    reps = [replica("r1"), replica("r2")]
    assert run(endpoint(2, 1), revs, reps) == [StartNew(2, "v")]
    reps.append(replica("r3", 2, "starting"))
    obs = {"r1": READY, "r2": READY, "r3": READY}
    assert run(endpoint(2, 1), revs, reps, obs) == [
        MarkReady("r3"),
        Retag("r1", 2),
        Retag("r2", 2),
        in_service(2, (2, "active", ""), (1, "retired", "")),
    ]


def test_scale_in_on_the_served_revision_stops_not_ready_replicas_first() -> None:
    rev = revision(1, variant(count=1))
    reps = [replica("r1"), replica("r2", state="starting")]
    assert run(endpoint(1, 1), [rev], reps) == [Stop("r2")]


def test_replicas_of_removed_variants_are_stopped() -> None:
    rev = revision(1, variant("v", count=1))
    reps = [replica("r1"), replica("gone", variant="old-variant")]
    assert run(endpoint(1, 1), [rev], reps) == [Stop("gone")]


def test_crashed_replicas_of_revisions_no_longer_wanted_are_forgotten() -> None:
    revs = [revision(1), revision(2), revision(3)]
    reps = [replica("r1", 3), replica("r2", 3), replica("stale", 1, "crashed")]
    assert run(endpoint(3, 3), revs, reps) == [Forget("stale")]


def test_crashed_served_replica_is_restarted_during_an_update() -> None:
    revs = [revision(1), revision(2, variant(model="b"))]
    reps = [
        replica("old1", state="crashed", next_start_at=5.0),
        replica("old2"),
        replica("new1", 2, "starting"),
        replica("new2", 2, "starting"),
    ]
    assert Restart("old1") in run(endpoint(2, 1), revs, reps, now=10)


# -- stopping and deleting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signalled", "now", "observation", "expected"),
    [
        (0, 100.0, RUNNING, []),  # draining: the gateway stops routing first
        (0, 101.5, RUNNING, [Signal("s", "term")]),
        (1, 105.0, RUNNING, []),  # grace period
        (1, 131.5, RUNNING, [Signal("s", "kill")]),
        (2, 500.0, RUNNING, []),  # killed: only waiting for the exit now
        (1, 102.0, exited(0), [Forget("s")]),
        (0, 100.0, exited(-9), [Forget("s")]),
    ],
)
def test_stopping_replica_is_drained_termed_killed_and_forgotten(
    signalled: int, now: float, observation: Observation, expected: list[Action]
) -> None:
    reps = [
        replica("r1", state="ready"),
        replica("s", state="stopping", stop_requested_at=100.0, signalled=signalled),
    ]
    rev = revision(1, variant(count=1))
    actions = run(endpoint(1, 1), [rev], reps, {"r1": READY, "s": observation}, now=now)
    assert actions == expected


def test_deleting_endpoint_stops_everything_then_deletes_itself() -> None:
    ep = endpoint(1, 1, status="Deleting", deleting=True)
    reps = [
        replica("r1"),
        replica("r2", state="crashed"),
        replica("s", state="stopping", stop_requested_at=0.0, signalled=1),
    ]
    actions = run(ep, [revision(1)], reps, {"r1": READY, "s": exited(0)}, now=1)
    assert actions == [Stop("r1"), Stop("r2"), Forget("s")]
    assert DeleteEndpoint() not in actions

    stopping = [replace(r, state="stopping", stop_requested_at=1.0) for r in reps[:2]]
    actions = run(ep, [revision(1)], stopping, {"r1": RUNNING, "r2": RUNNING}, now=2.5)
    assert actions == [Signal("r1", "term"), Signal("r2", "term")]

    assert run(ep, [revision(1)], []) == [DeleteEndpoint()]


def test_deleting_an_endpoint_that_never_served_still_deletes_it() -> None:
    ep = endpoint(1, None, status="Deleting", deleting=True)
    assert run(ep, [revision(1)], [replica("r1", state="starting")]) == [Stop("r1")]
    assert run(ep, [revision(1)], []) == [DeleteEndpoint()]


def test_weight_only_update_with_a_crashed_carried_replica_still_completes() -> None:
    revs = [revision(1, variant(weight=1.0)), revision(2, variant(weight=5.0))]
    reps = [replica("r1"), replica("r2", state="crashed", next_start_at=5.0)]
    actions = run(endpoint(2, 1), revs, reps, now=10)
    assert any(isinstance(a, (Restart, StartNew)) for a in actions), actions


# -- memory limit ------------------------------------------------------------------------------


def _limited(memory_mb: int | None) -> RevisionRecord:
    v = variant(count=1)
    v["resources"] = {"cpus": None, "memory_mb": memory_mb}
    return revision(1, v)


def test_replica_over_its_memory_limit_is_killed() -> None:
    rep = replica("r1")
    observed = {"r1": Observation(exit_code=None, ready=False, memory_mb=300.0)}
    actions = run(endpoint(1, 1), [_limited(256)], [rep], observed)
    assert actions == [KillOverMemory("r1", 300.0, 256)]


@pytest.mark.parametrize(("limit", "used"), [(256, 200.0), (None, 5000.0), (256, None)])
def test_replica_within_its_limit_or_without_one_is_left_alone(
    limit: int | None, used: float | None
) -> None:
    observed = {"r1": Observation(exit_code=None, ready=False, memory_mb=used)}
    assert run(endpoint(1, 1), [_limited(limit)], [replica("r1")], observed) == []


# -- serverless and async: scale to and from zero ------------------------------------------------


def typed_revision(kind: str, count: int = 1, **cfg: Any) -> RevisionRecord:
    rev = revision(1, variant(count=count))
    spec: dict[str, Any] = {**rev.spec, "type": kind}
    if kind == "serverless":
        spec["serverless"] = {
            "memory_mb": 1024,
            "max_concurrency": 20,
            "provisioned_concurrency": 0,
            "idle_timeout_s": 60,
            **cfg,
        }
    else:
        spec["async"] = {"idle_timeout_s": 60, **cfg}
    return replace(rev, spec=spec)


def run_with(
    rev: RevisionRecord,
    replicas: Sequence[ReplicaRecord],
    now: float,
    activity: Activity,
    ep: EndpointRecord | None = None,
) -> list[Action]:
    observed = {r.id: READY if r.state == "ready" else RUNNING for r in replicas}
    ep = ep or endpoint(active=1)
    return plan(ep, {1: rev}, replicas, observed, now, CFG, activity)


@pytest.mark.parametrize(
    ("last_request_at", "now", "stops"),
    [
        (None, 59.0, False),  # within the idle timeout of the endpoint's last change (t=0)
        (None, 61.0, True),  # idle since creation
        (100.0, 159.0, False),  # a request 59 s ago
        (100.0, 161.0, True),  # idle for the timeout: scale to zero
    ],
)
def test_serverless_scales_to_zero_after_its_idle_timeout(
    last_request_at: float | None, now: float, stops: bool
) -> None:
    rev = typed_revision("serverless")
    actions = run_with(rev, [replica("r1")], now, Activity(last_request_at))
    assert actions == ([Stop("r1")] if stops else [])


def test_serverless_at_zero_starts_a_replica_when_a_request_arrives() -> None:
    rev = typed_revision("serverless", count=2)
    assert run_with(rev, [], 500.0, Activity(499.9)) == [StartNew(1, "v"), StartNew(1, "v")]
    assert run_with(rev, [], 500.0, Activity(100.0)) == []  # idle: stays at zero


def test_serverless_keeps_its_provisioned_replicas_warm_when_idle() -> None:
    rev = typed_revision("serverless", count=1, provisioned_concurrency=2)
    assert run_with(rev, [], 500.0, Activity(None)) == [StartNew(1, "v"), StartNew(1, "v")]
    reps = [replica("r1"), replica("r2")]
    assert run_with(rev, reps, 500.0, Activity(None)) == []


def test_serverless_creation_starts_a_replica_to_prove_the_model_loads() -> None:
    rev = typed_revision("serverless")
    assert run_with(rev, [], 10.0, Activity(None), endpoint()) == [StartNew(1, "v")]


@pytest.mark.parametrize(
    ("backlog", "last_request_at", "now", "wanted"),
    [
        (3, None, 1000.0, 2),  # work queued: scale from zero to instance_count
        (0, 990.0, 1000.0, 2),  # queue empty for 10 s: still within the idle timeout
        (0, 900.0, 1000.0, 0),  # queue empty for 100 s: scale to zero
    ],
)
def test_async_scales_on_its_backlog(
    backlog: int, last_request_at: float | None, now: float, wanted: int
) -> None:
    rev = typed_revision("async", count=2)
    actions = run_with(rev, [], now, Activity(last_request_at, backlog))
    assert actions == [StartNew(1, "v")] * wanted


def test_serverless_memory_limit_is_its_memory_size() -> None:
    rev = typed_revision("serverless", memory_mb=1024)
    big = Observation(exit_code=None, ready=False, memory_mb=1500.0)
    actions = plan(
        endpoint(active=1), {1: rev}, [replica("r1")], {"r1": big}, 10.0, CFG, Activity(9.0)
    )
    assert actions == [KillOverMemory("r1", 1500.0, 1024)]


def test_deleted_async_endpoint_goes_only_once_its_accepted_requests_ended() -> None:
    rev = typed_revision("async")
    ep = endpoint(1, 1, status="Deleting", deleting=True)
    assert run_with(rev, [], 10.0, Activity(None, backlog=2), ep) == []
    assert run_with(rev, [], 10.0, Activity(None, backlog=0), ep) == [DeleteEndpoint()]


def test_busy_serverless_update_keeps_its_capacity() -> None:
    new = replace(typed_revision("serverless", count=3), number=2)
    old = typed_revision("serverless", count=3)
    ep = endpoint(2, 1)
    running = [replica(f"r{i}") for i in range(3)]
    actions = plan(
        ep, {1: old, 2: new}, running, {r.id: READY for r in running}, 100.0, CFG, Activity(99.0)
    )
    # The replicas carry over (same model): the new revision has its 3, and nothing stops.
    assert not [a for a in actions if isinstance(a, Stop | StartNew)]


def test_a_stopping_async_replica_may_finish_its_requests_before_it_is_killed() -> None:
    rev = typed_revision("async", invocation_timeout_s=600)
    ep = endpoint(1, 1, status="Deleting", deleting=True)
    stopping = replica("r1", state="stopping", stop_requested_at=0.0, signalled=1)
    # Past the usual 30 s grace but within the 600 s invocation timeout: not killed yet.
    assert run_with(rev, [stopping], 100.0, Activity(None), ep) == []
    killed = run_with(rev, [stopping], 1.5 + 605.0, Activity(None), ep)
    assert killed == [Signal("r1", "kill")]
    # A real-time replica keeps the usual grace.
    realtime = revision(1)
    actions = plan(ep, {1: realtime}, [stopping], {"r1": RUNNING}, 100.0, CFG)
    assert actions == [Signal("r1", "kill")]


# -- autoscaled capacity -----------------------------------------------------------------------


def test_an_autoscaled_variant_runs_its_capacity_instead_of_instance_count() -> None:
    rev = revision(1, variant("blue", count=2), variant("green", count=2))
    reps = [replica("r1", variant="blue"), replica("r2", variant="blue")]
    reps += [replica("g1", variant="green"), replica("g2", variant="green")]
    ep = endpoint(active=1)
    observed = {r.id: READY for r in reps}
    actions = plan(ep, {1: rev}, reps, observed, 10.0, CFG, Activity(), {"blue": 4, "green": 1})
    assert actions == [StartNew(1, "blue"), StartNew(1, "blue"), Stop("g1")]


@pytest.mark.parametrize(
    ("capacity", "backlog", "last_request_at", "wanted"),
    [
        (3, 5, None, 3),  # work queued: the autoscaled capacity
        (0, 5, None, 1),  # capacity 0 with work queued: still one replica
        (0, 0, 995.0, 0),  # capacity 0 and an empty queue: none, even before the idle timeout
        (2, 0, 900.0, 0),  # idle: to zero as before
    ],
)
def test_async_runs_its_autoscaled_capacity_while_it_has_work(
    capacity: int, backlog: int, last_request_at: float | None, wanted: int
) -> None:
    rev = typed_revision("async", count=1)
    ep = endpoint(active=1)
    activity = Activity(last_request_at, backlog)
    actions = plan(ep, {1: rev}, [], {}, 1000.0, CFG, activity, {"v": capacity})
    assert actions == [StartNew(1, "v")] * wanted
