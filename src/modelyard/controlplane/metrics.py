"""``GET /metrics`` on the control plane: what the store knows, in Prometheus' text format.

Read from the store at each scrape (a custom collector, no state kept here): invocation and error
counts per endpoint and variant (summed from the gateways' reports), serverless cold starts and
the time requests were held for them, replicas by state, and each async endpoint's backlog and
the age of its oldest queued request.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.controlplane.store.repo import Store


class StoreCollector(Collector):
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        with self.store.tx() as repo:
            counts = repo.list_counts()
            replicas = repo.list_replicas()
            backlog = repo.backlog()
            async_names = [
                e.name
                for e in repo.list_endpoints()
                if e.active_revision is not None
                and (rev := repo.get_revision(e.name, e.active_revision)) is not None
                and rev.spec.get("type") == "async"
            ]
        labels = ["endpoint", "variant"]
        invocations = CounterMetricFamily(
            "modelyard_invocations", "Invocations answered by the gateway", labels=labels
        )
        errors = CounterMetricFamily(
            "modelyard_invocation_errors",
            "Invocations answered with an error, by status class",
            labels=[*labels, "class"],
        )
        cold = CounterMetricFamily(
            "modelyard_cold_starts",
            "Serverless requests that arrived with no replica ready and were held for one",
            labels=labels,
        )
        held = CounterMetricFamily(
            "modelyard_cold_start_hold_seconds",
            "Time serverless requests were held while a replica started",
            labels=labels,
        )
        for c in counts:
            invocations.add_metric([c.endpoint, c.variant], c.invocations)
            errors.add_metric([c.endpoint, c.variant, "4xx"], c.errors_4xx)
            errors.add_metric([c.endpoint, c.variant, "5xx"], c.errors_5xx)
            cold.add_metric([c.endpoint, c.variant], c.cold_starts)
            held.add_metric([c.endpoint, c.variant], c.cold_start_ms / 1000.0)
        yield from (invocations, errors, cold, held)

        by_state = Counter((r.endpoint, r.variant, r.state) for r in replicas)
        replica_gauge = GaugeMetricFamily(
            "modelyard_replicas", "Replicas by state", labels=[*labels, "state"]
        )
        for (endpoint, variant, state), n in sorted(by_state.items()):
            replica_gauge.add_metric([endpoint, variant, state], n)
        yield replica_gauge

        queued = GaugeMetricFamily(
            "modelyard_async_backlog",
            "Async requests accepted and not finished, by state",
            labels=["endpoint", "state"],
        )
        age = GaugeMetricFamily(
            "modelyard_async_oldest_queued_age_seconds",
            "Age of the oldest async request still queued (0 when none is)",
            labels=["endpoint"],
        )
        now = self.clock()
        for name in sorted({*async_names, *backlog}):  # an empty queue reads 0, not absent
            entry = backlog.get(name)
            queued.add_metric([name, "queued"], entry.queued if entry else 0)
            queued.add_metric([name, "running"], entry.running if entry else 0)
            oldest = entry.oldest_queued_at if entry else None
            age.add_metric([name], max(0.0, now - oldest) if oldest is not None else 0.0)
        yield from (queued, age)


def registry(store: Store, clock: Callable[[], float] = time.time) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(store, clock))
    return reg
