"""Async endpoints: the durable queue's dispatcher and the webhook notifier.

Every request the gateway accepted (with 202) ends with exactly one result (``<id>.out`` under the
output location) or one failure (``<id>.error`` under the failure location), whatever process
dies on the way:

- the gateway puts each accepted request in the inbox (:mod:`modelyard.inbox`) before it answers;
  the dispatcher moves inbox entries into the store's queue (a second read of an entry is
  recognised by its id);
- a request is claimed (``queued → running``, attempt + 1) with one conditional UPDATE, so two
  dispatches never share it, and finished the same way (only the dispatch of the current attempt
  may finish it);
- the input streams from storage to a replica's ``POST /invocations`` and the answer streams to
  the output location: no payload is held whole in memory;
- a replica that dies mid-request puts it back in the queue (a request fails after
  :data:`MAX_TRIES` replicas died under it; a replica stopped on purpose costs no try); a control
  plane that dies leaves requests ``running``, and the next one puts them back when it starts; a
  dispatch whose outcome could not be recorded (the store failed) is put back the same way;
  result and failure files are written whole under fixed names, and finishing removes the other
  kind, so a request run twice still leaves exactly one of them;
- a request still queued after ``request_ttl_s`` fails as expired.

Finishing a request also writes its notifications (an outbox in the same transaction; an alarm's
change of state writes its own there too); the notifier delivers them, signed
(:mod:`modelyard.webhooks`), with retries and backoff, on threads of its own so an unreachable
receiver never holds up the queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from modelyard import inbox, storage, webhooks
from modelyard.controlplane.store.repo import AsyncRecord, NotificationRecord, Store
from modelyard.errors import ModelyardError, StoreError

log = logging.getLogger("modelyard.async")

#: Replicas that may die under one request before it fails.
MAX_TRIES = 3
_CHUNK = 1024 * 1024
_ERROR_BODY_MAX = 64 * 1024
#: Seconds between a notification's delivery tries (then it is given up).
NOTIFY_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
NOTIFY_TIMEOUT_S = 5.0
#: A notification in delivery is not picked again for this long (connect, send and read may each
#: take up to the timeout).
_LEASE_S = 3 * NOTIFY_TIMEOUT_S + 5.0
#: How often finished requests past their retention are forgotten.
SWEEP_EVERY_S = 60.0
#: A partial file this old has no writer left (uploads and answers take at most about an hour).
PARTIAL_FILES_KEPT_S = 6 * 3600.0
#: How long a replica that dropped a request is left out of dispatch.
GONE_FOR_S = 5.0


#: Recording an outcome is retried through a passing store error (a locked SQLite database, a
#: PostgreSQL reconnect); if it still fails the request stays ``running`` and is put back.
def _passing(exc: BaseException) -> bool:
    """A store error that a moment later may not repeat (a lock, a lost connection)."""
    return isinstance(exc, StoreError) and isinstance(
        exc.__cause__, OperationalError | InterfaceError
    )


_store_retry = retry(
    retry=retry_if_exception(_passing),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.05, max=2.0),
    reraise=True,
)


def locations(spec: dict[str, Any], endpoint: str, state_dir: Path) -> dict[str, str]:
    """Where an async endpoint's inputs (uploaded with the request), results and failures go."""
    cfg = spec.get("async") or {}
    root = f"file://{(state_dir / 'async' / endpoint).resolve()}"
    output = cfg.get("output_uri") or f"{root}/output"
    return {
        "input": f"{root}/input",
        "output": output,
        "failure": cfg.get("failure_uri") or output,
    }


def result_uri(prefix: str, inference_id: str) -> str:
    return storage.join(prefix, f"{inference_id}.out")


def failure_uri(prefix: str, inference_id: str) -> str:
    return storage.join(prefix, f"{inference_id}.error")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _Target:
    """An async endpoint as the dispatcher sees it in one tick."""

    name: str
    cfg: dict[str, Any]
    replicas: list[tuple[str, str]]  # (replica id, address) of ready replicas


