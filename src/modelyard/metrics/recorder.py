"""The control plane's metrics recorder: observations in, 10-second points out to the store.

Observations arrive from the gateways' syncs (invocations, errors, latencies — total, model and
overhead —, requests in progress, cold starts) and from the recorder's own sampling every 10 s
(replicas ready, each replica's CPU and memory and its batch sizes from its ``GET /metrics``
(metrics/batches.py), async backlogs). They are summed in memory per series and interval; an
interval is written once it has closed (and a little after, for late syncs) — one writer, few
rows. Hourly, points older than ``retention_s`` are rolled up into 1-minute points, and those
older than ``rollup_retention_s`` are deleted. A control-plane crash loses at most the intervals
not yet written (about 10 s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.controlplane.store.repo import Store
from modelyard.metrics.batches import BatchScraper
from modelyard.metrics.series import (
    N_BUCKETS,
    RESOLUTION_S,
    ROLLUP_S,
    SLOT_HISTOGRAMS,
    SLOT_SHADOW,
    Point,
)

log = logging.getLogger("modelyard.metrics")

#: seconds after an interval's end before it is written (syncs come every 0.25 s)
GRACE_S = 2.0
ROLLUP_EVERY_S = 300.0
#: a gateway worker not heard from this long no longer counts toward requests in progress
WORKER_SILENT_S = 5.0


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        retention_s: float = 24 * 3600.0,
        rollup_retention_s: float = 14 * 24 * 3600.0,
        clock: Callable[[], float] = time.time,
        batches: BatchScraper | None = None,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.rollup_retention_s = rollup_retention_s
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[tuple[SeriesKey, float], Point] = {}
        #: per replica: (its CPU seconds, when they were read) at the last sample
        self._cpu: dict[str, tuple[float, float]] = {}
        self._rolled_up_at = 0.0
        #: per gateway worker: (when it last synced, its requests in progress per endpoint)
        self._busy: dict[int, tuple[float, dict[str, float]]] = {}
        self.batches = batches or BatchScraper()

    # observations ----------------------------------------------------------------------------
    def _point(self, key: SeriesKey, now: float) -> Point:
        at = now - now % RESOLUTION_S
        point = self._open.get((key, at))
        if point is None:
            point = self._open[(key, at)] = Point(at)
        return point

    def counter(
        self, metric: str, endpoint: str, variant: str, n: float, now: float, zero: bool = False
    ) -> None:
        """``n`` events; none is a point only with ``zero`` (errors while there is traffic: a
        period of traffic without errors has error data, zero)."""
        if n or zero:
            with self._lock:
                self._point(SeriesKey(metric, endpoint, variant, ""), now).add_events(n)

    def gauge(
        self, metric: str, endpoint: str, variant: str, value: float, now: float, replica: str = ""
    ) -> None:
        with self._lock:
            self._point(SeriesKey(metric, endpoint, variant, replica), now).add(value)

    def distribution(
        self,
        metric: str,
        key: tuple[str, str, str],
        count: float,
        total: float,
        now: float,
    ) -> None:
        """``count`` observations summing to ``total`` (model calls and their rows), for the
        series ``key``: (endpoint, variant, replica)."""
        if count > 0:
            with self._lock:
                self._point(SeriesKey(metric, *key), now).merge(Point(0.0, count, total))

    def latency(
        self,
        endpoint: str,
        variant: str,
        count: float,
        sum_ms: float,
        max_ms: float,
        buckets: list[float],
        now: float,
        metric: str = "latency_ms",
    ) -> None:
        """A gateway's latency histogram since its last sync."""
        if count <= 0 or len(buckets) != N_BUCKETS:
            return
        with self._lock:
            point = self._point(SeriesKey(metric, endpoint, variant, ""), now)
            point.merge(Point(point.at, count, sum_ms, None, max_ms, list(buckets)))

    def gateway_report(self, counts: dict[str, dict[str, list[float]]], now: float) -> None:
        """A gateway's counts: {endpoint: {variant: slot}}, each slot laid out as
        :data:`~modelyard.metrics.series.SLOT_HISTOGRAMS` says (its tail may be absent)."""
        for endpoint, variants in counts.items():
            for variant, values in variants.items():
                self.counter("invocations", endpoint, variant, values[0], now)
                if len(values) > 2:
                    traffic = values[0] > 0
                    self.counter("errors_4xx", endpoint, variant, values[1], now, zero=traffic)
                    self.counter("errors_5xx", endpoint, variant, values[2], now, zero=traffic)
                if len(values) > 3:
                    self.counter("cold_starts", endpoint, variant, values[3], now)
                for metric, at in SLOT_SHADOW.items():
                    if len(values) > at:
                        self.counter(metric, endpoint, variant, values[at], now)
                for metric, at in SLOT_HISTOGRAMS.items():
                    if len(values) < at + 2 + N_BUCKETS:
                        break
                    # Latencies counted: async requests (202) have none, so not values[0].
                    buckets = values[at + 2 : at + 2 + N_BUCKETS]
                    count = sum(buckets)
                    self.latency(
                        endpoint, variant, count, values[at], values[at + 1], buckets, now, metric
                    )

    def in_flight(
        self, worker: int, counts: dict[str, float], endpoints: list[str], now: float
    ) -> None:
        """Requests in progress per endpoint at one gateway worker, as it syncs: a sample of
        every routed endpoint's total over the workers heard from in the last few seconds
        (each worker sees only its own requests)."""
        with self._lock:
            self._busy[worker] = (now, counts)
            live = [c for at, c in self._busy.values() if now - at <= WORKER_SILENT_S]
            for gone in [w for w, (at, _) in self._busy.items() if now - at > WORKER_SILENT_S]:
                del self._busy[gone]
        for endpoint in endpoints:
            total = sum(c.get(endpoint, 0) for c in live)
            self.gauge("concurrent_requests", endpoint, "", total, now)

    def written_through(self) -> float:
        """A time before which every interval is in the store: the start of the oldest interval
        still held here (what alarms may judge; counts sent late, after a control-plane outage,
        reopen an old interval and hold this back until written)."""
        now = self.clock()
        with self._lock:
            held = min((at for _, at in self._open), default=None)
        current = now - now % RESOLUTION_S
        return current if held is None else min(held, current)

    # writing ---------------------------------------------------------------------------------
    def flush(self, now: float, everything: bool = False) -> int:
        """Write the intervals that have closed (all of them with ``everything``). When the
        store fails they stay for the next flush."""
        with self._lock:
            due = [
                item for item in self._open if everything or item[1] + RESOLUTION_S + GRACE_S <= now
            ]
            points = [(key, RESOLUTION_S, self._open.pop((key, at))) for key, at in due]
        if points:
            try:
                with self.store.tx() as repo:
                    repo.add_metric_points(points)
            except BaseException:
                with self._lock:  # merged with what arrived for those intervals meanwhile
                    for key, _, point in points:
                        self._point(key, point.at).merge(point)
                raise
        return len(points)

    def sample(self, now: float) -> None:
        """The gauges read from the store and the replicas' processes."""
        with self.store.tx() as repo:
            replicas = repo.list_replicas()
            endpoints = {e.name: e for e in repo.list_endpoints()}
            backlog = repo.backlog()
        ready: dict[tuple[str, str], int] = {}
        for endpoint in endpoints.values():
            if endpoint.active_revision is not None:
                with self.store.tx() as repo:
                    rev = repo.get_revision(endpoint.name, endpoint.active_revision)
                for variant in rev.spec["variants"] if rev else []:
                    ready[(endpoint.name, variant["name"])] = 0
        seen: set[str] = set()
        for replica in replicas:
            if replica.state != "ready":
                continue
            key = (replica.endpoint, replica.variant)
            ready[key] = ready.get(key, 0) + 1
            usage = self._usage(replica.id, replica.pid, replica.pid_started_at, now)
            seen.add(replica.id)
            if usage is not None:
                cpu, memory = usage
                if cpu is not None:
                    self.gauge("cpu_percent", *key, cpu, now, replica=replica.id)
                self.gauge("memory_mb", *key, memory, now, replica=replica.id)
        for gone in set(self._cpu) - seen:
            del self._cpu[gone]
        by_id = {r.id: r for r in replicas}
        for replica_id, (calls, rows) in self.batches.read(replicas).items():
            replica = by_id[replica_id]
            series = (replica.endpoint, replica.variant, replica_id)
            self.distribution("batch_size", series, calls, rows, now)
        for (endpoint_name, variant), n in ready.items():
            self.gauge("replicas", endpoint_name, variant, n, now)
        for name, entry in backlog.items():
            if name in endpoints:
                self.gauge("async_backlog", name, "", entry.queued + entry.running, now)
                age = now - entry.oldest_queued_at if entry.oldest_queued_at else 0.0
                self.gauge("async_oldest_age_s", name, "", max(0.0, age), now)

    def _usage(
        self, replica: str, pid: int | None, started_at: float | None, now: float
    ) -> tuple[float | None, float] | None:
        """(CPU % since the last sample or None the first time, resident MB) of a replica with
        its child processes; None when its process is gone (or is not the one recorded)."""
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
            if started_at is not None and abs(proc.create_time() - started_at) > 1.0:
                return None
            procs = [proc, *proc.children(recursive=True)]
            cpu_s = 0.0
            rss = 0
            for p in procs:
                try:
                    times: Any = p.cpu_times()
                    cpu_s += times.user + times.system
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            return None
        before = self._cpu.get(replica)
        self._cpu[replica] = (cpu_s, now)
        cpu = None
        if before is not None and now > before[1]:
            cpu = max(0.0, 100.0 * (cpu_s - before[0]) / (now - before[1]))
        return cpu, rss / (1024 * 1024)

    def roll_up(self, now: float, budget_s: float = 1.0) -> bool:
        """Roll up whole minutes older than the retention, a batch a transaction (the recorder's
        writes, and the store's other writers, wait at most one batch), for about ``budget_s``;
        whether it is all done (else the next loop goes on)."""
        cutoff = now - self.retention_s
        cutoff -= cutoff % ROLLUP_S  # whole minutes: never a minute half rolled up
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            with self.store.tx() as repo:
                if not repo.roll_up_metrics(cutoff, RESOLUTION_S, ROLLUP_S, limit=2000):
                    repo.purge_metrics(ROLLUP_S, now - self.rollup_retention_s)
                    return True
        return False

    # the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        next_sample = 0.0
        while not stop.wait(1.0):
            now = self.clock()
            try:
                if now >= next_sample:
                    self.sample(now)
                    next_sample = now - now % RESOLUTION_S + RESOLUTION_S
                self.flush(now)  # first: points due are never held back by a roll-up
                if now - self._rolled_up_at >= ROLLUP_EVERY_S and self.roll_up(now):
                    self._rolled_up_at = now
            except Exception:  # a passing store error: try again next second
                log.exception("metrics: recording failed")

    def close(self) -> None:
        self.batches.close()
        try:
            self.flush(self.clock(), everything=True)
        except Exception:
            log.exception("metrics: the last points were not written")
