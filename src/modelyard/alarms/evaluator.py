"""The control plane's alarm evaluator: every alarm, every 10 s, a little after each 10 s boundary.

A tick reads each alarm's points from the store, evaluates them (:mod:`.evaluate`) and records the
result. A change of state is recorded with its history entry and the webhooks of the new state's
actions (the notification outbox, delivered by the notifier with its retries) in one transaction,
and only if the alarm is still as it was read: a spec applied meanwhile wins, and is evaluated on
the next tick. Ticks fall :data:`~.evaluate.SETTLE_S` seconds after each multiple of 10 s (so
each period is evaluated as soon as its points are written), and at once when an alarm is
applied (``wake``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from modelyard.alarms.evaluate import SETTLE_S, Evaluation, evaluate, window
from modelyard.controlplane.store.alarm_queries import AlarmRecord
from modelyard.controlplane.store.repo import Repo, Store
from modelyard.metrics.series import RESOLUTION_S, Point
from modelyard.spec.alarms import AlarmSpec

log = logging.getLogger("modelyard.alarms")


def next_tick(now: float, every_s: float = RESOLUTION_S, settle_s: float = SETTLE_S) -> float:
    """The first tick after ``now``: ``settle_s`` past a multiple of ``every_s``."""
    return (math.floor((now - settle_s) / every_s) + 1) * every_s + settle_s


def notification(
    alarm: AlarmRecord, spec: AlarmSpec, result: Evaluation, now: float
) -> dict[str, Any]:
    """The JSON body told to the webhooks of the state the alarm entered."""
    return {
        "event": "AlarmStateChange",
        "alarm": alarm.name,
        "description": spec.description,
        "endpoint": spec.dimensions.endpoint,
        "variant": spec.dimensions.variant,
        "metric": spec.metric,
        "statistic": spec.statistic,
        "condition": spec.condition,
        "old_state": alarm.state,
        "new_state": result.state,
        "reason": result.reason,
        "values": list(result.values),
        "window": {"start": result.start, "end": result.end},
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "timestamp": now,
    }


def alarm_points(store: Store, spec: AlarmSpec, start: float, end: float) -> list[Point]:
    """The points of every series an alarm watches in ``[start, end)`` (what it merges). An
    alarm on a whole endpoint leaves its shadow variant out: copies are not traffic."""
    name, variant = spec.dimensions.endpoint, spec.dimensions.variant
    with store.tx() as repo:
        series = repo.metric_points(name, start, end, metric=spec.metric, variant=variant)
        shadow = None
        endpoint = repo.get_endpoint(name) if variant is None else None
        if endpoint is not None and endpoint.active_revision is not None:
            rev = repo.get_revision(name, endpoint.active_revision)
            shadow = ((rev.spec if rev else {}).get("shadow") or {}).get("variant")
    return [
        point
        for key, points in series.items()
        if shadow is None or key.variant != shadow
        for point in points
    ]


#: windows judged in one go when the evaluator fell behind (more: only the newest is judged)
MAX_CATCH_UP = 30


class AlarmEvaluator:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        settle_s: float = SETTLE_S,
        written_through: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settle_s = settle_s
        #: the time before which every metric point is in the store (the recorder's); None:
        #: trust ``settle_s`` alone
        self.written_through = written_through
        #: per alarm: ((its version, created_at), the end of the last window judged)
        self._judged: dict[str, tuple[tuple[int, float], float]] = {}
        #: set to evaluate every alarm now (an alarm was applied)
        self.wake = threading.Event()

    def tick(self, now: float) -> int:
        """Evaluate every alarm at ``now``; how many changed state."""
        with self.store.tx() as repo:
            alarms = repo.list_alarms()
        moved = 0
        for alarm in alarms:
            try:
                moved += self.evaluate(alarm, now)
            except Exception:  # one alarm's failure (a passing store error) spares the others
                log.exception("alarm %s: evaluation failed", alarm.name)
        return moved

    def evaluate(self, alarm: AlarmRecord, now: float) -> bool:
        """Evaluate one alarm on every window that completed since it was last judged (in
        order: no period is skipped), each only once the recorder has written all its points;
        record each result. Whether it changed state."""
        spec = AlarmSpec.model_validate(alarm.spec)
        _, end = window(spec, now, self.settle_s)
        if self.written_through is not None:
            limit = self.written_through()
            while end > limit:  # the newest window whose points are all in the store
                end -= spec.period_s
        judged = self._judged.get(alarm.name)
        same = judged is not None and judged[0] == (alarm.version, alarm.created_at)
        if same and judged is not None and judged[1] >= end:
            return False  # nothing new to judge
        ends = [end]
        if same and judged is not None:
            missed = round((end - judged[1]) / spec.period_s)
            if 1 < missed <= MAX_CATCH_UP:
                ends = [judged[1] + k * spec.period_s for k in range(1, missed + 1)]
        moved = False
        seen: AlarmRecord | None = alarm
        for at in ends:
            if seen is None:
                break
            moved |= self._judge(seen, spec, at, now)
            with self.store.tx() as repo:
                seen = repo.get_alarm(alarm.name)
        self._judged[alarm.name] = ((alarm.version, alarm.created_at), end)
        return moved

    def _judge(self, alarm: AlarmRecord, spec: AlarmSpec, end: float, now: float) -> bool:
        """Evaluate the window ending at ``end`` and record the result as of ``now``."""
        as_of = end + self.settle_s  # the time at which that window is the newest complete one
        start, _ = window(spec, as_of, self.settle_s)
        points = alarm_points(self.store, spec, start, end)
        result = evaluate(spec, points, as_of, alarm.state, self.settle_s)
        with self.store.tx() as repo:
            moved = repo.record_evaluation(alarm, result.state, result.reason, now)
            if moved:
                self._notify(repo, alarm, spec, result, now)
        if moved:
            log.info("alarm %s: %s -> %s: %s", alarm.name, alarm.state, result.state, result.reason)
        return moved

    def _notify(
        self, repo: Repo, alarm: AlarmRecord, spec: AlarmSpec, result: Evaluation, now: float
    ) -> None:
        urls = getattr(spec.actions, result.state.lower())
        if not urls:
            return
        body = json.dumps(notification(alarm, spec, result, now))
        for url in urls:
            repo.add_notification(
                spec.dimensions.endpoint,
                "",
                str(url),
                body,
                alarm.webhook_secret,
                now,
                alarm=alarm.name,
            )

    def run(self, stop: threading.Event) -> None:
        next_at = 0.0
        while not stop.is_set():
            now = self.clock()
            if now >= next_at or self.wake.is_set():
                self.wake.clear()
                try:
                    self.tick(now)
                except Exception:  # a passing store error: the next tick tries again
                    log.exception("alarms: evaluation failed")
                next_at = next_tick(now, settle_s=self.settle_s)
            self.wake.wait(min(1.0, max(0.0, next_at - self.clock())))
