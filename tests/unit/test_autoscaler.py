"""The autoscaler thread's ticks with the endpoint controller, in memory, on a fake clock:
capacities and activities in the store, replicas started and drained, revisions, schedules,
step policies, describe and delete."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelyard.controlplane.autoscale.autoscaler import Autoscaler, planned_capacities
from modelyard.controlplane.reconcile.endpoints import EndpointController
from modelyard.controlplane.reconcile.plan import PlanSettings
from modelyard.controlplane.services import endpoints as endpoint_service
from modelyard.controlplane.services.apply import apply_documents
from modelyard.controlplane.store.autoscale_queries import CapacityRecord
from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.controlplane.store.repo import Store
from modelyard.errors import SpecError
from modelyard.executors.memory import MemoryExecutor
from modelyard.metrics.series import Point
from modelyard.spec import parse_documents

CFG = PlanSettings(
    drain_delay_s=1.5, stop_grace_s=30.0, restart_backoff_s=(2.0, 4.0), max_start_attempts=3
)
T0 = 1_800_000_000.0  # a multiple of 10 (and 2027-01-15T08:00:00Z)
FAST = {"scale_in_cooldown_s": 0, "scale_out_cooldown_s": 0}
CONCURRENCY = {"target_tracking": {"metric": "concurrent_requests_per_replica", "target": 2}}


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    store: Store
    executor: MemoryExecutor
    clock: FakeClock
    controller: EndpointController
    autoscaler: Autoscaler
    woken: threading.Event
    tmp_path: Path

    def apply(self, autoscaling: dict[str, Any] | None, count: int = 1, **extra: Any) -> None:
        artifact = self.tmp_path / "m.joblib"
        artifact.write_bytes(b"never loaded by the memory executor")
        variant = {"name": "v", "model": "m", "instance_count": count, **extra}
        if autoscaling is not None:
            variant["autoscaling"] = autoscaling
        raws: list[dict[str, Any]] = [
            {
                "kind": "Model",
                "name": "m",
                "spec": {"runtime": "sklearn", "artifact": str(artifact)},
            },
            {"kind": "Endpoint", "name": "e", "spec": {"variants": [variant]}},
        ]
        apply_documents(self.store, parse_documents(raws), self.clock())

    def settle(self) -> None:
        """Controller ticks until nothing changes (starts, readiness, promotion)."""
        for _ in range(4):
            self.controller.tick()

    def scale(self, advance_s: float = 10.0, concurrency: float | None = None) -> int:
        """Advance the clock, set the window's concurrency (when given), tick the autoscaler;
        how many capacities changed."""
        self.clock.now += advance_s
        if concurrency is not None:
            self.concurrency(concurrency)
        return self.autoscaler.tick(self.clock.now)

    def concurrency(self, value: float) -> None:
        """The gateway's requests in progress: ``value`` in each interval of the window at the
        clock's time, and no other points."""
        end = self.clock.now - (self.clock.now - 5) % 10 - 5  # the window's end
        points = []
        for i in range(1, 7):
            point = Point(end - 10 * i)
            point.add(value)
            points.append((SeriesKey("concurrent_requests", "e", "", ""), 10, point))
        with self.store.tx() as repo:
            repo.purge_metrics(10, before=end + 3600)
            repo.add_metric_points(points)

    def capacity(self) -> CapacityRecord:
        with self.store.tx() as repo:
            (record,) = repo.list_capacities("e")
        return record

    def activities(self) -> list[tuple[int, int, str]]:
        with self.store.tx() as repo:
            found = repo.list_scaling_activities("e", limit=100)
        return [(a.from_capacity, a.to_capacity, a.cause) for a in reversed(found)]

    def live(self) -> list[str]:
        with self.store.tx() as repo:
            return sorted(r.state for r in repo.list_replicas("e"))

    def routed(self) -> list[str]:
        table = endpoint_service.routes(self.store, self.tmp_path)
        return list(table["e"]["variants"][0]["replicas"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = Store("sqlite://")
    store.migrate()
    executor = MemoryExecutor(auto_ready=True)
    clock = FakeClock(T0 + 6.0)
    controller = EndpointController(store, executor, tmp_path / "logs", CFG, clock=clock)
    woken = threading.Event()
    autoscaler = Autoscaler(store, clock=clock, wake_controller=woken)
    yield World(store, executor, clock, controller, autoscaler, woken, tmp_path)
    store.close()


def serve(world: World, autoscaling: dict[str, Any], count: int = 1) -> None:
    world.apply(autoscaling, count)
    world.settle()
    world.autoscaler.tick(world.clock.now)  # takes up the autoscaling spec


# -- configuring -------------------------------------------------------------------------------


def test_initial_capacity_is_instance_count_clamped_and_recorded(world: World) -> None:
    world.apply({"min": 1, "max": 3}, count=5)
    world.settle()
    assert world.live() == ["ready"] * 3  # before the autoscaler ever ran
    assert world.autoscaler.tick(world.clock.now) == 1
    record = world.capacity()
    assert (record.capacity, record.min, record.max) == (3, 1, 3)
    assert world.activities() == [
        (5, 3, "autoscaling applied: initial capacity 3 (instance_count 5, bounds 1..3)")
    ]
    assert world.autoscaler.tick(world.clock.now) == 0  # no data: nothing more


def test_without_autoscaling_nothing_is_stored_and_instance_count_runs(world: World) -> None:
    world.apply(None, count=2)
    world.settle()
    assert world.scale(concurrency=50.0) == 0
    with world.store.tx() as repo:
        assert repo.list_capacities() == []
    assert world.live() == ["ready", "ready"]


def test_no_scaling_while_the_endpoint_is_created(world: World) -> None:
    world.apply({"min": 1, "max": 3})
    assert world.autoscaler.tick(world.clock.now) == 0
    with world.store.tx() as repo:
        assert repo.list_capacities() == []


# -- target tracking with the controller -------------------------------------------------------


def test_scale_out_starts_replicas_that_are_routed_once_ready(world: World) -> None:
    serve(world, {"min": 1, "max": 4, "policies": [CONCURRENCY], **FAST})
    world.woken.clear()
    assert world.scale(concurrency=7.0) == 1  # 7 in progress at a target of 2 a replica: 4
    assert world.woken.is_set()
    assert world.capacity().capacity == 4
    (activity,) = world.activities()[1:]
    assert activity == (
        1,
        4,
        "target_tracking concurrent_requests_per_replica: 7 per instance (target 2) wants 4",
    )
    world.controller.tick()
    assert world.live() == ["ready", "starting", "starting", "starting"]
    assert len(world.routed()) == 1  # new replicas take no traffic until ready
    world.controller.tick()
    assert world.live() == ["ready"] * 4
    assert len(world.routed()) == 4


def test_max_holds_under_more_load(world: World) -> None:
    serve(world, {"min": 1, "max": 3, "policies": [CONCURRENCY], **FAST})
    world.scale(concurrency=40.0)
    assert world.capacity().capacity == 3
    assert world.activities()[-1][2].endswith("wants 20, clamped to max 3")
    with world.store.tx() as repo:
        (latest, *_) = repo.list_scaling_activities("e")
    assert latest.details["wanted"] == 20
    world.settle()
    assert world.live() == ["ready"] * 3


def test_scale_in_takes_the_replica_out_of_routing_before_it_is_stopped(world: World) -> None:
    serve(world, {"min": 1, "max": 3, "policies": [CONCURRENCY], **FAST}, count=3)
    assert len(world.routed()) == 3
    world.scale(concurrency=0.0)
    assert world.capacity().capacity == 1
    world.controller.tick()
    assert world.live() == ["ready", "stopping", "stopping"]
    assert len(world.routed()) == 1  # the gateway's next sync no longer sends them requests
    assert all(not r.signals for r in world.executor.replicas.values())  # still draining
    world.clock.now += CFG.drain_delay_s
    world.controller.tick()  # drained: asked to stop (the model server finishes what it has)
    assert sorted(r.signals for r in world.executor.replicas.values()) == [[], ["term"], ["term"]]
    world.controller.tick()
    assert world.live() == ["ready"]


def test_cooldowns_space_out_scalings(world: World) -> None:
    serve(
        world,
        {
            "min": 1,
            "max": 8,
            "policies": [CONCURRENCY],
            "scale_out_cooldown_s": 60,
            "scale_in_cooldown_s": 300,
        },
    )
    world.scale(concurrency=6.0)
    assert world.capacity().capacity == 3
    world.scale(30.0, concurrency=14.0)  # 30 s after a scale-out: waits
    assert world.capacity().capacity == 3
    world.scale(30.0, concurrency=14.0)  # 60 s after it
    assert world.capacity().capacity == 7
    world.scale(290.0, concurrency=0.0)  # 290 s after the last scaling: no scale-in yet
    assert world.capacity().capacity == 7
    world.scale(10.0, concurrency=0.0)
    assert world.capacity().capacity == 1
    assert [(a, b) for a, b, _ in world.activities()] == [(1, 1), (1, 3), (3, 7), (7, 1)]


# -- revisions ---------------------------------------------------------------------------------


def test_a_new_revision_keeps_the_capacity_and_a_new_autoscaling_spec_resets_it(
    world: World,
) -> None:
    autoscaling = {"min": 1, "max": 4, "policies": [CONCURRENCY], **FAST}
    serve(world, autoscaling)
    world.scale(concurrency=6.0)
    world.settle()
    assert world.capacity().capacity == 3
    world.apply(autoscaling, count=1, weight=2.0)  # revision 2: same autoscaling
    world.settle()
    with world.store.tx() as repo:
        assert repo.get_endpoint("e").active_revision == 2  # type: ignore[union-attr]
    assert world.live() == ["ready"] * 3  # carried over, none restarted
    world.scale(0.0)
    assert world.capacity().capacity == 3

    world.apply({**autoscaling, "max": 2}, count=1)  # revision 3: autoscaling changed
    world.settle()
    # The initial capacity until the autoscaler takes the new spec up; the others drain.
    assert world.live() == ["ready", "stopping", "stopping"]
    world.scale(0.0)
    record = world.capacity()
    assert (record.capacity, record.max) == (1, 2)
    assert world.activities()[-1] == (
        3,
        1,
        "autoscaling changed: initial capacity 1 (instance_count 1, bounds 1..2)",
    )


def test_removing_autoscaling_goes_back_to_instance_count(world: World) -> None:
    serve(world, {"min": 1, "max": 4, "policies": [CONCURRENCY], **FAST})
    world.scale(concurrency=6.0)
    world.settle()
    assert world.live() == ["ready"] * 3
    world.apply(None, count=2)
    world.settle()
    world.scale(0.0)
    with world.store.tx() as repo:
        assert repo.list_capacities() == []
    assert world.live() == ["ready", "ready", "stopping"]


def test_planned_capacities_use_a_record_only_for_its_own_spec() -> None:
    config = {"min": 2, "max": 5}
    spec = {
        "variants": [
            {"name": "a", "instance_count": 9, "autoscaling": config},
            {"name": "b", "instance_count": 1, "autoscaling": {"min": 1, "max": 3}},
            {"name": "c", "instance_count": 4},
        ]
    }
    stale = CapacityRecord("e", "b", {"min": 1, "max": 2}, 2, 1, 2, 0.0, None, None, None, 0.0)
    fresh = CapacityRecord("e", "a", config, 4, 2, 5, 0.0, None, None, None, 0.0)
    assert planned_capacities(spec, {"a": fresh, "b": stale}) == {"a": 4, "b": 1}
    assert planned_capacities(spec, {}) == {"a": 5, "b": 1}


# -- schedules and step policies ---------------------------------------------------------------


def test_a_scheduled_action_raises_min_and_records_it(world: World) -> None:
    world.clock.now = T0 - 60.0  # 07:59 UTC
    morning = {"cron": "0 8 * * *", "timezone": "UTC", "min": 3}
    serve(world, {"min": 1, "max": 5, "scheduled": [morning], **FAST})
    assert world.capacity().capacity == 1
    world.scale(70.0)  # 08:00:10
    record = world.capacity()
    assert (record.capacity, record.min, record.max, record.scheduled_at) == (3, 3, 5, T0)
    bounds, moved = world.activities()[1:]
    assert bounds == (
        1,
        1,
        "scheduled action '0 8 * * *' (UTC) fired 2027-01-15 08:00 +0000: bounds 3..5 (were 1..5)",
    )
    assert moved == (1, 3, "no policy has data; bounds 3..5")
    assert world.scale() == 0  # nothing new until it fires again


def test_a_step_policy_adds_replicas_while_its_alarm_is_in_alarm(world: World) -> None:
    alarm = {
        "kind": "Alarm",
        "name": "busy",
        "spec": {
            "metric": "invocations",
            "dimensions": {"endpoint": "e"},
            "statistic": "sum",
            "period_s": 10,
            "comparison": "greater_than",
            "threshold": 100,
        },
    }
    apply_documents(world.store, parse_documents([alarm]), world.clock())
    steps = {"alarm": "busy", "adjustments": [{"lower": 0, "change": 1}]}
    serve(world, {"min": 1, "max": 3, "policies": [{"step": steps}], **FAST})
    with world.store.tx() as repo:
        seen = repo.get_alarm("busy")
        assert seen is not None
        repo.record_evaluation(seen, "ALARM", "busy", world.clock())
    world.scale()
    world.scale()
    world.scale()
    assert world.capacity().capacity == 3  # +1 each tick, up to max
    assert world.activities()[1][2] == (
        "step alarm busy: in ALARM without data (taken as at its threshold): "
        "change_in_capacity +1 wants 2"
    )


def test_a_step_policy_needs_its_alarm(world: World) -> None:
    steps = {"alarm": "nope", "adjustments": [{"lower": 0, "change": 1}]}
    with pytest.raises(SpecError) as info:
        world.apply({"min": 1, "max": 3, "policies": [{"step": steps}]})
    assert info.value.field == "documents[1].spec.variants[0].autoscaling.policies[0].step.alarm"


# -- describe and delete -----------------------------------------------------------------------


def test_describe_shows_the_capacity_and_the_activities(world: World) -> None:
    serve(world, {"min": 1, "max": 4, "policies": [CONCURRENCY], **FAST})
    world.scale(concurrency=6.0)
    view = endpoint_service.describe_endpoint(world.store, "e", "http://gw")
    assert view["variants"][0]["autoscaling_status"] == {
        "capacity": 3,
        "min": 1,
        "max": 4,
        "scheduled_at": None,
        "last_scaling_at": world.clock.now,
    }
    assert [(a["from"], a["to"]) for a in view["scaling_activities"]] == [(1, 1), (1, 3)]
    latest = endpoint_service.scaling_activities(world.store, "e", limit=1)
    assert latest[0]["details"]["votes"][0]["desired"] == 3


def test_deleting_the_endpoint_forgets_its_capacities_and_activities(world: World) -> None:
    serve(world, {"min": 1, "max": 4, "policies": [CONCURRENCY], **FAST})
    endpoint_service.delete_endpoint(world.store, "e", world.clock())
    assert world.scale(0.0) == 0
    world.settle()
    world.clock.now += CFG.drain_delay_s
    world.settle()
    with world.store.tx() as repo:
        assert repo.get_endpoint("e") is None
        assert repo.list_capacities() == []
        assert repo.list_scaling_activities("e") == []


def test_the_cli_describes_autoscaling_and_its_activities(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.cli import output

    morning = {"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "min": 2}
    step = {"alarm": "slow", "adjustments": [{"lower": 0, "upper": 50, "change": 1}]}
    alarm = {
        "kind": "Alarm",
        "name": "slow",
        "spec": {
            "metric": "latency_ms",
            "dimensions": {"endpoint": "e"},
            "statistic": "p99",
            "comparison": "greater_than",
            "threshold": 250,
        },
    }
    apply_documents(world.store, parse_documents([alarm]), world.clock())
    autoscaling = {
        "min": 1,
        "max": 4,
        "policies": [CONCURRENCY, {"step": step}],
        "scheduled": [morning],
        **FAST,
    }
    serve(world, autoscaling)
    world.scale(concurrency=6.0)
    output.describe_endpoint(endpoint_service.describe_endpoint(world.store, "e", "http://gw"))
    text = capsys.readouterr().out
    assert "v: model m, capacity 3 (autoscaling 1..4)" in text
    assert "target tracking: concurrent_requests_per_replica at 2" in text
    assert "step on alarm slow (change_in_capacity): [0, 50): +1" in text
    assert "scheduled '0 9 * * 1-5' (Europe/Paris): min 2" in text
    assert "cooldowns: scale-out 0 s, scale-in 0 s" in text
    assert "v: 1 -> 3  target_tracking concurrent_requests_per_replica: 6 per instance" in text
