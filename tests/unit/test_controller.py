"""The endpoint controller end to end in memory: apply, tick, observe the store and the executor."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelyard.controlplane.reconcile.endpoints import EndpointController
from modelyard.controlplane.reconcile.plan import PlanSettings, SetEndpoint
from modelyard.controlplane.services.apply import Applied, apply_documents
from modelyard.controlplane.services.endpoints import delete_endpoint, describe_endpoint, routes
from modelyard.controlplane.store.repo import EndpointRecord, ReplicaRecord, Store
from modelyard.errors import ConflictError, ReplicaStartError, SpecError
from modelyard.executors.base import ReplicaLaunch, ReplicaProcess
from modelyard.executors.memory import MemoryExecutor
from modelyard.spec import parse_documents

CFG = PlanSettings(
    drain_delay_s=1.5, stop_grace_s=30.0, restart_backoff_s=(2.0, 4.0), max_start_attempts=3
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    store: Store
    executor: MemoryExecutor
    clock: FakeClock
    controller: EndpointController
    tmp_path: Path

    def artifact(self, name: str = "model.joblib") -> str:
        path = self.tmp_path / name
        if not path.exists():
            path.write_bytes(b"not really a model: the memory executor never loads it")
        return str(path)

    def apply(
        self,
        count: int = 2,
        weight: float = 1.0,
        artifact: str = "model.joblib",
        endpoint: str = "e",
    ) -> list[Applied]:
        raws: list[dict[str, Any]] = [
            {
                "kind": "Model",
                "name": "m",
                "spec": {"runtime": "sklearn", "artifact": self.artifact(artifact)},
            },
            {
                "kind": "Endpoint",
                "name": endpoint,
                "spec": {
                    "variants": [
                        {"name": "v", "model": "m", "instance_count": count, "weight": weight}
                    ]
                },
            },
        ]
        return apply_documents(self.store, parse_documents(raws), self.clock())

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.controller.tick()

    def endpoint(self, name: str = "e") -> EndpointRecord:
        with self.store.tx() as repo:
            record = repo.get_endpoint(name)
        assert record is not None, f"no endpoint {name}"
        return record

    def replicas(self, name: str | None = "e") -> list[ReplicaRecord]:
        with self.store.tx() as repo:
            return repo.list_replicas(name)

    def states(self, name: str = "e") -> list[tuple[int, str]]:
        return sorted((r.revision, r.state) for r in self.replicas(name))

    def events(self, name: str = "e") -> list[str]:
        with self.store.tx() as repo:
            return [e.message for e in repo.list_events(name, limit=100)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = Store("sqlite://")
    store.migrate()
    executor = MemoryExecutor(auto_ready=True)
    clock = FakeClock()
    controller = EndpointController(store, executor, tmp_path / "logs", CFG, clock=clock)
    yield World(store, executor, clock, controller, tmp_path)
    store.close()


def _serve(world: World, count: int = 2) -> None:
    world.apply(count=count)
    world.tick(2)  # start, then mark ready and promote
    assert world.endpoint().status == "InService"


# -- creation ----------------------------------------------------------------------------------


def test_endpoint_becomes_in_service_with_its_replicas(world: World) -> None:
    results = world.apply(count=3)
    assert [r.to_json() for r in results] == [
        {"kind": "Model", "name": "m", "action": "created"},
        {"kind": "Endpoint", "name": "e", "action": "created", "revision": 1},
    ]
    assert world.endpoint().status == "Creating"

    world.tick()
    assert world.states() == [(1, "starting")] * 3
    assert len(world.executor.running()) == 3
    launch = world.executor.running()[0].launch
    assert (launch.endpoint, launch.variant, launch.model_name) == ("e", "v", "m")
    assert launch.model.runtime == "sklearn"

    world.tick()
    endpoint = world.endpoint()
    assert (endpoint.status, endpoint.active_revision, endpoint.target_revision) == (
        "InService",
        1,
        1,
    )
    assert world.states() == [(1, "ready")] * 3
    assert all(r.ever_ready and r.attempts == 1 for r in world.replicas())

    world.tick(3)  # a steady state stays steady
    assert len(world.executor.replicas) == 3
    assert world.states() == [(1, "ready")] * 3


def test_replicas_that_never_get_ready_keep_the_endpoint_creating(world: World) -> None:
    world.executor.auto_ready = False
    world.apply(count=1)
    world.tick(3)
    assert world.endpoint().status == "Creating"
    assert routes(world.store, world.tmp_path) == {}
    (fake,) = world.executor.running()
    fake.ready = True
    world.tick()
    assert world.endpoint().status == "InService"


def test_load_error_fails_the_endpoint_and_nothing_is_retried(world: World) -> None:
    world.executor.auto_ready = False
    world.apply(count=1)
    world.tick()
    (fake,) = world.executor.running()
    fake.exit_code = 3
    world.tick()
    endpoint = world.endpoint()
    assert endpoint.status == "Failed"
    assert "exited with status 3 before it was ready" in endpoint.message
    world.clock.advance(600)
    world.tick(3)
    assert len(world.executor.replicas) == 1  # never restarted
    assert world.endpoint().status == "Failed"


def test_applying_again_after_a_failure_retries_with_a_new_revision(world: World) -> None:
    world.executor.auto_ready = False
    world.apply(count=1)
    world.tick()
    world.executor.running()[0].exit_code = 3
    world.tick()
    assert world.endpoint().status == "Failed"

    world.executor.auto_ready = True
    (result,) = [r for r in world.apply(count=1) if r.kind == "Endpoint"]
    assert (result.action, result.revision) == ("updated", 2)
    world.tick(2)
    assert world.endpoint().status == "InService"
    assert world.endpoint().active_revision == 2


# -- crashes -----------------------------------------------------------------------------------


def test_crashed_replica_is_restarted_after_the_backoff(world: World) -> None:
    _serve(world)
    victim = world.replicas()[0]
    world.executor.by_id(victim.id).exit_code = 137

    world.tick()
    crashed = next(r for r in world.replicas() if r.id == victim.id)
    assert crashed.state == "crashed"
    assert crashed.last_exit_code == 137
    assert crashed.next_start_at == world.clock.now + 2.0
    assert any("exited with status 137; restarting in 2 s" in e for e in world.events())
    assert routes(world.store, world.tmp_path)["e"]["variants"][0]["replicas"] == [
        r.address for r in world.replicas() if r.id != victim.id
    ]

    world.clock.advance(1.9)
    world.tick()
    assert next(r for r in world.replicas() if r.id == victim.id).state == "crashed"

    world.clock.advance(0.1)
    world.tick()
    restarted = next(r for r in world.replicas() if r.id == victim.id)
    assert (restarted.state, restarted.restarts, restarted.attempts) == ("starting", 1, 2)
    assert restarted.pid != victim.pid

    world.tick()
    assert world.states() == [(1, "ready"), (1, "ready")]
    view = describe_endpoint(world.store, "e", "http://gw")
    restarts = {r["id"]: r["restarts"] for r in view["variants"][0]["replicas"]}
    assert restarts[victim.id] == 1
    assert sum(restarts.values()) == 1
    assert len(world.executor.running()) == 2


def test_second_crash_waits_longer(world: World) -> None:
    _serve(world, count=1)
    (rep,) = world.replicas()
    for backoff in (2.0, 4.0, 4.0):
        (current,) = world.executor.running()  # by_id finds the first (exited) process
        assert current.launch.replica_id == rep.id
        current.exit_code = 1
        world.tick()
        (crashed,) = world.replicas()
        assert crashed.state == "crashed"
        assert crashed.next_start_at == world.clock.now + backoff
        world.clock.advance(backoff)
        world.tick(2)
        assert world.states() == [(1, "ready")]


# -- updates -----------------------------------------------------------------------------------


def test_weight_update_creates_revision_2_and_promotes_it_without_restarts(world: World) -> None:
    _serve(world)
    before = {r.id for r in world.replicas()}
    (model, endpoint) = world.apply(weight=3.0)
    assert (model.action, endpoint.action, endpoint.revision) == ("unchanged", "updated", 2)
    assert world.endpoint().status == "Updating"

    world.tick()
    ep = world.endpoint()
    assert (ep.status, ep.active_revision, ep.target_revision) == ("InService", 2, 2)
    assert {r.id for r in world.replicas()} == before
    assert world.states() == [(2, "ready"), (2, "ready")]
    assert len(world.executor.replicas) == 2  # nothing new was started
    assert routes(world.store, world.tmp_path)["e"]["variants"][0]["weight"] == 3.0


def test_model_update_rolls_out_new_replicas_then_retires_the_old(world: World) -> None:
    _serve(world)
    old = {r.id for r in world.replicas()}
    results = world.apply(artifact="model-v2.joblib")
    assert [(r.kind, r.action, r.revision) for r in results] == [
        ("Model", "updated", None),
        ("Endpoint", "updated", 2),
    ]

    world.tick()  # new replicas start; the old ones keep serving
    assert world.states() == [(1, "ready"), (1, "ready"), (2, "starting"), (2, "starting")]
    assert routes(world.store, world.tmp_path)["e"]["revision"] == 1

    world.tick()  # new replicas ready: promoted; the deployment ends
    ep = world.endpoint()
    assert (ep.status, ep.active_revision) == ("InService", 2)
    # The old fleet runs until the deployment ends (a rollback could still need it), then
    # drains from the next pass.
    assert world.states() == [(1, "ready"), (1, "ready"), (2, "ready"), (2, "ready")]
    assert routes(world.store, world.tmp_path)["e"]["revision"] == 2
    world.tick()
    assert world.states() == [(1, "stopping"), (1, "stopping"), (2, "ready"), (2, "ready")]
    table = routes(world.store, world.tmp_path)["e"]
    assert table["revision"] == 2
    assert not {f"mem://{rid}" for rid in old} & set(table["variants"][0]["replicas"])

    world.clock.advance(CFG.drain_delay_s)
    world.tick()  # drained: asked to stop
    assert all(world.executor.by_id(rid).signals == ["term"] for rid in old)
    world.tick()  # exited: forgotten
    assert world.states() == [(2, "ready"), (2, "ready")]
    with world.store.tx() as repo:
        assert [(r.number, r.state) for r in repo.list_revisions("e")] == [
            (1, "retired"),
            (2, "active"),
        ]


def test_model_change_applied_alone_rolls_out_to_the_endpoints_using_it(world: World) -> None:
    _serve(world)
    raw = {"kind": "Model", "name": "m", "spec": {"runtime": "sklearn", "artifact": ""}}
    raw["spec"]["artifact"] = world.artifact("model-v3.joblib")
    results = apply_documents(world.store, parse_documents([raw]), world.clock())
    assert [(r.kind, r.name, r.action, r.revision) for r in results] == [
        ("Model", "m", "updated", None),
        ("Endpoint", "e", "updated", 2),
    ]


def test_stopping_replica_that_ignores_term_is_killed_after_the_grace(world: World) -> None:
    _serve(world, count=1)
    world.apply(count=1, artifact="model-v2.joblib")
    world.tick(3)  # started, ready and promoted, then the old one stops
    (old,) = [r for r in world.replicas() if r.revision == 1]
    assert old.state == "stopping"
    fake = world.executor.by_id(old.id)

    world.clock.advance(CFG.drain_delay_s)
    world.executor.signal = _record_only(world.executor)  # type: ignore[method-assign]
    world.tick()
    world.clock.advance(CFG.stop_grace_s)
    world.tick()
    assert fake.signals == ["term", "kill"]
    world.tick()
    fake.exit_code = -9
    world.tick()
    assert world.states() == [(2, "ready")]


def _record_only(executor: MemoryExecutor) -> Any:
    """A signal that a hung replica ignores: recorded, but the process keeps running."""

    def signal(proc: ReplicaProcess, how: str) -> None:
        executor.replicas[proc.pid].signals.append(how)

    return signal


# -- deletion ----------------------------------------------------------------------------------


def test_delete_drains_every_replica_then_removes_the_endpoint(world: World) -> None:
    _serve(world)
    with world.store.tx() as repo:
        repo.add_counts("e", "v", 7, 0, 0, world.clock())
    delete_endpoint(world.store, "e", world.clock())
    assert world.endpoint().status == "Deleting"
    assert routes(world.store, world.tmp_path) == {}

    world.tick()
    assert world.states() == [(1, "stopping"), (1, "stopping")]
    world.clock.advance(CFG.drain_delay_s)
    world.tick(3)
    assert all(f.signals == ["term"] for f in world.executor.replicas.values())
    assert world.executor.running() == []
    with world.store.tx() as repo:
        assert repo.get_endpoint("e") is None
        assert repo.list_replicas() == []
        assert repo.list_revisions("e") == []
        assert repo.list_events("e") == []
        assert repo.list_counts() == []
        assert repo.get_model("m") is not None  # models outlive their endpoints


def test_apply_while_deleting_is_a_conflict(world: World) -> None:
    _serve(world)
    delete_endpoint(world.store, "e", world.clock())
    with pytest.raises(ConflictError, match="being deleted"):
        world.apply(weight=2.0)


# -- apply -------------------------------------------------------------------------------------


def test_applying_the_same_documents_twice_is_unchanged(world: World) -> None:
    world.apply()
    world.tick(2)
    again = world.apply()
    assert [(r.kind, r.action, r.revision) for r in again] == [
        ("Model", "unchanged", None),
        ("Endpoint", "unchanged", 1),
    ]
    world.tick()
    assert len(world.executor.replicas) == 2
    with world.store.tx() as repo:
        assert repo.latest_revision_number("e") == 1


def test_endpoint_naming_an_unknown_model_is_rejected_with_the_field(world: World) -> None:
    raw = {
        "kind": "Endpoint",
        "name": "e",
        "spec": {"variants": [{"name": "v", "model": "nope"}]},
    }
    with pytest.raises(SpecError) as info:
        apply_documents(world.store, parse_documents([raw]), world.clock())
    assert info.value.field == "documents[0].spec.variants[0].model"


def test_missing_artifact_is_rejected_and_nothing_is_written(world: World) -> None:
    raws = [
        {
            "kind": "Model",
            "name": "m",
            "spec": {"runtime": "sklearn", "artifact": str(world.tmp_path / "missing.joblib")},
        },
    ]
    with pytest.raises(SpecError) as info:
        apply_documents(world.store, parse_documents(raws), world.clock())
    assert info.value.field == "documents[0].spec.artifact"
    with world.store.tx() as repo:
        assert repo.list_models() == []


# -- routes ------------------------------------------------------------------------------------


def test_routes_list_only_ready_replicas_of_the_active_revision(world: World) -> None:
    world.executor.auto_ready = False
    world.apply(count=2)
    world.tick()
    assert routes(world.store, world.tmp_path) == {}  # nothing served yet

    first, second = world.executor.running()
    first.ready = second.ready = True
    world.tick()
    (r1, r2) = world.replicas()
    assert routes(world.store, world.tmp_path) == {
        "e": {
            "type": "realtime",
            "revision": 1,
            "variants": [
                {
                    "name": "v",
                    "weight": 1.0,
                    "bundles": True,  # sklearn replicas are model servers, which take bundles
                    "replicas": sorted([r1.address, r2.address]),
                }
            ],
        }
    }

    # an update in progress: the new revision's starting replicas are not routed
    world.apply(artifact="model-v2.joblib")
    world.tick()
    assert len(world.replicas()) == 4
    assert routes(world.store, world.tmp_path)["e"]["variants"][0]["replicas"] == sorted(
        [r1.address, r2.address]
    )

    # a crashed replica leaves the table
    world.executor.by_id(r1.id).exit_code = 1
    world.tick()
    assert routes(world.store, world.tmp_path)["e"]["variants"][0]["replicas"] == [r2.address]


def test_routes_skip_endpoints_of_other_states(world: World) -> None:
    _serve(world)
    world.apply(endpoint="other")
    world.tick()  # "other" is creating
    assert set(routes(world.store, world.tmp_path)) == {"e"}


# -- robustness --------------------------------------------------------------------------------


class _FailingStarts(MemoryExecutor):
    def __init__(self) -> None:
        super().__init__(auto_ready=True)
        self.fail = False

    def start(self, launch: ReplicaLaunch) -> ReplicaProcess:
        if self.fail:
            raise ReplicaStartError("could not run 'serve': No such file or directory")
        return super().start(launch)


def test_replica_that_cannot_start_fails_the_new_endpoint(world: World) -> None:
    executor = _FailingStarts()
    executor.fail = True
    world.controller.executor = executor
    world.apply(count=1)
    world.tick(2)
    endpoint = world.endpoint()
    assert endpoint.status == "Failed"
    assert "could not run 'serve'" in endpoint.message


def test_served_replica_that_cannot_restart_does_not_pile_up_failed_rows(world: World) -> None:
    executor = _FailingStarts()
    world.controller.executor = executor
    world.executor = executor
    _serve(world, count=1)
    executor.fail = True
    (current,) = executor.running()
    current.exit_code = 1
    world.tick()  # crashed
    for _ in range(5):
        world.clock.advance(CFG.restart_backoff_s[-1])
        world.tick()
    assert len(world.replicas()) <= 1, world.states()


def test_a_stale_plan_never_undoes_an_apply_made_meanwhile(world: World) -> None:
    world.apply(count=1)
    world.tick()  # replicas started for revision 1
    seen = world.endpoint()  # what the controller read before planning...
    [_, update] = world.apply(count=1, weight=2.0)  # ...while the user applies revision 2
    assert update.revision == 2
    promote = SetEndpoint("InService", "", 1, 1, ((1, "active", ""),))
    world.controller._apply(seen, {}, promote)  # the plan made from the stale read
    assert world.endpoint().target_revision == 2, "the controller undid the user's apply"
    world.tick(3)
    assert world.endpoint().active_revision == 2 and world.endpoint().status == "InService"


def test_a_stale_plan_does_not_hide_a_delete(world: World) -> None:
    _serve(world, count=1)
    seen = world.endpoint()
    delete_endpoint(world.store, "e", world.clock())
    world.controller._apply(seen, {}, SetEndpoint("InService", "", 1, 1))
    assert world.endpoint().status == "Deleting"


# -- batching ----------------------------------------------------------------------------------


def _batching_endpoint(batching: dict[str, Any] | None) -> dict[str, Any]:
    variant: dict[str, Any] = {"name": "v", "model": "m", "instance_count": 1}
    if batching is not None:
        variant["batching"] = batching
    return {"kind": "Endpoint", "name": "e", "spec": {"variants": [variant]}}


def test_batching_reaches_the_replica_and_changing_it_replaces_the_replicas(world: World) -> None:
    model = {
        "kind": "Model",
        "name": "m",
        "spec": {"runtime": "sklearn", "artifact": world.artifact()},
    }
    batching = {"max_batch_size": 32, "max_delay_ms": 5}
    apply_documents(
        world.store, parse_documents([model, _batching_endpoint(batching)]), world.clock()
    )
    world.tick(2)
    assert world.endpoint().status == "InService"
    (first,) = world.executor.running()
    assert first.launch.batching == {"max_batch_size": 32, "max_delay_ms": 5.0}

    bigger = {"max_batch_size": 64, "max_delay_ms": 5}
    apply_documents(world.store, parse_documents([_batching_endpoint(bigger)]), world.clock())
    world.tick(2)
    launches = [r.launch for r in world.executor.replicas.values()]
    assert launches[-1].batching == {"max_batch_size": 64, "max_delay_ms": 5.0}
    assert launches[-1].replica_id != first.launch.replica_id  # a new replica, not a retag


def test_batching_on_a_container_model_is_refused_and_nothing_is_written(world: World) -> None:
    container = {
        "kind": "Model",
        "name": "m",
        "spec": {"runtime": "container", "container": {"command": ["serve"]}},
    }
    raws = [container, _batching_endpoint({"max_batch_size": 8})]
    with pytest.raises(SpecError) as info:
        apply_documents(world.store, parse_documents(raws), world.clock())
    assert info.value.field == "documents[1].spec.variants[0].batching"
    assert "remove batching" in info.value.message
    with world.store.tx() as repo:
        assert repo.list_models() == []
        assert repo.list_endpoints() == []


def test_container_replicas_are_not_sent_bundles(world: World) -> None:
    raws = [
        {
            "kind": "Model",
            "name": "m",
            "spec": {"runtime": "container", "container": {"command": ["serve"]}},
        },
        {"kind": "Endpoint", "name": "e", "spec": {"variants": [{"name": "v", "model": "m"}]}},
    ]
    apply_documents(world.store, parse_documents(raws), world.clock())
    world.tick(2)
    assert routes(world.store, world.tmp_path)["e"]["variants"][0]["bundles"] is False
