"""The autoscaler: a control-plane thread that sets each autoscaled variant's capacity.

Every ``interval_s`` (10 s by default, a little after each 10 s boundary so the latest interval's
points are written) it looks at every endpoint that is InService (none is scaled while it is
created or updated), and at each of its variants with ``autoscaling``:

1. a variant without a capacity, or whose autoscaling spec changed, gets its initial capacity
   (``instance_count`` clamped to min..max): an activity says so;
2. the bounds in force are the latest scheduled action's that fired since (schedule.py); a
   change of them is an activity;
3. its policies read the metrics of the window and their alarms (readings.py) and the decision
   (decide.py) gives the capacity; a change is an activity, with the cause and the values read.

The capacity is stored per endpoint and variant (``variant_capacities``) and the endpoint plan
runs it instead of ``instance_count`` (:func:`planned_capacities`); the controller is woken when
it changes. Replicas added take traffic once they answer /ping, replicas removed are drained
(the endpoint controller's usual scale-out and scale-in). The autoscaler is the only writer of
capacities; reads, decisions and writes are separate short transactions (docs/LOCKING.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from modelyard.alarms.evaluate import SETTLE_S
from modelyard.alarms.evaluate import window as alarm_window
from modelyard.alarms.evaluator import alarm_points, next_tick
from modelyard.controlplane.autoscale import schedule
from modelyard.controlplane.autoscale.decide import Readings, State, decide
from modelyard.controlplane.autoscale.readings import (
    DEFAULT_WINDOW_S,
    AlarmReading,
    MetricReading,
    read_alarm,
    read_metric,
    window_of,
)
from modelyard.controlplane.store.alarm_queries import AlarmRecord
from modelyard.controlplane.store.autoscale_queries import CapacityRecord
from modelyard.controlplane.store.repo import EndpointRecord, RevisionRecord, Store
from modelyard.metrics.series import RESOLUTION_S
from modelyard.spec.alarms import AlarmSpec
from modelyard.spec.autoscaling import AutoscalingSpec

log = logging.getLogger("modelyard.autoscale")
DEFAULT_INTERVAL_S = 10.0


def planned_capacities(
    spec: Mapping[str, Any], records: Mapping[str, CapacityRecord]
) -> dict[str, int]:
    """Replicas wanted per autoscaled variant of the endpoint spec ``spec``: the stored capacity
    while it belongs to the variant's autoscaling spec, else the initial one (``instance_count``
    clamped to min..max). Variants without autoscaling are left out (they run instance_count)."""
    out: dict[str, int] = {}
    for variant in spec["variants"]:
        config = variant.get("autoscaling")
        if not config:
            continue
        record = records.get(variant["name"])
        if record is not None and record.config == config:
            out[variant["name"]] = record.capacity
        else:
            count = int(variant["instance_count"])
            out[variant["name"]] = max(int(config["min"]), min(int(config["max"]), count))
    return out


class Autoscaler:
    def __init__(
        self,
        store: Store,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.time,
        wake_controller: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.window_s = window_s
        self.clock = clock
        self.wake_controller = wake_controller

    # one pass --------------------------------------------------------------------------------
    def tick(self, now: float) -> int:
        """Scale every autoscaled variant once; how many capacities changed."""
        with self.store.tx() as repo:
            endpoints = [e for e in repo.list_endpoints() if not e.deleting and e.target_revision]
            revisions = {e.name: repo.get_revision(e.name, e.target_revision) for e in endpoints}
            records = repo.list_capacities()
            alarms = {a.name: a for a in repo.list_alarms()}
        wanted = {
            (name, v["name"])
            for name, rev in revisions.items()
            if rev is not None
            for v in rev.spec["variants"]
            if v.get("autoscaling")
        }
        stale = [(r.endpoint, r.variant) for r in records if (r.endpoint, r.variant) not in wanted]
        if stale:
            with self.store.tx() as repo:
                for endpoint_name, variant in stale:
                    repo.delete_capacity(endpoint_name, variant)
        by_key = {(r.endpoint, r.variant): r for r in records}
        changed = 0
        for endpoint in endpoints:
            rev = revisions[endpoint.name]
            if rev is None or not _scalable(endpoint):
                continue
            try:
                changed += self._endpoint(endpoint, rev, by_key, alarms, now)
            except Exception:  # one endpoint's failure (a passing store error) spares the others
                log.exception("autoscaling endpoint %s failed", endpoint.name)
        if changed and self.wake_controller is not None:
            self.wake_controller.set()
        return changed

    def _endpoint(
        self,
        endpoint: EndpointRecord,
        rev: RevisionRecord,
        records: Mapping[tuple[str, str], CapacityRecord],
        alarms: Mapping[str, AlarmRecord],
        now: float,
    ) -> int:
        variants = [v for v in rev.spec["variants"] if v.get("autoscaling")]
        if not variants:
            return 0
        start, end = window_of(now, self.window_s)
        with self.store.tx() as repo:
            series = repo.metric_points(endpoint.name, start, end, resolution=RESOLUTION_S)
        weights = {v["name"]: float(v["weight"]) for v in rev.spec["variants"]}
        changed = 0
        for variant in variants:
            spec = AutoscalingSpec.model_validate(variant["autoscaling"])
            record = records.get((endpoint.name, variant["name"]))
            if record is None or record.config != variant["autoscaling"]:
                self._configure(endpoint.name, variant, spec, record, now)
                changed += 1
                continue
            metrics: dict[str, MetricReading | None] = {}
            for policy in spec.policies:
                if policy.target_tracking is not None:
                    metric = policy.target_tracking.metric
                    metrics[metric] = read_metric(
                        metric, series, variant["name"], record.capacity, weights
                    )
            readings = Readings(metrics, self._alarms(spec, alarms, now))
            changed += self._scale(record, spec, readings, now)
        return changed

    def _alarms(
        self, spec: AutoscalingSpec, alarms: Mapping[str, AlarmRecord], now: float
    ) -> dict[str, AlarmReading]:
        out: dict[str, AlarmReading] = {}
        for policy in spec.policies:
            if policy.step is None:
                continue
            alarm = alarms.get(policy.step.alarm)
            if alarm is None:
                out[policy.step.alarm] = AlarmReading("")
                continue
            alarm_spec = AlarmSpec.model_validate(alarm.spec)
            start, end = alarm_window(alarm_spec, now)
            points = alarm_points(self.store, alarm_spec, start, end)
            out[alarm.name] = read_alarm(alarm_spec, alarm.state, points, now)
        return out

    # writing ---------------------------------------------------------------------------------
    def _configure(
        self,
        endpoint: str,
        variant: Mapping[str, Any],
        spec: AutoscalingSpec,
        old: CapacityRecord | None,
        now: float,
    ) -> None:
        """Rule 1: a new or changed autoscaling spec starts from its initial capacity."""
        count = int(variant["instance_count"])
        capacity = spec.initial_capacity(count)
        record = CapacityRecord(
            endpoint=endpoint,
            variant=variant["name"],
            config=variant["autoscaling"],
            capacity=capacity,
            min=spec.min,
            max=spec.max,
            configured_at=now,
            scheduled_at=None,
            last_scale_out_at=None,
            last_scaling_at=None,
            updated_at=now,
        )
        what = "applied" if old is None else "changed"
        cause = (
            f"autoscaling {what}: initial capacity {capacity} (instance_count {count}, "
            f"bounds {spec.min}..{spec.max})"
        )
        before = old.capacity if old is not None else count
        details = {"min": spec.min, "max": spec.max, "instance_count": count}
        with self.store.tx() as repo:
            if not _still_there(repo.get_endpoint(endpoint)):
                return
            repo.put_capacity(record)
            repo.add_scaling_activity(
                endpoint, variant["name"], now, before, capacity, cause, details
            )
        log.info("%s/%s: %s", endpoint, variant["name"], cause)

    def _scale(
        self, record: CapacityRecord, spec: AutoscalingSpec, readings: Readings, now: float
    ) -> int:
        """Rules 2 and 3: the bounds in force, then the decision. Whether capacity changed."""
        bounds = schedule.bounds(spec, record.configured_at, now)
        state = State(
            record.capacity,
            bounds.min,
            bounds.max,
            record.last_scale_out_at,
            record.last_scaling_at,
        )
        decision = decide(spec, state, readings, now)
        moved = decision.capacity != record.capacity
        rebounded = (bounds.min, bounds.max, bounds.fired_at) != (
            record.min,
            record.max,
            record.scheduled_at,
        )
        if not moved and not rebounded:
            return 0
        new = replace(
            record,
            capacity=decision.capacity,
            min=bounds.min,
            max=bounds.max,
            scheduled_at=bounds.fired_at,
            updated_at=now,
        )
        if moved:
            new = replace(new, last_scaling_at=now)
            if decision.capacity > record.capacity:
                new = replace(new, last_scale_out_at=now)
        name = f"{record.endpoint}/{record.variant}"
        with self.store.tx() as repo:
            if not _still_there(repo.get_endpoint(record.endpoint)):
                return 0
            repo.put_capacity(new)
            if rebounded:
                if bounds.action is not None and bounds.fired_at is not None:
                    action = spec.scheduled[bounds.action]
                    why = schedule.describe(action, bounds.fired_at)
                else:
                    why = "no scheduled action in force"
                cause = (
                    f"{why}: bounds {bounds.min}..{bounds.max} (were {record.min}..{record.max})"
                )
                details = {"min": bounds.min, "max": bounds.max, "scheduled": bounds.action}
                repo.add_scaling_activity(
                    record.endpoint,
                    record.variant,
                    now,
                    record.capacity,
                    record.capacity,
                    cause,
                    details,
                )
                log.info("%s: %s", name, cause)
            if moved:
                repo.add_scaling_activity(
                    record.endpoint,
                    record.variant,
                    now,
                    record.capacity,
                    decision.capacity,
                    decision.cause,
                    decision.details(state),
                )
                log.info(
                    "%s: capacity %d -> %d: %s",
                    name,
                    record.capacity,
                    decision.capacity,
                    decision.cause,
                )
        return int(moved)

    # the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        next_at = 0.0
        while not stop.is_set():
            now = self.clock()
            if now >= next_at:
                try:
                    self.tick(now)
                except Exception:  # a passing store error: the next tick tries again
                    log.exception("autoscaling failed")
                next_at = next_tick(now, self.interval_s, SETTLE_S + 0.5)
            stop.wait(min(1.0, max(0.05, next_at - self.clock())))


def _scalable(endpoint: EndpointRecord) -> bool:
    """Scaled only while InService on its latest revision (not while created or updated)."""
    return endpoint.status == "InService" and endpoint.active_revision == endpoint.target_revision


def _still_there(endpoint: EndpointRecord | None) -> bool:
    return endpoint is not None and not endpoint.deleting