class _Replaced(Exception):
    """The replica went away under a request (or before it): it goes back in the queue."""

    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        #: whether the request reached the replica (a try is used up only then)
        self.reached = reached


class AsyncQueue:
    def __init__(
        self,
        store: Store,
        inbox_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        wake_controller: threading.Event | None = None,
        max_workers: int = 64,
        retention_s: float = 7 * 24 * 3600.0,
        state_dir: Path = Path(".modelyard"),
    ) -> None:
        self.store = store
        self.inbox_dir = inbox_dir
        self.state_dir = state_dir
        self.clock = clock
        self.wake = threading.Event()
        self.wake_controller = wake_controller
        self.dispatcher_id = secrets.token_hex(8)
        self.retention_s = retention_s
        self._next_sweep = 0.0
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="async-dispatch")
        self._inflight: dict[str, int] = {}  # replica id → requests sent to it
        #: the requests this dispatcher is running: id → the attempt being run
        self._running: dict[str, int] = {}
        #: replicas found gone (address → until when): skipped for a while, time for the
        #: controller to notice and replace them, instead of burning requests' tries on them
        self._gone: dict[str, float] = {}
        self._lock = threading.Lock()
        self._io_loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._recovered = False

    # start-up ------------------------------------------------------------------------------
    def recover(self) -> int:
        """Put back requests a previous control plane was running when it stopped."""
        count = 0
        with self.store.tx() as repo:
            for job in repo.list_async(states=("running",), limit=100_000):
                if job.dispatcher == self.dispatcher_id:
                    continue
                # No try is counted: no replica failed it.
                if repo.update_async_if(
                    job.id,
                    "running",
                    job.attempt,
                    state="queued",
                    replica_id=None,
                    message="the control plane restarted while it ran; queued again",
                ):
                    count += 1
            if count:
                log.info("requeued %d async requests left running by the last control plane", count)
        return count

    # one pass ------------------------------------------------------------------------------
    def tick(self) -> None:
        if not self._recovered:
            self.recover()
            self._recovered = True
        if self.ingest() and self.wake_controller is not None:
            self.wake_controller.set()  # scale from zero now, not at the next interval
        self.expire()
        self.dispatch()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY_S
            self.sweep()

    def sweep(self) -> None:
        """Retention: forget requests finished longer than ``retention_s`` ago, and clean the
        server's own upload folders of what crashes left (after :data:`PARTIAL_FILES_KEPT_S`)."""
        with self.store.tx() as repo:
            forgotten = repo.purge_async(self.clock() - self.retention_s)
            where = [
                locations(rev.spec, e.name, self.state_dir)
                for e in repo.list_endpoints()
                if e.active_revision is not None
                and (rev := repo.get_revision(e.name, e.active_revision)) is not None
                and rev.spec.get("type") == "async"
            ]
            pending = repo.pending_async_ids()
        pending |= {entry["id"] for _, entry in inbox.entries(self.inbox_dir, limit=10**6)}
        cutoff = time.time() - PARTIAL_FILES_KEPT_S
        # Only the folders the server owns (uploaded inputs), never a user's result folders.
        for folder in {storage.local_path(w["input"]) for w in where}:
            with contextlib.suppress(OSError):
                for path in Path(folder).iterdir():
                    # Partial uploads of a crashed gateway, and inputs whose request ended
                    # without removing them (a crash in between).
                    partial = path.name.startswith(".") and path.name.endswith(".part")
                    orphan = not path.name.startswith(".") and path.name not in pending
                    if (partial or orphan) and path.is_file():
                        with contextlib.suppress(OSError):
                            if path.stat().st_mtime < cutoff:
                                path.unlink()
        if forgotten:
            log.info(
                "forgot %d async requests finished over %.0f s ago", forgotten, self.retention_s
            )

    def ingest(self) -> int:
        """Move inbox entries into the queue; returns how many were new."""
        added = 0
        for path, entry in inbox.entries(self.inbox_dir):
            try:
                added += self._ingest_one(entry)
            except (KeyError, ValueError, TypeError) as exc:
                log.error("async inbox entry %s is malformed (%r); set aside", path.name, exc)
                inbox.set_aside(path)
                continue
            inbox.done(path)
        return added

    def _ingest_one(self, entry: dict[str, Any]) -> int:
        with self.store.tx() as repo:
            endpoint = repo.get_endpoint(entry["endpoint"])
            rev = (
                repo.get_revision(endpoint.name, endpoint.target_revision)
                if endpoint is not None
                else None
            )
            ttl = float((rev.spec.get("async") or {}).get("request_ttl_s", 21600)) if rev else 0
            if entry.get("request_ttl_s"):
                ttl = float(entry["request_ttl_s"])
            received = float(entry["received_at"])
            new = repo.add_async(
                id=str(entry["id"]),
                endpoint=str(entry["endpoint"]),
                input_uri=str(entry["input_uri"]),
                input_owned=bool(entry.get("input_owned")),
                input_bytes=entry.get("input_bytes"),
                content_type=entry.get("content_type", ""),
                accept=entry.get("accept", ""),
                custom_attributes=entry.get("custom_attributes", ""),
                client_inference_id=entry.get("client_inference_id", ""),
                output_location=str(entry["output_location"]),
                failure_location=str(entry["failure_location"]),
                created_at=received,
                expires_at=received + ttl,
                timeout_s=entry.get("invocation_timeout_s"),
            )
            if new and endpoint is not None:
                repo.touch_endpoints([endpoint.name], self.clock())
        if new and (endpoint is None or endpoint.deleting):
            job = self._get(entry["id"])
            if job is not None:
                self._fail(job, job.attempt, "the endpoint was deleted before it ran", "queued")
        return 1 if new else 0

    def expire(self) -> None:
        """Fail requests that waited past their TTL, and those of endpoints being deleted."""
        now = self.clock()
        with self.store.tx() as repo:
            orphans = [
                job
                for e in repo.list_endpoints()
                if e.deleting
                for job in repo.list_async(e.name, ("queued",), limit=1000)
            ]
            stale = repo.list_async(states=("queued",), limit=1000, expires_before=now)
            mine = repo.list_async(states=("running",), limit=1000, dispatcher=self.dispatcher_id)
        with self._lock:
            stranded = [job for job in mine if self._running.get(job.id) != job.attempt]
        for job in stranded:  # its outcome could not be recorded: run it again (a try)
            with self.store.tx() as repo:
                repo.update_async_if(
                    job.id,
                    "running",
                    job.attempt,
                    state="queued",
                    tries=job.tries + 1,
                    replica_id=None,
                    message="its outcome could not be recorded; queued again",
                )
        for job in orphans:
            self._fail(job, job.attempt, "the endpoint was deleted before it ran", "queued")
        orphaned = {job.id for job in orphans}
        for job in stale:
            if job.id in orphaned:
                continue
            waited = now - job.created_at
            self._fail(
                job,
                job.attempt,
                f"expired: still queued after {waited:.0f} s (the endpoint's request_ttl_s is "
                f"{job.expires_at - job.created_at:.0f} s)",
                state="queued",
            )

    def _targets(self) -> list[_Target]:
        now = time.monotonic()
        with self._lock:
            self._gone = {a: until for a, until in self._gone.items() if until > now}
            gone = set(self._gone)
        targets = []
        with self.store.tx() as repo:
            for endpoint in repo.list_endpoints():
                if endpoint.deleting or endpoint.active_revision is None:
                    continue
                rev = repo.get_revision(endpoint.name, endpoint.active_revision)
                if rev is None or rev.spec.get("type") != "async":
                    continue
                ready = [
                    (r.id, r.address)
                    for r in repo.list_replicas(endpoint.name)
                    if r.state == "ready"
                    and r.revision == rev.number
                    and r.address
                    and r.address not in gone
                ]
                targets.append(_Target(endpoint.name, rev.spec["async"], ready))
        return targets

    def dispatch(self) -> None:
        for target in self._targets():
            per_replica = int(target.cfg["max_concurrent_invocations_per_instance"])
            with self._lock:
                free = {rid: per_replica - self._inflight.get(rid, 0) for rid, _ in target.replicas}
            room = sum(max(0, n) for n in free.values())
            if room <= 0:
                continue
            with self.store.tx() as repo:
                queued = repo.list_async(target.name, ("queued",), limit=room)
            addresses = dict(target.replicas)
            for job in queued:
                if job.tries >= MAX_TRIES:  # (only a queued request: nobody is running it)
                    self._fail(job, job.attempt, f"{job.message}; gave up", state="queued")
                    continue
                rid = max(free, key=lambda r: free[r])
                if free[rid] <= 0:
                    break
                attempt = job.attempt + 1
                with self.store.tx() as repo:
                    claimed = repo.update_async_if(
                        job.id,
                        "queued",
                        job.attempt,
                        state="running",
                        attempt=attempt,
                        started_at=self.clock(),
                        replica_id=rid,
                        dispatcher=self.dispatcher_id,
                    )
                if not claimed:
                    continue
                free[rid] -= 1
                with self._lock:
                    self._inflight[rid] = self._inflight.get(rid, 0) + 1
                    self._running[job.id] = attempt
                self._pool.submit(self._run, job, attempt, rid, addresses[rid], dict(target.cfg))

    # one request ---------------------------------------------------------------------------
    def _run(
        self, job: AsyncRecord, attempt: int, rid: str, address: str, cfg: dict[str, Any]
    ) -> None:
        try:
            self._invoke(job, attempt, address, cfg)
        except Exception as exc:
            if self._closing:
                pass  # the server stops: the request stays running; the next start requeues it
            elif isinstance(exc, _Replaced):
                with self._lock:
                    self._gone[address] = time.monotonic() + GONE_FOR_S
                counts = exc.reached and not self._stopped_on_purpose(rid)
                self._attempt_to(self._requeue, job, attempt, str(exc), counts=counts)
            elif isinstance(exc, StoreError):
                log.error("recording async request %s failed (queued again soon): %s", job.id, exc)
            else:  # a defect: fail the request rather than lose it
                log.exception("async request %s failed unexpectedly", job.id)
                self._attempt_to(
                    self._fail, job, attempt, f"internal error: {type(exc).__name__}: {exc}"
                )
        finally:
            with self._lock:
                if self._running.get(job.id) == attempt:
                    del self._running[job.id]
                left = self._inflight.get(rid, 1) - 1
                if left > 0:
                    self._inflight[rid] = left
                else:
                    self._inflight.pop(rid, None)
            self.wake.set()

    def _attempt_to(self, finish: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            finish(*args, **kwargs)
        except StoreError as exc:  # left running: expire() puts it back
            log.error("recording an async outcome failed (queued again soon): %s", exc)

    def _stopped_on_purpose(self, replica_id: str) -> bool:
        """Whether the controller was stopping the replica (scale-in, a new revision): a request
        cut off by that costs no try."""
        with self.store.tx() as repo:
            found = [r for r in repo.list_replicas() if r.id == replica_id]
        return not found or found[0].state == "stopping"

    def _invoke(self, job: AsyncRecord, attempt: int, address: str, cfg: dict[str, Any]) -> None:
        timeout_s = float(job.timeout_s or cfg["invocation_timeout_s"])
        headers = {"content-type": job.content_type or "application/json"}
        if job.accept:
            headers["accept"] = job.accept
        if job.custom_attributes:
            headers["x-amzn-sagemaker-custom-attributes"] = job.custom_attributes
        headers["x-amzn-sagemaker-inference-id"] = job.client_inference_id or job.id
        if job.input_bytes is not None:
            headers["content-length"] = str(job.input_bytes)
        exchange = self._exchange(job, f"{address}/invocations", headers, timeout_s)
        outcome = asyncio.run_coroutine_threadsafe(exchange, self._loop()).result()
        if isinstance(outcome, str):
            self._fail(job, attempt, outcome)
        else:
            self._succeed(job, attempt, *outcome)

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the exchanges with replicas run on (started on first use)."""
        with self._lock:
            if self._io_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="async-io", daemon=True).start()
                self._io_loop = loop
            return self._io_loop

    async def _exchange(
        self, job: AsyncRecord, url: str, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, str] | str:
        """Stream the input to the replica while streaming its answer to the result location
        (both at once: a replica answers a big line-oriented body as it reads it, so a client
        that sent everything before reading would stall it). Returns ``(size, content type)``,
        or the reason the request failed; raises :class:`_Replaced` when the replica went away.
        """
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
            )
        try:
            source = await loop.run_in_executor(None, storage.open_read, job.input_uri)
        except (OSError, ValueError, ModelyardError) as exc:
            return f"cannot read the input at {job.input_uri}: {exc}"
        answered = False
        read_error: list[BaseException] = []

        async def body() -> AsyncIterator[bytes]:
            while True:
                try:
                    chunk = await loop.run_in_executor(None, source.read, _CHUNK)
                except OSError as exc:
                    read_error.append(exc)
                    raise
                if not chunk:
                    return
                yield chunk

        out_uri = result_uri(job.output_location, job.id)
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5.0)
        try:
            async with self._session.post(
                url, data=body(), headers=headers, timeout=timeout
            ) as resp:
                answered = True
                if resp.status >= 300:
                    detail = _error_detail(await resp.content.read(_ERROR_BODY_MAX))
                    return f"the model answered {resp.status}: {detail}"
                writer = storage.atomic_write(out_uri)
                sink = await loop.run_in_executor(None, writer.__enter__)
                size = 0
                try:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        await loop.run_in_executor(None, sink.write, chunk)
                        size += len(chunk)
                except BaseException as exc:
                    await loop.run_in_executor(None, writer.__exit__, type(exc), exc, None)
                    raise
                await loop.run_in_executor(None, writer.__exit__, None, None, None)
                return size, resp.headers.get("content-type", "")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _Replaced("the replica could not be reached", reached=False) from exc
        except TimeoutError:
            return f"the model did not answer within {timeout_s:g} s"
        except (aiohttp.ClientError, ConnectionError) as exc:
            if read_error:
                return f"cannot read the input at {job.input_uri}: {read_error[0]}"
            if answered and await self._alive(url):
                # The replica is up and cut its own answer off: the model failed part-way.
                return (
                    "the model failed part-way through its answer (the replica's log says why: "
                    f"modelyard logs {job.endpoint})"
                )
            raise _Replaced(
                f"the replica went away while it ran ({type(exc).__name__})", reached=True
            ) from exc
        except OSError as exc:
            if read_error:
                return f"cannot read the input at {job.input_uri}: {read_error[0]}"
            return f"cannot write the result to {out_uri}: {exc}"
        finally:
            await loop.run_in_executor(None, source.close)

    async def _alive(self, invocations_url: str) -> bool:
        assert self._session is not None
        ping = invocations_url.rsplit("/", 1)[0] + "/ping"
        try:
            async with self._session.get(ping, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            return False

    # finishing -----------------------------------------------------------------------------
    def _get(self, inference_id: str) -> AsyncRecord | None:
        with self.store.tx() as repo:
            return repo.get_async(inference_id)

    @_store_retry
    def _succeed(self, job: AsyncRecord, attempt: int, size: int, content_type: str) -> None:
        # A failure file from an earlier attempt would make two outcomes: remove it first.
        _remove(failure_uri(job.failure_location, job.id))
        now = self.clock()
        try:
            inline = self._inline(job, size)
        except (OSError, ValueError, ModelyardError) as exc:
            log.warning("cannot inline the result of %s in its notification: %s", job.id, exc)
            inline = None
        with self.store.tx() as repo:
            if not repo.update_async_if(
                job.id,
                "running",
                attempt,
                state="succeeded",
                finished_at=now,
                output_bytes=size,
                message="",
            ):
                return
            self._notify(repo, job, "Completed", now, content_type=content_type, inline=inline)
            repo.touch_endpoints([job.endpoint], now)
        self._drop_input(job)

    @_store_retry
    def _fail(self, job: AsyncRecord, attempt: int, reason: str, state: str = "running") -> None:
        now = self.clock()
        _remove(result_uri(job.output_location, job.id))
        error = {
            "inferenceId": job.id,
            "endpointName": job.endpoint,
            "failureReason": reason,
            "inputLocation": job.input_uri,
            "receivedTime": _iso(job.created_at),
            "failedTime": _iso(now),
        }
        try:
            with storage.atomic_write(failure_uri(job.failure_location, job.id)) as sink:
                sink.write(json.dumps(error, indent=2).encode() + b"\n")
        except (OSError, ValueError, ModelyardError) as exc:
            log.error("cannot write the failure of %s: %s", job.id, exc)
            reason += f" (and the failure file could not be written: {exc})"
        with self.store.tx() as repo:
            if not repo.update_async_if(
                job.id, state, attempt, state="failed", finished_at=now, message=reason
            ):
                return
            self._notify(repo, job, "Failed", now, reason=reason)
            repo.touch_endpoints([job.endpoint], now)
        self._drop_input(job)

    @_store_retry
    def _requeue(self, job: AsyncRecord, attempt: int, reason: str, *, counts: bool) -> None:
        tries = job.tries + (1 if counts else 0)
        if tries >= MAX_TRIES:
            self._fail(job, attempt, f"{reason}; gave up after {tries} tries")
            return
        message = f"{reason}; queued again" + (f" (try {tries} of {MAX_TRIES})" if counts else "")
        with self.store.tx() as repo:
            repo.update_async_if(
                job.id,
                "running",
                attempt,
                state="queued",
                tries=tries,
                replica_id=None,
                message=message,
            )
        self.wake.set()

    def _drop_input(self, job: AsyncRecord) -> None:
        if job.input_owned:
            with contextlib.suppress(OSError, ValueError, ModelyardError):
                storage.remove(job.input_uri)

    def _inline(self, job: AsyncRecord, size: int) -> bytes | None:
        """The result, for a notification that carries it (small results, when asked)."""
        with self.store.tx() as repo:
            endpoint = repo.get_endpoint(job.endpoint)
            rev = (
                repo.get_revision(job.endpoint, endpoint.active_revision)
                if endpoint is not None and endpoint.active_revision is not None
                else None
            )
        cfg = (rev.spec.get("async") or {}) if rev else {}
        notifications = cfg.get("notifications") or {}
        limit = int(notifications.get("include_response_inline_max_kb", 0)) * 1024
        if not notifications.get("success") or size > limit:
            return None
        with storage.open_read(result_uri(job.output_location, job.id)) as fh:
            data: bytes = fh.read(limit + 1)
        return data if len(data) <= limit else None

    def _notify(
        self,
        repo: Any,
        job: AsyncRecord,
        status: str,
        now: float,
        *,
        content_type: str = "",
        inline: bytes | None = None,
        reason: str = "",
    ) -> None:
        endpoint = repo.get_endpoint(job.endpoint)
        if endpoint is None or endpoint.active_revision is None:
            return
        rev = repo.get_revision(job.endpoint, endpoint.active_revision)
        notifications = ((rev.spec.get("async") or {}) if rev else {}).get("notifications") or {}
        urls = notifications.get("success" if status == "Completed" else "error") or []
        if not urls:
            return
        message: dict[str, Any] = {
            "eventVersion": "1.0",
            "eventSource": "modelyard",
            "eventName": "InferenceResult",
            "eventTime": _iso(now),
            "receivedTime": _iso(job.created_at),
            "invocationStatus": status,
            "inferenceId": job.id,
            "endpointName": job.endpoint,
            "requestParameters": {
                "contentType": job.content_type,
                "inputLocation": job.input_uri,
                "customAttributes": job.custom_attributes,
                "clientInferenceId": job.client_inference_id,
            },
        }
        if status == "Completed":
            message["responseParameters"] = {
                "contentType": content_type,
                "outputLocation": result_uri(job.output_location, job.id),
            }
            if inline is not None:
                message["responseBody"] = {
                    "content": base64.b64encode(inline).decode(),
                    "encoding": "BASE64",
                }
        else:
            message["failureReason"] = reason
            message["failureLocation"] = failure_uri(job.failure_location, job.id)
        body = json.dumps(message)
        for url in urls:
            repo.add_notification(
                job.endpoint, job.id, str(url), body, endpoint.webhook_secret, now
            )

    # the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # keep the dispatcher alive; the next tick retries
                log.exception("async dispatch tick failed")
            self.wake.wait(interval_s)
            self.wake.clear()

    def close(self) -> None:
        """At shutdown: requests in progress stay ``running`` (the next start requeues them)."""
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        loop = self._io_loop
        if loop is None:
            return

        async def wind_down() -> None:  # the exchanges end, so their threads are free to exit
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(wind_down(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


def _remove(uri: str) -> None:
    """Remove a file of an earlier attempt; a storage that refuses is logged, not fatal."""
    try:
        storage.remove(uri)
    except (OSError, ValueError, ModelyardError) as exc:
        log.warning("cannot remove %s: %s", uri, exc)


def _error_detail(data: bytes) -> str:
    text = data[:_ERROR_BODY_MAX].decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        parsed = json.loads(text)
        return str(parsed["error"]["message"])
    return text.strip() or "(no body)"


class Notifier:
    """Delivers the notification outbox: signed, retried with backoff, never blocking."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        backoff_s: tuple[float, ...] = NOTIFY_BACKOFF_S,
        workers: int = 8,
    ) -> None:
        self.store = store
        self.clock = clock
        self.backoff_s = backoff_s
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="webhook")
        self._http = httpx.Client(trust_env=False, timeout=NOTIFY_TIMEOUT_S)
        self._busy: set[int] = set()
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = self.clock()
        with self._lock:
            free = self.workers - len(self._busy)
        if free <= 0:
            return
        with self.store.tx() as repo:
            due = [n for n in repo.due_notifications(now, free + len(self._busy))]
            due = [n for n in due if n.id not in self._busy][:free]
            for note in due:  # leased while in flight (a crash lets it go after the lease)
                repo.update_notification(note.id, next_at=now + _LEASE_S)
        for note in due:
            with self._lock:
                self._busy.add(note.id)
            self._pool.submit(self._deliver, note, note.secret)

    def _deliver(self, note: NotificationRecord, secret: str) -> None:
        try:
            body = note.body.encode()
            headers = {
                "content-type": "application/json",
                "user-agent": "modelyard-webhooks",
                webhooks.SIGNATURE_HEADER: webhooks.sign(secret, body),
                "x-modelyard-delivery": str(note.id),
            }
            try:
                resp = self._http.post(note.url, content=body, headers=headers)
                error = "" if resp.is_success else f"answered {resp.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._record(note, error)
        except Exception:  # the lease runs out and the next tick tries again
            log.exception("delivering notification %d failed", note.id)
        finally:
            with self._lock:
                self._busy.discard(note.id)

    def _record(self, note: NotificationRecord, error: str) -> None:
        now = self.clock()
        attempts = note.attempts + 1
        with self.store.tx() as repo:
            if not error:
                repo.update_notification(note.id, state="delivered", attempts=attempts)
                return
            if attempts >= len(self.backoff_s) + 1:
                repo.update_notification(
                    note.id, state="failed", attempts=attempts, last_error=error
                )
                about = f"alarm {note.alarm}" if note.alarm else note.inference_id
                repo.add_event(
                    note.endpoint,
                    f"webhook {note.url} for {about} given up after {attempts} tries: {error}",
                    now,
                )
                return
            repo.update_notification(
                note.id,
                attempts=attempts,
                last_error=error,
                next_at=now + self.backoff_s[attempts - 1],
            )

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("notifier tick failed")
            stop.wait(interval_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
