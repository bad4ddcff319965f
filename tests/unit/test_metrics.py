"""The control plane's Prometheus exposition, read back with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.controlplane.metrics import registry
from modelyard.controlplane.store.repo import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    s.migrate()
    yield s
    s.close()


def samples(store: Store, now: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry(store, clock=lambda: now)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_cold_starts_replicas_and_the_async_backlog(store: Store) -> None:
    with store.tx() as repo:
        for name in ("sl", "q", "idle"):
            repo.create_endpoint(name, 1.0)
        repo.add_revision("idle", 1, {"type": "async", "variants": []}, {}, 1.0)
        repo.update_endpoint("idle", 1.0, target_revision=1, active_revision=1)
        repo.add_counts("sl", "v", 10, 2, 1, 5.0, cold_starts=3, cold_start_ms=240.0)
        repo.add_replica(id="r1", endpoint="sl", revision=1, variant="v", state="ready")
        repo.add_replica(id="r2", endpoint="sl", revision=1, variant="v", state="starting")
        for inference_id, state, created in (("a", "queued", 90.0), ("b", "queued", 95.0)):
            repo.add_async(
                id=inference_id,
                endpoint="q",
                input_uri="x",
                output_location="x",
                failure_location="x",
                created_at=created,
                expires_at=1e9,
                state=state,
            )
    found = samples(store, now=100.0)

    def at(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    ev = {"endpoint": "sl", "variant": "v"}
    assert at("modelyard_invocations_total", **ev) == 10
    assert at("modelyard_invocation_errors_total", **ev, **{"class": "4xx"}) == 2
    assert at("modelyard_invocation_errors_total", **ev, **{"class": "5xx"}) == 1
    assert at("modelyard_cold_starts_total", **ev) == 3
    assert at("modelyard_cold_start_hold_seconds_total", **ev) == pytest.approx(0.24)
    assert at("modelyard_replicas", **ev, state="ready") == 1
    assert at("modelyard_replicas", **ev, state="starting") == 1
    assert at("modelyard_async_backlog", endpoint="q", state="queued") == 2
    assert at("modelyard_async_backlog", endpoint="q", state="running") == 0
    assert at("modelyard_async_oldest_queued_age_seconds", endpoint="q") == pytest.approx(10.0)
    # An async endpoint with an empty queue reads 0 (a series that vanished would break alerts).
    assert at("modelyard_async_backlog", endpoint="idle", state="queued") == 0
    assert at("modelyard_async_oldest_queued_age_seconds", endpoint="idle") == 0
