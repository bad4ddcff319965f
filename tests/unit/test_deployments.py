"""Deployments through the services and the controller in memory (no processes): the records
each apply leaves, the rules that refuse bad input, and the views `rollout status` and `history`
show."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.controlplane.reconcile.endpoints import EndpointController
from modelyard.controlplane.reconcile.plan import PlanSettings
from modelyard.controlplane.services import deployments
from modelyard.controlplane.services.apply import apply_documents
from modelyard.controlplane.services.endpoints import routes
from modelyard.controlplane.store.repo import Store
from modelyard.errors import ConflictError, RolloutInProgressError, SpecError
from modelyard.executors.memory import MemoryExecutor
from modelyard.spec import parse_documents

CFG = PlanSettings(
    drain_delay_s=1.5, stop_grace_s=30.0, restart_backoff_s=(2.0, 4.0), max_start_attempts=3
)
CANARY = {
    "blue_green": {
        "traffic": {
            "type": "canary",
            "wait_s": 60,
            "canary_size": {"type": "capacity_percent", "value": 25},
        }
    }
}


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.now = 1000.0
        self.store = Store("sqlite://")
        self.store.migrate()
        self.executor = MemoryExecutor(auto_ready=True)
        self.controller = EndpointController(
            self.store, self.executor, tmp_path / "logs", CFG, clock=lambda: self.now
        )
        self.tmp_path = tmp_path
        for name in ("v1", "v2"):
            (tmp_path / name).write_bytes(b"never loaded by the memory executor")

    def apply(self, raws: list[dict[str, Any]], by: str = "ada") -> None:
        apply_documents(self.store, parse_documents(raws), self.now, by)

    def endpoint(
        self, model: str, variants: list[tuple[str, float, int]] | None = None, **extra: Any
    ) -> list[dict[str, Any]]:
        spec = {"runtime": "sklearn", "artifact": str(self.tmp_path / model)}
        variants = variants or [("v", 1.0, 2)]
        return [
            {"kind": "Model", "name": model, "spec": spec},
            {
                "kind": "Endpoint",
                "name": "e",
                "spec": {
                    "variants": [
                        {"name": n, "model": model, "weight": w, "instance_count": c}
                        for n, w, c in variants
                    ],
                    **extra,
                },
            },
        ]

    def tick(self, times: int = 1, seconds: float = 0.0) -> None:
        for _ in range(times):
            self.now += seconds
            self.controller.tick()

    def history(self) -> list[dict[str, Any]]:
        return deployments.history(self.store, "e", self.now)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.store.close()


def test_creation_and_each_update_are_recorded_with_who_and_what(world: World) -> None:
    world.apply(world.endpoint("v1"), by="ada")
    world.tick(2)
    world.apply(world.endpoint("v2"), by="grace")
    world.tick(3)
    newest, first = world.history()
    assert (first["mode"], first["status"], first["by"]) == ("create", "Succeeded", "ada")
    assert first["changes"] == ["created with variants v"]
    assert (newest["mode"], newest["status"], newest["by"]) == ("blue_green", "Succeeded", "grace")
    assert (newest["from_revision"], newest["to_revision"]) == (1, 2)
    assert newest["changes"] == ["variant v: model v1 → v2"]
    assert newest["finished_at"] is not None


def test_an_update_during_a_rollout_is_refused_with_its_id(world: World) -> None:
    world.apply(world.endpoint("v1"))
    world.tick(2)
    world.apply(world.endpoint("v2", deployment=CANARY))
    world.tick(3)
    status = deployments.rollout_status(world.store, "e", world.now)
    assert status["rollout"]["phase"] == "shifting"
    assert [f["share"] for f in status["traffic"]] == [0.75, 0.25]
    with pytest.raises(RolloutInProgressError) as err:
        world.apply(world.endpoint("v1"))
    assert err.value.rollout == status["rollout"]["id"]
    assert "modelyard rollout abort e" in err.value.message
    # the gateway's table splits traffic between the two revisions
    table = routes(world.store, world.tmp_path)["e"]
    assert table["revision"] == 1 and table["canary"]["revision"] == 2
    assert table["canary"]["share"] == 0.25


def test_rollout_alarms_must_exist(world: World) -> None:
    world.apply(world.endpoint("v1"))
    policy = {**CANARY, "auto_rollback": {"alarms": ["nope"]}}
    with pytest.raises(SpecError) as err:
        world.apply(world.endpoint("v2", deployment=policy))
    assert err.value.field == "documents[1].spec.deployment.auto_rollback.alarms[0]"
    assert deployments.history(world.store, "e", world.now)[0]["to_revision"] == 1


def test_abort_rolls_back_and_resume_deploys_the_same_specs_again(world: World) -> None:
    world.apply(world.endpoint("v1"))
    world.tick(2)
    world.apply(world.endpoint("v2", deployment=CANARY))
    world.tick(3)
    deployments.abort(world.store, "e", "ada", world.now)
    world.tick(2)
    aborted = world.history()[0]
    assert aborted["status"] == "Aborted" and aborted["reason"] == "aborted by ada"
    assert routes(world.store, world.tmp_path)["e"].get("canary") is None
    with pytest.raises(ConflictError):
        deployments.abort(world.store, "e", "ada", world.now)  # nothing left to abort

    resumed = deployments.resume(world.store, "e", "ada", world.now)
    assert resumed["to_revision"] == 3 and resumed["status"] == "InProgress"
    assert resumed["changes"][0] == "resumes rollout 2"


def test_weights_and_capacities_change_without_replacing_a_replica(world: World) -> None:
    world.apply(world.endpoint("v1", [("a", 1.0, 1), ("b", 1.0, 1)], deployment=CANARY))
    world.tick(2)
    before = {r.launch.replica_id for r in world.executor.running()}
    result = deployments.update_weights_and_capacities(
        world.store, "e", [{"name": "a", "weight": 3}], "ada", world.now
    )
    assert result["action"] == "updated"
    world.tick(2)
    assert {r.launch.replica_id for r in world.executor.running()} == before
    latest = world.history()[0]
    assert (latest["mode"], latest["status"]) == ("immediate", "Succeeded")
    assert "variant a: weight 1.0 → 3.0" in latest["changes"]
    weights = {v["name"]: v["weight"] for v in routes(world.store, world.tmp_path)["e"]["variants"]}
    assert weights == {"a": 3.0, "b": 1.0}


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"name": "x", "weight": 1}, "variants[0].name", "no variant named 'x'"),
        ({"name": "a", "model": "v2"}, "variants[0]", "only weight and instance_count"),
        ({"name": "a", "weight": -1}, "variants[0].weight", "must be 0 or more"),
        ({"name": "a", "weight": "3"}, "variants[0].weight", "must be a number"),
        ({"name": "a", "instance_count": 0}, "variants[0].instance_count", "1 to 64"),
        ({"name": "a", "instance_count": True}, "variants[0].instance_count", "whole number"),
    ],
)
def test_weights_and_capacities_refuse_bad_input(
    world: World, change: dict[str, Any], field: str, rule: str
) -> None:
    world.apply(world.endpoint("v1", [("a", 1.0, 1)]))
    world.tick(2)
    with pytest.raises(SpecError) as err:
        deployments.update_weights_and_capacities(world.store, "e", [change], "ada", world.now)
    assert err.value.field == field and rule in err.value.message
    assert len(world.history()) == 1  # nothing recorded


@pytest.mark.parametrize(
    ("deployment", "field", "rule"),
    [
        (
            {"blue_green": {"traffic": {"type": "canary"}}},
            "deployment.blue_green.traffic",
            "canary traffic needs canary_size",
        ),
        (
            {
                "blue_green": {
                    "traffic": {
                        "type": "linear",
                        "linear_step_size": {"type": "capacity_percent", "value": 5},
                    }
                }
            },
            "deployment.blue_green.traffic.linear_step_size.value",
            "must be 10..50",
        ),
        (
            {"rolling": {"max_batch": {"type": "capacity_percent", "value": 80}}},
            "deployment.rolling.max_batch.value",
            "must be 5..50",
        ),
        (
            {"blue_green": {"termination_wait_s": 4000}},
            "deployment.blue_green.termination_wait_s",
            "less than or equal to 3600",
        ),
        (
            {"blue_green": {"max_execution_s": 60}},
            "deployment.blue_green.max_execution_s",
            "greater than or equal to 600",
        ),
        (
            {"auto_rollback": {"alarms": [f"a{i}" for i in range(11)]}},
            "deployment.auto_rollback.alarms",
            "at most 10",
        ),
        (
            {"blue_green": {}, "rolling": {"max_batch": {"type": "instance_count", "value": 1}}},
            "deployment",
            "not both",
        ),
    ],
)
def test_deployment_policies_out_of_range_are_refused(
    deployment: dict[str, Any], field: str, rule: str
) -> None:
    raw = {
        "kind": "Endpoint",
        "name": "e",
        "spec": {"variants": [{"name": "v", "model": "m"}], "deployment": deployment},
    }
    with pytest.raises(SpecError) as err:
        parse_documents([raw])
    assert err.value.field == f"documents[0].spec.{field}" and rule in err.value.message


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        (
            {"type": "serverless", "deployment": CANARY},
            "a serverless endpoint rolls out all at once",
        ),
        ({"shadow": {"variant": "nope", "sampling_percent": 10}}, "no variant named 'nope'"),
        ({"shadow": {"variant": "v", "sampling_percent": 10}}, "another variant needs a weight"),
        ({"shadow": {"variant": "v", "sampling_percent": 0}}, "greater than 0"),
    ],
)
def test_endpoint_rules_for_deployments_and_shadows(spec: dict[str, Any], rule: str) -> None:
    raw = {
        "kind": "Endpoint",
        "name": "e",
        "spec": {"variants": [{"name": "v", "model": "m"}], **spec},
    }
    with pytest.raises(SpecError) as err:
        parse_documents([raw])
    assert rule in err.value.message


def test_an_abort_as_the_new_fleet_gets_ready_keeps_the_old_one_serving(world: World) -> None:
    world.apply(world.endpoint("v1"))
    world.tick(2)
    world.apply(world.endpoint("v2"))  # all at once, no waits
    world.tick()  # the new fleet starts
    deployments.abort(world.store, "e", "ada", world.now)
    world.tick(2)  # it is ready now: the abort goes first, nothing is promoted
    assert world.history()[0]["status"] == "Aborted"
    table = routes(world.store, world.tmp_path)["e"]
    assert table["revision"] == 1 and len(table["variants"][0]["replicas"]) == 2


def test_a_rollback_in_the_tick_that_promoted_finds_the_old_fleet_running(world: World) -> None:
    world.apply(world.endpoint("v1"))
    world.tick(2)
    world.apply(world.endpoint("v2", deployment={"blue_green": {"max_execution_s": 600}}))
    world.tick()  # the new fleet starts
    world.now += 601  # ready only once the deployment has run out of time
    world.tick()  # promoted by the plan, rolled back by the deployment in the same tick
    latest = world.history()[0]
    assert latest["status"] == "RolledBack" and "max_execution_s" in latest["reason"]
    table = routes(world.store, world.tmp_path)["e"]
    assert table["revision"] == 1 and len(table["variants"][0]["replicas"]) == 2


def test_a_rolling_update_splits_only_the_traffic_of_the_variant_it_replaces(
    world: World,
) -> None:
    spec = {"runtime": "sklearn", "artifact": str(world.tmp_path / "v1")}
    new = {"runtime": "sklearn", "artifact": str(world.tmp_path / "v2")}

    def endpoint(b: tuple[str, str], **extra: Any) -> list[dict[str, Any]]:
        return [
            {"kind": "Model", "name": "v1", "spec": spec},
            {"kind": "Model", "name": "v2", "spec": new},
            {
                "kind": "Endpoint",
                "name": "e",
                "spec": {
                    "variants": [
                        {"name": "a", "model": "v1", "instance_count": 2},
                        {"name": b[0], "model": b[1], "instance_count": 2},
                    ],
                    **extra,
                },
            },
        ]

    world.apply(endpoint(("b", "v1")))
    world.tick(2)
    rolling = {"rolling": {"max_batch": {"type": "instance_count", "value": 1}, "wait_s": 60}}
    world.apply(endpoint(("b2", "v2"), deployment=rolling))
    shares = []
    for _ in range(4):
        world.tick()
        canary = routes(world.store, world.tmp_path)["e"].get("canary")
        shares.append(None if canary is None else round(canary["share"], 3))
        if canary is not None:  # only variants with a ready replica are routed to
            assert all(v["replicas"] for v in canary["variants"])
    # no share before b2 has a ready replica; then 1 of b2 against 2, then 1 of b: a (shared)
    # never counts
    assert shares == [None, None, 0.333, 0.5]


def test_an_alarm_on_the_whole_endpoint_leaves_the_shadows_copies_out(world: World) -> None:
    from modelyard.alarms.evaluator import alarm_points
    from modelyard.controlplane.store.metric_queries import SeriesKey
    from modelyard.metrics.series import Point

    world.apply(
        world.endpoint(
            "v1",
            [("prod", 1.0, 1), ("cand", 1.0, 1)],
            shadow={"variant": "cand", "sampling_percent": 50},
        )
    )
    world.tick(2)
    with world.store.tx() as repo:
        repo.add_metric_points(
            [
                (SeriesKey("errors_5xx", "e", "prod", ""), 10, Point(0.0, 1, 1.0)),
                (SeriesKey("errors_5xx", "e", "cand", ""), 10, Point(0.0, 1, 7.0)),
            ]
        )

    def alarm(**dimensions: str) -> Any:
        spec = {
            "metric": "errors_5xx",
            "dimensions": {"endpoint": "e", **dimensions},
            "statistic": "sum",
            "comparison": "greater_than",
            "threshold": 0,
        }
        (doc,) = parse_documents([{"kind": "Alarm", "name": "a", "spec": spec}])
        return doc.spec

    assert [p.sum for p in alarm_points(world.store, alarm(), 0, 100)] == [1.0]
    assert [p.sum for p in alarm_points(world.store, alarm(variant="cand"), 0, 100)] == [7.0]


def test_a_spec_stored_before_deployments_existed_is_not_a_change(world: World) -> None:
    world.apply(world.endpoint("v1"))
    world.tick(2)
    with world.store.tx() as repo:  # as an older version stored it: no deployment, no shadow
        rev = repo.get_revision("e", 1)
        assert rev is not None
        old = {k: v for k, v in rev.spec.items() if k not in ("deployment", "shadow")}
        repo.add_revision("e", 2, old, rev.models, world.now)
        repo.update_endpoint("e", world.now, target_revision=2, active_revision=2)
    world.apply(world.endpoint("v1"))
    with world.store.tx() as repo:
        assert repo.latest_revision_number("e") == 2
