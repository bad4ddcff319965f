"""Batch sizes, read from the replicas' own ``GET /metrics``.

Each Modelyard model server counts its model calls and their rows in the Prometheus histogram
``modelyard_replica_batch_size`` (dataplane/modelserver.py; no token needed). At each sample the
recorder scrapes every ready replica at once, with a short timeout, and records what changed
since the previous scrape of that replica as one ``batch_size`` point (count: model calls, sum:
rows; :func:`batch_delta`). The first scrape of a replica only remembers its totals — unless
its process started after the control plane's, so that none of them can have been recorded
before: then they all count (a new replica's first requests are not lost); a restarted process
(or totals that went down) counts from zero; replicas gone are forgotten. A replica without
that histogram (a bring-your-own container, whose ``/metrics`` may not exist) is skipped
quietly, and not asked again. The point lands in the 10 s interval of the scrape.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from modelyard.controlplane.store.repo import ReplicaRecord

log = logging.getLogger("modelyard.metrics")

FAMILY = "modelyard_replica_batch_size"
#: a scrape's timeout, and the most a sample waits for all of them
TIMEOUT_S = 1.0
WORKERS = 8


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """A replica's batch-size histogram totals at one scrape. ``process``: when its process
    started (another value is a restart)."""

    process: float | None
    calls: float
    rows: float


def batch_delta(
    before: BatchTotals | None, after: BatchTotals, since: float | None = None
) -> tuple[float, float] | None:
    """(model calls, rows) between two scrapes of a replica. At its first scrape (``before``
    None): all of its totals when its process started at or after ``since`` (the recorder's
    process start: nothing of it was recorded before), else None (a replica adopted after a
    control-plane restart: they may have been). A new process, or totals that went down, is a
    restart: everything its totals count happened since."""
    if before is None:
        if since is not None and after.process is not None and after.process >= since:
            return after.calls, after.rows
        return None
    if after.process != before.process or after.calls < before.calls or after.rows < before.rows:
        return after.calls, after.rows
    return after.calls - before.calls, after.rows - before.rows


def parse_totals(text: str) -> tuple[float, float] | None:
    """(count, sum) of ``modelyard_replica_batch_size`` in a Prometheus exposition; None when it
    is not there (or the text is not Prometheus')."""
    try:
        for family in text_string_to_metric_families(text):
            if family.name != FAMILY:
                continue
            found = {s.name: s.value for s in family.samples if not s.labels.get("le")}
            calls, rows = found.get(f"{FAMILY}_count"), found.get(f"{FAMILY}_sum")
            if calls is not None and rows is not None:
                return calls, rows
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return None


class BatchScraper:
    """Scrapes replicas' batch sizes, remembering each one's totals between samples. ``since``:
    replicas whose process started then or later are new (default: when this process started)."""

    def __init__(self, timeout_s: float = TIMEOUT_S, since: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.since = psutil.Process().create_time() if since is None else since
        self._totals: dict[str, BatchTotals] = {}
        #: replicas whose /metrics has no batch sizes: never asked again
        self._without: set[str] = set()
        self._http: httpx.Client | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def read(self, replicas: Iterable[ReplicaRecord]) -> dict[str, tuple[float, float]]:
        """Model calls and rows per replica since its previous scrape, of the ready replicas
        ``replicas`` that answered within the timeout (at most about ``timeout_s`` in all)."""
        ready = {r.id: r for r in replicas if r.state == "ready"}
        for gone in set(self._totals) - set(ready):
            del self._totals[gone]
        self._without &= set(ready)
        wanted = [
            r
            for r in ready.values()
            if r.id not in self._without and (r.address or "").startswith(("http://", "https://"))
        ]
        if not wanted:
            return {}
        pool = self._executor()
        futures = {pool.submit(self._get, r.address or ""): r for r in wanted}
        done, _ = concurrent.futures.wait(futures, timeout=self.timeout_s + 0.5)
        out: dict[str, tuple[float, float]] = {}
        for future in done:
            replica = futures[future]
            text = future.result()
            if text is None:
                continue  # no answer this time: its totals wait for the next sample
            totals = parse_totals(text)
            if totals is None:
                log.debug("replica %s has no %s: not scraped again", replica.id, FAMILY)
                self._without.add(replica.id)
                continue
            now = BatchTotals(replica.pid_started_at, *totals)
            delta = batch_delta(self._totals.get(replica.id), now, self.since)
            self._totals[replica.id] = now
            if delta is not None:
                out[replica.id] = delta
        return out

    def _get(self, address: str) -> str | None:
        """The text of ``address``/metrics; "" when there is none (404: not a model server),
        None when there is no answer this time (a timeout, an error status)."""
        assert self._http is not None
        try:
            resp = self._http.get(f"{address.rstrip('/')}/metrics")
            if resp.status_code in (404, 405):
                return ""
            resp.raise_for_status()
            return resp.text
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("scraping %s/metrics failed: %s", address, exc)
            return None

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._http = httpx.Client(timeout=self.timeout_s, trust_env=False)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                WORKERS, thread_name_prefix="modelyard-scrape"
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.close()
