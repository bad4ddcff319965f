"""The gateway's ``GET /metrics``: what it answered since it started, in Prometheus' text format.

Counts reach these totals at each sync (``Gateway._sync_forever`` adds the slot it reports to
the control plane), not per request: the request path does no more than ``Gateway._count``. A
scrape lags the answers by at most one sync interval (0.25 s; another worker's, about twice that).

With several gateway workers (``--gateway-workers``) a scrape reaches one of them, so each worker
writes its totals to ``<run dir>/gateway-metrics/<pid>.json`` (when they changed, at most every
0.2 s, and every 10 s anyway), and a scrape answers the sum of its own totals and the other
workers' files. Files of processes gone (removed then), or not written for a minute, are left
out: a worker that restarts starts again from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from modelyard.metrics.series import (
    LATENCY_BOUNDS_MS,
    N_BUCKETS,
    RESOLUTION_S,
    SLOT_HISTOGRAMS,
    SLOT_SHADOW,
    SLOT_SIZE,
)

log = logging.getLogger("modelyard.gateway")

#: A variant's slot of counts (``slot``): [invocations, 4xx, 5xx, cold starts, cold-start ms],
#: then three latency histograms, each [sum ms, max ms, *buckets]: the total latency (arrival to
#: answer), the model latency (request sent to the replica to its answer received, for the
#: attempt that answered) and the overhead (total minus model; all of it for requests that
#: reached no model), then a shadow variant's copies [compared, agreed, shed]. The layout is the
#: control plane's contract too (metrics/series.py).
LATENCY_SUM = SLOT_HISTOGRAMS["latency_ms"]
LATENCY_MAX = LATENCY_SUM + 1
LATENCY_BUCKETS = LATENCY_SUM + 2
MODEL_SUM = SLOT_HISTOGRAMS["model_latency_ms"]
MODEL_MAX = MODEL_SUM + 1
OVERHEAD_SUM = SLOT_HISTOGRAMS["overhead_latency_ms"]
OVERHEAD_MAX = OVERHEAD_SUM + 1
#: the entries that merge as a maximum, not a sum
MAXES = frozenset((LATENCY_MAX, MODEL_MAX, OVERHEAD_MAX))
#: counts per endpoint and variant, a slot each
Counts = dict[str, dict[str, list[float]]]

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
#: the workers' files, in the run directory
FOLDER = "gateway-metrics"
SAVE_EVERY_S = 0.2
REFRESH_S = 10.0
STALE_S = 60.0
_LE = [f"{bound / 1000.0:g}" for bound in LATENCY_BOUNDS_MS] + ["+Inf"]


def merge_counts(into: Counts, counts: Counts) -> None:
    """Add ``counts`` to ``into``, slot by slot (the latency maxima are maxima; a shorter slot,
    from an older gateway, is as if it ended with zeros)."""
    for endpoint, variants in counts.items():
        mine = into.setdefault(endpoint, {})
        for variant, values in variants.items():
            slot = mine.get(variant)
            if slot is None:
                mine[variant] = list(values)
                continue
            if len(values) > len(slot):
                slot.extend([0.0] * (len(values) - len(slot)))
            for i, value in enumerate(values):
                slot[i] = max(slot[i], value) if i in MAXES else slot[i] + value


def slot(counts: Counts, endpoint: str, variant: str) -> list[float]:
    """The counts of one variant since the last sync (the layout above)."""
    by_variant = counts.get(endpoint)
    if by_variant is None:
        by_variant = counts[endpoint] = {}
    found = by_variant.get(variant)
    if found is None:  # (setdefault would build a dict and a list on every request)
        found = by_variant[variant] = [0.0] * SLOT_SIZE
    return found


def count(
    counts: Counts,
    endpoint: str,
    variant: str,
    status: int,
    started: float | None = None,
    model_ms: float | None = None,
) -> None:
    """One answered request (the hot path: a few additions); ``started``: its perf_counter at
    arrival, for its latencies (none without it: async requests); ``model_ms``: how long the
    replica took to answer it (None: it reached no model, its latency is all overhead)."""
    found = slot(counts, endpoint, variant)
    found[0] += 1
    if 400 <= status < 500:
        found[1] += 1
    elif status >= 500:
        found[2] += 1
    if started is not None:
        ms = (time.perf_counter() - started) * 1000.0
        _observe(found, LATENCY_SUM, ms)
        if model_ms is not None:
            _observe(found, MODEL_SUM, model_ms)
            ms = ms - model_ms if ms > model_ms else 0.0
        _observe(found, OVERHEAD_SUM, ms)


def shadow_copy(counts: Counts, endpoint: str, variant: str, agreed: bool | None) -> None:
    """A copy for a shadow variant: compared with production's answer (``agreed``), or shed
    (None)."""
    found = slot(counts, endpoint, variant)
    at = SLOT_SHADOW["shadow_compared"]
    if agreed is None:
        found[at + 2] += 1
        return
    found[at] += 1
    if agreed:
        found[at + 1] += 1


def _observe(found: list[float], at: int, ms: float) -> None:
    """One latency into the histogram at ``at`` of a slot: [sum, max, *buckets]."""
    found[at] += ms
    if ms > found[at + 1]:
        found[at + 1] = ms
    found[at + 2 + bisect_left(LATENCY_BOUNDS_MS, ms)] += 1


class CountBatches:
    """The counts a gateway worker has not had acknowledged by the control plane: a batch a
    sync, each with its number (the control plane applies a number once: a batch sent again
    after a lost answer is not counted twice) and the 10 s interval it was counted in (so counts
    kept through an outage land in their own intervals)."""

    #: kept while the control plane is away (4 a second: about 40 minutes), and sent at once
    KEEP = 10_000
    PER_SYNC = 200

    def __init__(self) -> None:
        self._unsent: list[dict[str, Any]] = []
        self._seq = 0

    def add(self, counts: Counts, now: float) -> None:
        if not counts:
            return
        self._seq += 1
        self._unsent.append({"seq": self._seq, "at": now - now % RESOLUTION_S, "counts": counts})
        if len(self._unsent) > self.KEEP:  # a long outage: the oldest go
            del self._unsent[: len(self._unsent) - self.KEEP]

    def pending(self) -> list[dict[str, Any]]:
        """The oldest batches, to send as they are (never merged: one may have been applied)."""
        return self._unsent[: self.PER_SYNC]

    def acknowledged(self, count: int) -> None:
        del self._unsent[:count]


class GatewayTotals:
    """One gateway worker's counts since it started; ``folder`` (None with a single worker)
    is where the workers share them."""

    def __init__(
        self,
        folder: Path | None = None,
        *,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.pid = pid or os.getpid()
        self.clock = clock
        self.counts: Counts = {}
        self._changed = False
        self._saved_at = 0.0
        self._saved_busy: dict[str, int] = {}

    def add(self, counts: Counts) -> None:
        if counts:
            merge_counts(self.counts, counts)
            self._changed = True

    def save(self, busy: dict[str, int]) -> None:
        """Write this worker's totals and requests in progress for the others to read (atomic:
        a scrape never reads half a file)."""
        if self.folder is None:
            return
        now = self.clock()
        changed = self._changed or busy != self._saved_busy
        since = now - self._saved_at
        if since < REFRESH_S and not (changed and since >= SAVE_EVERY_S):
            return
        path = self.folder / f"{self.pid}.json"
        tmp = path.with_suffix(".tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"counts": self.counts, "busy": busy}))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not save the gateway's metrics for the other workers: %s", exc)
            return
        self._changed, self._saved_at, self._saved_busy = False, now, dict(busy)

    def close(self) -> None:
        if self.folder is not None:
            with contextlib.suppress(OSError):
                (self.folder / f"{self.pid}.json").unlink()

    def gathered(self, busy: dict[str, int]) -> tuple[dict[int, Counts], dict[str, int]]:
        """The totals of every live worker, by pid (each its own series: a worker that exits
        takes its series with it, and a sum over workers never goes down, which Prometheus
        would read as a reset), and their requests in progress summed (``busy``: this one's)."""
        counts: dict[int, Counts] = {self.pid: self.counts}
        busy = dict(busy)
        for pid, theirs, their_busy in self._others():
            counts[pid] = theirs
            for name, n in their_busy.items():
                busy[name] = busy.get(name, 0) + n
        return counts, busy

    def _others(self) -> Iterator[tuple[int, Counts, dict[str, int]]]:
        if self.folder is None:
            return
        now = self.clock()
        for path in self.folder.glob("*.json"):
            if not path.stem.isdigit() or int(path.stem) == self.pid:
                continue
            try:
                if not psutil.pid_exists(int(path.stem)):
                    path.unlink()  # a worker gone for good: its counts went with it
                    continue
                if now - path.stat().st_mtime > STALE_S:
                    continue
                data = json.loads(path.read_text())
                yield int(path.stem), data["counts"], data["busy"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # gone, or being replaced: the next scrape reads it

    def scrape(self, busy: dict[str, int]) -> bytes:
        """The Prometheus text of every live worker's totals (``busy``: this worker's requests
        in progress per routed endpoint)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(*self.gathered(busy)))
        return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, counts: dict[int, Counts], busy: dict[str, int]) -> None:
        self.counts = counts
        self.busy = busy

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "variant", "worker"]
        requests = CounterMetricFamily(
            "modelyard_gateway_requests",
            "Invocations answered by the gateway, by status class",
            labels=[*labels, "code"],
        )
        duration = HistogramMetricFamily(
            "modelyard_gateway_request_duration_seconds",
            "Time from an invocation's arrival at the gateway to its answer",
            labels=labels,
        )
        model = HistogramMetricFamily(
            "modelyard_gateway_model_duration_seconds",
            "Time a replica took to answer an invocation, from the gateway's request to its answer",
            labels=labels,
        )
        overhead = HistogramMetricFamily(
            "modelyard_gateway_overhead_duration_seconds",
            "An invocation's time at the gateway less the replica's (a cold-start hold included)",
            labels=labels,
        )
        cold = CounterMetricFamily(
            "modelyard_gateway_cold_starts",
            "Serverless invocations held while a replica started",
            labels=labels,
        )
        shadow = CounterMetricFamily(
            "modelyard_gateway_shadow_copies",
            "Copies of invocations for a shadow variant: answers that agreed or disagreed with "
            "production's, and copies shed while too many were in flight (its errors are in "
            "modelyard_gateway_requests)",
            labels=[*labels, "result"],
        )
        for endpoint, variant, worker, slot in sorted(
            (endpoint, variant, str(pid), slot)
            for pid, counts in self.counts.items()
            for endpoint, variants in counts.items()
            for variant, slot in variants.items()
        ):
            key = [endpoint, variant, worker]
            total, c4, c5 = slot[0], slot[1], slot[2]
            requests.add_metric([*key, "2xx"], total - c4 - c5)
            requests.add_metric([*key, "4xx"], c4)
            requests.add_metric([*key, "5xx"], c5)
            cold.add_metric(key, slot[3])
            compared = SLOT_SHADOW["shadow_compared"]
            if len(slot) > compared + 2 and (slot[compared] or slot[compared + 2]):
                agreed, shed = slot[compared + 1], slot[compared + 2]
                shadow.add_metric([*key, "agreed"], agreed)
                shadow.add_metric([*key, "disagreed"], slot[compared] - agreed)
                shadow.add_metric([*key, "shed"], shed)
            for family, at in (
                (duration, LATENCY_SUM),
                (model, MODEL_SUM),
                (overhead, OVERHEAD_SUM),
            ):
                family.add_metric(key, *_histogram(slot, at))
        in_progress = GaugeMetricFamily(
            "modelyard_gateway_requests_in_progress",
            "Invocations in progress at the gateway (serverless ones held for a replica included)",
            labels=["endpoint"],
        )
        for endpoint, n in sorted(self.busy.items()):
            in_progress.add_metric([endpoint], n)
        yield from (requests, duration, model, overhead, cold, shadow, in_progress)


def _histogram(slot: list[float], at: int) -> tuple[list[tuple[str, float]], float]:
    """The cumulative buckets (in seconds) and the sum of the slot's histogram at ``at`` (all
    zero when the slot ends before it: a worker file of an older gateway)."""
    values = slot[at + 2 : at + 2 + N_BUCKETS] or [0.0] * N_BUCKETS
    buckets, seen = [], 0.0
    for le, n in zip(_LE, values, strict=False):
        seen += n
        buckets.append((le, seen))
    return buckets, (slot[at] if len(slot) > at else 0.0) / 1000.0
