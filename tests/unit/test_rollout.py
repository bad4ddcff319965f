"""The deployment state machine (controlplane/reconcile/rollout.py), step by step on a fake clock:
what each phase asks of the endpoint plan, and where each fact moves it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from modelyard.controlplane.reconcile import rollout
from modelyard.controlplane.reconcile.plan import Directives
from modelyard.controlplane.reconcile.rollout import Facts, Sizes, advance, directives
from modelyard.controlplane.store.deployment_queries import DeploymentRecord
from modelyard.controlplane.store.repo import EndpointRecord
from modelyard.spec.deployment import SizeSpec, TrafficSpec

T0 = 1_000_000.0


def deployment(policy: dict[str, Any], mode: str = "blue_green", **values: Any) -> DeploymentRecord:
    base = DeploymentRecord(
        id=7,
        endpoint="e",
        from_revision=1,
        to_revision=2,
        mode=mode,
        policy=policy,
        status="InProgress",
        phase="provisioning",
        steps=[],
        step=-1,
        share=0.0,
        step_started_at=None,
        restored=0.0,
        rollback_batch=1.0,
        started_at=T0,
        finished_at=None,
        updated_at=T0,
        by="ada",
        changes=[],
        reason="",
        alarm=None,
        abort_by=None,
        log=[],
    )
    return replace(base, **values)


def endpoint(active: int | None = 1, target: int = 2, status: str = "Updating") -> EndpointRecord:
    return EndpointRecord(
        name="e",
        status=status,
        message="",
        target_revision=target,
        active_revision=active,
        deleting=False,
        created_at=T0,
        updated_at=T0,
        last_request_at=None,
        webhook_secret="",
    )


def facts(
    now: float = T0,
    active: int | None = 1,
    ready: bool = False,
    revision: tuple[str, str] = ("pending", ""),
    alarms: dict[str, tuple[str, str]] | None = None,
    failed: str = "",
) -> Facts:
    return Facts(now, endpoint(active), ready, revision, alarms or {}, failed)


def moved(dep: DeploymentRecord, step: rollout.Transition | None) -> DeploymentRecord:
    assert step is not None
    return replace(dep, **step.values)


CANARY = {
    "blue_green": {
        "traffic": {
            "type": "canary",
            "wait_s": 60,
            "canary_size": {"type": "capacity_percent", "value": 10},
        },
        "termination_wait_s": 30,
    },
    "auto_rollback": {"alarms": ["latency"]},
}
SIZES = Sizes(green={"green": 4}, blue={"blue": 4})


# traffic steps -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("traffic", "capacity", "steps"),
    [
        ({"type": "all_at_once"}, 3, [1.0]),
        ({"type": "canary", "canary_size": {"type": "capacity_percent", "value": 10}}, 3, [0.1, 1]),
        ({"type": "canary", "canary_size": {"type": "instance_count", "value": 1}}, 4, [0.25, 1]),
        # an instance-count canary never takes more than half
        ({"type": "canary", "canary_size": {"type": "instance_count", "value": 3}}, 4, [0.5, 1]),
        (
            {"type": "linear", "linear_step_size": {"type": "capacity_percent", "value": 25}},
            4,
            [0.25, 0.5, 0.75, 1.0],
        ),
        (
            {"type": "linear", "linear_step_size": {"type": "capacity_percent", "value": 40}},
            4,
            [0.4, 0.8, 1.0],
        ),
        (
            {"type": "linear", "linear_step_size": {"type": "instance_count", "value": 1}},
            5,
            [0.2, 0.4, 0.6, 0.8, 1.0],
        ),
    ],
)
def test_traffic_steps(traffic: dict[str, Any], capacity: int, steps: list[float]) -> None:
    assert TrafficSpec.model_validate(traffic).steps(capacity) == pytest.approx(steps)


def test_a_size_is_a_share_of_the_fleet() -> None:
    assert SizeSpec(type="capacity_percent", value=30).fraction(10) == 0.3
    assert SizeSpec(type="instance_count", value=3).fraction(10) == 0.3
    assert SizeSpec(type="instance_count", value=30).fraction(10) == 1.0


# blue/green ------------------------------------------------------------------------------------
def test_a_canary_waits_for_the_whole_new_fleet_then_bakes_each_step() -> None:
    dep = deployment(CANARY)
    # Provisioning: the plan holds the promotion and keeps blue; nothing moves until ready.
    assert directives(dep, SIZES).hold_promotion
    assert advance(dep, facts(), SIZES) is None

    step = advance(dep, facts(now=T0 + 5, ready=True), SIZES)
    dep = moved(dep, step)
    assert (dep.phase, dep.step, dep.share, dep.steps) == ("shifting", 0, 0.1, [0.1, 1.0])
    assert step is not None and "10 % of traffic to revision 2" in step.note
    assert directives(dep, SIZES).hold_promotion

    assert advance(dep, facts(now=T0 + 64, ready=True), SIZES) is None  # baking 60 s
    dep = moved(dep, advance(dep, facts(now=T0 + 65, ready=True), SIZES))
    assert (dep.phase, dep.step, dep.share) == ("promoting", 1, 0.1)  # traffic stays until then
    d = directives(dep, SIZES)
    assert not d.hold_promotion and d.retain == frozenset({1}) and d.updating

    assert advance(dep, facts(now=T0 + 66, ready=True), SIZES) is None  # not promoted yet
    dep = moved(dep, advance(dep, facts(now=T0 + 66, active=2), SIZES))
    assert (dep.phase, dep.share) == ("baking", 1.0)
    assert directives(dep, SIZES).retain == frozenset({1})  # blue kept while green bakes

    dep = moved(dep, advance(dep, facts(now=T0 + 126, active=2), SIZES))
    assert dep.phase == "terminating"
    assert advance(dep, facts(now=T0 + 155, active=2), SIZES) is None
    end = advance(dep, facts(now=T0 + 156, active=2), SIZES)
    assert end is not None and end.values["status"] == "Succeeded"
    assert end.endpoint == {"status": "InService", "message": ""}
    assert directives(moved(dep, end), SIZES).retain == frozenset()  # then blue is drained


def test_all_at_once_without_waits_ends_in_the_tick_that_promotes() -> None:
    dep = deployment({})
    d = directives(dep, SIZES)
    # promoted as soon as ready; blue kept until the deployment ends (in that same tick)
    assert not d.hold_promotion and d.retain == frozenset({1})
    step = advance(dep, facts(active=2, ready=True), SIZES)
    assert step is not None and step.values["status"] == "Succeeded"
    assert step.values["steps"] == [1.0]


def test_all_at_once_with_a_bake_keeps_blue_until_it_is_over() -> None:
    dep = deployment({"blue_green": {"traffic": {"wait_s": 30}}})
    assert directives(dep, SIZES).retain == frozenset({1})
    dep = moved(dep, advance(dep, facts(active=2, ready=True), SIZES))
    assert dep.phase == "baking"
    assert advance(dep, facts(now=T0 + 29, active=2), SIZES) is None
    end = advance(dep, facts(now=T0 + 30, active=2), SIZES)
    assert end is not None and end.values["status"] == "Succeeded"


@pytest.mark.parametrize("phase", ["provisioning", "shifting", "promoting"])
def test_an_alarm_before_the_promotion_sends_all_traffic_back(phase: str) -> None:
    dep = deployment(CANARY, phase=phase, steps=[0.1, 1.0], step=0, share=0.1)
    alarm = {"latency": ("ALARM", "p90 120 > 100")}
    step = advance(dep, facts(now=T0 + 10, alarms=alarm), SIZES)
    assert step is not None
    assert step.values["status"] == "RolledBack" and step.values["share"] == 0.0
    assert step.values["alarm"] == "latency"
    assert "alarm latency is in ALARM: p90 120 > 100" in step.values["reason"]
    assert step.endpoint["target_revision"] == 1 and step.endpoint["active_revision"] == 1
    assert step.endpoint["status"] == "InService" and "rolled back" in step.endpoint["message"]
    assert step.revisions == ((2, "rolled_back", step.values["reason"]),)


def test_an_alarm_while_the_promoted_revision_bakes_swaps_blue_back_in() -> None:
    dep = deployment(CANARY, phase="baking", steps=[0.1, 1.0], step=1, share=1.0)
    step = advance(dep, facts(now=T0 + 100, active=2, alarms={"latency": ("ALARM", "x")}), SIZES)
    assert step is not None and step.values["status"] == "RolledBack"
    assert step.endpoint["active_revision"] == 1 and step.endpoint["target_revision"] == 1
    assert (1, "active", "") in step.revisions


def test_alarms_ok_or_insufficient_or_deleted_do_not_roll_back() -> None:
    dep = deployment(CANARY, phase="shifting", steps=[0.1, 1.0], step=0, step_started_at=T0)
    for alarms in ({"latency": ("OK", "")}, {"latency": ("INSUFFICIENT_DATA", "")}, {}):
        assert advance(dep, facts(now=T0 + 1, alarms=alarms), SIZES) is None


def test_alarms_no_longer_matter_once_the_old_fleet_is_being_drained() -> None:
    dep = deployment(CANARY, phase="terminating", steps=[0.1, 1.0], step=1, step_started_at=T0)
    assert (
        advance(dep, facts(now=T0 + 1, active=2, alarms={"latency": ("ALARM", "")}), SIZES) is None
    )


def test_max_execution_rolls_back() -> None:
    policy = {"blue_green": {"traffic": {"wait_s": 10}, "max_execution_s": 600}}
    dep = deployment(policy)
    assert advance(dep, facts(now=T0 + 599), SIZES) is None
    step = advance(dep, facts(now=T0 + 601), SIZES)
    assert step is not None and step.values["status"] == "RolledBack"
    assert "max_execution_s (600 s)" in step.values["reason"]


def test_an_abort_ends_as_aborted() -> None:
    dep = deployment(CANARY, phase="shifting", steps=[0.1, 1.0], step=0, abort_by="ada")
    step = advance(dep, facts(now=T0 + 1), SIZES)
    assert step is not None and step.values["status"] == "Aborted"
    assert step.values["reason"] == "aborted by ada"


def test_a_revision_that_fails_fails_the_deployment() -> None:
    step = advance(deployment(CANARY), facts(revision=("failed", "exited with 3")), SIZES)
    assert step is not None and step.values["status"] == "Failed"
    assert "exited with 3" in step.values["reason"]
    assert step.endpoint == {}  # the plan already put the endpoint back on revision 1


@pytest.mark.parametrize("mode", ["create", "immediate"])
def test_creation_and_in_place_changes_end_when_served(mode: str) -> None:
    dep = deployment({}, mode=mode, from_revision=None if mode == "create" else 1)
    assert directives(dep, SIZES) == Directives()
    assert advance(dep, facts(active=1), SIZES) is None
    step = advance(dep, facts(active=2), SIZES)
    assert step is not None and step.values["status"] == "Succeeded"


# rolling ---------------------------------------------------------------------------------------
ROLLING = {
    "rolling": {
        "max_batch": {"type": "capacity_percent", "value": 25},
        "wait_s": 30,
        "rollback_max_batch": {"type": "instance_count", "value": 2},
    }
}


def test_rolling_replaces_a_batch_at_a_time_and_drains_blue_after_each() -> None:
    dep = moved(
        deployment(ROLLING, mode="rolling"),
        advance(deployment(ROLLING, mode="rolling"), facts(), SIZES),
    )
    assert (dep.phase, dep.steps) == ("launching", [0.25, 0.5, 0.75, 1.0])
    d = directives(dep, SIZES)
    assert d.target_counts == {"green": 1} and d.keep_others == {(1, "blue"): 4}
    assert d.hold_promotion

    dep = moved(dep, advance(dep, facts(now=T0 + 3, ready=True), SIZES))
    assert dep.phase == "baking"
    assert directives(dep, SIZES).keep_others == {(1, "blue"): 3}  # one blue drained

    assert advance(dep, facts(now=T0 + 32, ready=True), SIZES) is None
    dep = moved(dep, advance(dep, facts(now=T0 + 33, ready=True), SIZES))
    assert (dep.phase, dep.step) == ("launching", 1)
    d = directives(dep, SIZES)
    assert d.target_counts == {"green": 2} and d.keep_others == {(1, "blue"): 3}

    for step in (1, 2, 3):
        dep = replace(dep, step=step, phase="baking", step_started_at=T0)
    dep = moved(dep, advance(dep, facts(now=T0 + 30, ready=True), SIZES))
    assert dep.phase == "promoting"
    assert not directives(dep, SIZES).hold_promotion
    assert directives(dep, SIZES).keep_others == {(1, "blue"): 0}
    end = advance(dep, facts(now=T0 + 31, active=2), SIZES)
    assert end is not None and end.values["status"] == "Succeeded"


def test_a_rolling_rollback_restores_blue_in_batches() -> None:
    dep = deployment(ROLLING, mode="rolling", phase="baking", steps=[0.25, 0.5, 0.75, 1.0], step=1)
    step = advance(dep, facts(now=T0 + 1, alarms={}), SIZES)
    assert step is None  # baking, no alarm
    dep = replace(dep, abort_by="ada")
    step = advance(dep, facts(now=T0 + 1), SIZES)
    assert step is not None
    assert step.values["phase"] == "aborting"
    assert step.endpoint == {"target_revision": 1, "status": "RollingBack"}
    dep = moved(dep, step)
    assert dep.restored == 0.5 and dep.rollback_batch == 0.5  # 2 of 4 replicas at a time
    d = directives(dep, SIZES)
    assert d.rolling_back  # the endpoint is RollingBack meanwhile
    # blue is the target again: 4 wanted back (half restored + a batch), green kept at 2
    assert d.target_counts == {"blue": 4} and d.keep_others == {(2, "green"): 2}
    assert advance(dep, facts(now=T0 + 2, active=1), SIZES) is None  # the batch is not ready
    end = advance(dep, facts(now=T0 + 3, active=1, ready=True), SIZES)
    assert end is not None and end.values["status"] == "Aborted"
    assert end.endpoint["status"] == "InService"


def test_a_rolling_rollback_of_one_at_a_time_takes_a_step_per_replica() -> None:
    policy = {
        "rolling": {
            "max_batch": {"type": "capacity_percent", "value": 50},
            "rollback_max_batch": {"type": "instance_count", "value": 1},
        }
    }
    dep = deployment(policy, mode="rolling", phase="baking", steps=[0.5, 1.0], step=1)
    dep = moved(dep, advance(dep, facts(alarms={}), SIZES) or rollout.Transition({}, ""))
    dep = replace(dep, abort_by="ada")
    dep = moved(dep, advance(dep, facts(now=T0 + 1), SIZES))
    assert (dep.restored, dep.rollback_batch) == (0.0, 0.25)
    counts = []
    for i in range(4):
        counts.append(directives(dep, SIZES).target_counts)
        step = advance(dep, facts(now=T0 + 2 + i, active=1, ready=True), SIZES)
        assert step is not None
        dep = moved(dep, step)
    assert counts == [{"blue": 1}, {"blue": 2}, {"blue": 3}, {"blue": 4}]
    assert dep.status == "Aborted"


def test_shared_variants_are_in_neither_fleet() -> None:
    from modelyard.controlplane.store.repo import RevisionRecord

    def rev(number: int, model_b: str) -> RevisionRecord:
        spec = {
            "variants": [
                {"name": "a", "model": "m", "instance_count": 2},
                {"name": "b", "model": model_b, "instance_count": 3},
            ]
        }
        models = {"m": {"artifact": "x"}, model_b: {"artifact": model_b}}
        return RevisionRecord("e", number, spec, models, "active", "", T0)

    sizes = rollout.fleet_sizes(deployment({}), {1: rev(1, "old"), 2: rev(2, "new")}, {})
    assert sizes == Sizes(green={"b": 3}, blue={"b": 3})


@pytest.mark.parametrize(
    ("max_batch", "fleet", "steps", "counts"),
    [
        ({"type": "instance_count", "value": 2}, 3, [2 / 3, 1.0], [2, 3]),
        ({"type": "instance_count", "value": 1}, 3, [1 / 3, 2 / 3, 1.0], [1, 2, 3]),
        ({"type": "capacity_percent", "value": 5}, 2, [0.5, 1.0], [1, 2]),  # no empty batch
        ({"type": "capacity_percent", "value": 25}, 6, [2 / 6, 4 / 6, 1.0], [2, 4, 6]),
    ],
)
def test_rolling_batches_are_whole_replicas(
    max_batch: dict[str, Any], fleet: int, steps: list[float], counts: list[int]
) -> None:
    sizes = Sizes(green={"green": fleet}, blue={"blue": fleet})
    dep = deployment({"rolling": {"max_batch": max_batch}}, mode="rolling")
    dep = moved(dep, advance(dep, facts(), sizes))
    assert dep.steps == pytest.approx(steps)
    seen = []
    for step in range(len(steps)):
        d = directives(replace(dep, step=step, phase="launching"), sizes)
        assert d.target_counts is not None
        seen.append(d.target_counts["green"])
    assert seen == counts


def test_a_replica_failing_mid_rolling_update_rolls_it_back_in_batches() -> None:
    dep = deployment(ROLLING, mode="rolling", phase="launching", steps=[0.25, 0.5, 0.75, 1.0])
    dep = replace(dep, step=2)
    # the plan does not fail the revision itself: the deployment rolls back
    assert directives(dep, SIZES).fail_revision is False
    step = advance(dep, facts(now=T0 + 5, failed="replica r-1 failed: load error"), SIZES)
    assert step is not None and step.values["phase"] == "failing"
    assert step.revisions == ((2, "failed", "replica r-1 failed: load error"),)
    dep = moved(dep, step)
    assert dep.restored == 0.5  # two batches were in; the third was launching
    end = advance(dep, facts(now=T0 + 6, active=1, ready=True), SIZES)
    assert end is not None and end.values["status"] == "Failed"


def test_a_rolling_rollback_that_cannot_restore_the_old_fleet_ends_failed() -> None:
    dep = deployment(ROLLING, mode="rolling", phase="rolling_back", steps=[0.5, 1.0], step=1)
    dep = replace(dep, restored=0.5, rollback_batch=0.5, reason="alarm x", step_started_at=T0)
    assert advance(dep, facts(now=T0 + 3599, active=1), SIZES) is None
    end = advance(dep, facts(now=T0 + 3601, active=1), SIZES)
    assert end is not None and end.values["status"] == "Failed"
    assert "not restored within 3600 s" in end.values["reason"]
    assert end.endpoint["status"] == "InService"


def test_an_abort_is_carried_out_before_anything_is_promoted() -> None:
    dep = deployment({}, abort_by="ada")
    assert directives(dep, SIZES).hold_promotion
