"""The transform-jobs controller: runs each active job on temporary replicas, resumably.

One thread (with its own event loop) per running job:

1. **Claim** the job by raising its ``attempt``; every later write names that attempt, so a run
   that lost its claim (a control plane that came back) writes nothing. Replicas an earlier run
   left behind are killed.
2. **List and count** the input once (the counts are stored: a resumed job does not recount).
3. **Start** ``instance_count`` replicas of the model through the executor; wait for ``/ping``.
4. **Run** the mini-batches: a reader (a thread) cuts records into batches, ``instance_count ×
   max_concurrent_transforms`` senders post them to the least busy replica, and a committer
   writes the answers *in input order*. At most twice as many batches as senders are read ahead,
   so memory stays flat however large the input.
5. **Finish**: stop the replicas, publish the failure file, record the summary.

Exactly once: the committer appends a batch's output to its file's spool and fsyncs it, then
records in the store where the next record starts and how long the spool is. A run that resumes
truncates the spool to that length and reads on from there: a batch answered but not recorded
is redone and written once. A finished file's spool is renamed (local) or uploaded (object
stores) to ``<output>/<name>.out``, with the move recorded before and after, so it is done once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.controlplane.reconcile.endpoints import tail_lines
from modelyard.controlplane.store.repo import Store, TransformRecord
from modelyard.errors import ModelyardError, StoreError
from modelyard.executors.base import Executor, ReplicaLaunch, ReplicaProcess
from modelyard.spec import ModelSpec
from modelyard.spec.resources import TransformJobSpec
from modelyard.transform import source
from modelyard.transform.pipeline import (
    JobFailed,
    Pipeline,
    Shutdown,
    move_spool,
    publish_failures,
    spool_path,
)
from modelyard.transform.source import InputFile

log = logging.getLogger("modelyard.transform")

STOP_GRACE_S = 5.0


class StopAsked(Exception):
    """``transform stop`` came before the job's replicas were ready."""


@dataclass(slots=True)
class Replica:
    id: str
    proc: ReplicaProcess
    log_path: Path
    outstanding: int = 0
    #: answers /ping: only then is it sent batches
    ready: bool = False
    gone: bool = False


class TransformRunner:
    """Runs every active transform job; one :class:`JobRun` thread each."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        logs_dir: Path,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.executor = executor
        self.logs_dir = logs_dir
        self.work_dir = state_dir / "transform"
        self.clock = clock
        self.wake = threading.Event()
        self.shutdown = threading.Event()
        self.runs: dict[str, JobRun] = {}

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must survive a passing store error
                log.exception("transform tick failed")
            self.wake.wait(interval_s)
            self.wake.clear()

    def tick(self) -> None:
        with self.store.tx() as repo:
            active = repo.list_transforms(active_only=True)
        for name in [n for n, r in self.runs.items() if not r.thread.is_alive()]:
            del self.runs[name]
        for job in active:
            if job.name not in self.runs and not self.shutdown.is_set():
                run = JobRun(self, job.name)
                self.runs[job.name] = run
                run.thread.start()

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop running jobs without ending them: they resume when the control plane is back."""
        self.shutdown.set()
        deadline = time.monotonic() + timeout_s
        for run in list(self.runs.values()):
            run.thread.join(max(0.1, deadline - time.monotonic()))


class JobRun:
    def __init__(self, runner: TransformRunner, name: str) -> None:
        self.runner = runner
        self.store = runner.store
        self.executor = runner.executor
        self.name = name
        self.thread = threading.Thread(target=self.main, name=f"transform-{name}", daemon=True)
        self.log_dir = runner.logs_dir / "transform" / name
        self.work = runner.work_dir / name
        self.attempt = 0
        self.replicas: dict[str, Replica] = {}
        self.restarts = 0
        self.stopping = False
        #: the job is ending: replica starts stop waiting for readiness
        self.ending = False
        #: replacement replicas being started
        self.starting: set[asyncio.Future[None]] = set()
        self._started = time.monotonic()
        self._run_seconds_base = 0.0

    # -- the thread ---------------------------------------------------------------------------
    def main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # never let a job thread die silently
            log.exception("transform job %s crashed", self.name)

    async def _main(self) -> None:
        job = await asyncio.to_thread(self._claim)
        if job is None:
            return
        try:
            status, message = await self._execute(job)
        except (Shutdown, StoreError) as exc:
            # Nothing is undone: the job stays InProgress and a later run resumes it.
            why = "the control plane is stopping" if isinstance(exc, Shutdown) else str(exc)
            self.say(f"this run ends here ({why}); the job resumes from where it got")
            await self._stop_replicas(kill=True)
            return
        except StopAsked:
            status, message = "Stopped", ""
        except JobFailed as exc:
            status, message = "Failed", str(exc)
        except Exception as exc:
            log.exception("transform job %s failed", self.name)
            status, message = "Failed", f"internal error: {type(exc).__name__}: {exc}"
        await self._stop_replicas()
        try:
            await asyncio.to_thread(self._end, status, message)
        except (Shutdown, StoreError) as exc:
            self.say(f"could not record the job's end ({exc}); a later run ends it")

    def _end(self, status: str, message: str) -> None:
        """Record how the job ended, then tidy its files: the failures are published, and a
        file left half-written is removed — only once the ending is recorded, so that a run
        that resumes never finds its committed output gone."""
        with self.store.tx() as repo:
            job = repo.get_transform(self.name)
        if job is None or job.attempt != self.attempt:
            raise Shutdown()
        spec = TransformJobSpec.model_validate(job.spec)
        if status == "Stopped" and not message:
            message = f"stopped after {job.records_done} record(s)"
        publish_failures(spec, self.name, self.work, job.failure_bytes)
        self.say(f"{status}: {message}" if message else status)
        self._finish(status, message)
        files = job.files or []
        index = int(job.cursor.get("file", 0))
        if index < len(files):
            file = InputFile(files[index]["uri"], files[index]["name"], files[index]["size"])
            if job.cursor.get("finalizing"):  # the file was whole: publish it as the job would
                move_spool(spec, file, self.name, self.work, index)
            else:
                with contextlib.suppress(OSError):
                    spool_path(spec, file, self.name, self.work, index).unlink()
        shutil.rmtree(self.work, ignore_errors=True)

    def _claim(self) -> TransformRecord | None:
        with self.store.tx() as repo:
            job = repo.get_transform(self.name)
            if job is None or job.status not in ("InProgress", "Stopping"):
                return None
            self.attempt = job.attempt + 1
            now = self.runner.clock()
            repo.update_transform(
                self.name,
                if_attempt=job.attempt,
                attempt=self.attempt,
                started_at=job.started_at or now,
            )
        for old in job.replicas:  # left by a run that died with its control plane
            self.executor.signal(
                ReplicaProcess(old["pid"], old["started_at"], old["address"]), "kill"
            )
        self._run_seconds_base = job.run_seconds
        self.say(f"run {self.attempt} claimed the job" + (" (resuming)" if job.attempt else ""))
        return job

    def _finish(self, status: str, message: str) -> None:
        with self.store.tx() as repo:
            repo.update_transform(
                self.name,
                if_attempt=self.attempt,
                status=status,
                message=message,
                finished_at=self.runner.clock(),
                replicas=[],
                run_seconds=self._run_seconds(),
            )

    def _run_seconds(self) -> float:
        return self._run_seconds_base + (time.monotonic() - self._started)

    def say(self, message: str) -> None:
        """A line in the job's log (``transform logs``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(self.log_dir / "job.log", "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")

    def _write(self, **values: Any) -> None:
        """Progress, written only while this run holds the job; else it stops here."""
        with self.store.tx() as repo:
            if not repo.update_transform(self.name, if_attempt=self.attempt, **values):
                raise Shutdown()  # another run took the job over

    # -- the job ------------------------------------------------------------------------------
    async def _execute(self, job: TransformRecord) -> tuple[str, str]:
        spec = TransformJobSpec.model_validate(job.spec)
        model = ModelSpec.model_validate(job.model)
        if spec.environment:
            model = model.model_copy(
                update={"environment": {**model.environment, **spec.environment}}
            )
        self.work.mkdir(parents=True, exist_ok=True)
        if job.stop_requested:
            return "Stopped", ""
        files = job.files
        if files is None:
            self.say(f"listing and counting the records under {spec.input.uri}")
            files = await asyncio.to_thread(self._count, spec)
            total = sum(f["records"] for f in files)
            await asyncio.to_thread(self._write, files=files, total_records=total)
            self.say(f"{len(files)} file(s), {total} record(s)")
        inputs = [InputFile(f["uri"], f["name"], f["size"]) for f in files]
        await self._start_replicas(spec, model)
        run = Pipeline(self, spec, inputs, job)
        return await run.go()

    def _count(self, spec: TransformJobSpec) -> list[dict[str, Any]]:
        out = []
        try:
            for file in source.list_inputs(spec.input.uri):
                if self.runner.shutdown.is_set():
                    raise Shutdown()
                records = source.count_records(file, spec.input)
                out.append(
                    {"uri": file.uri, "name": file.name, "size": file.size, "records": records}
                )
        except (OSError, EOFError, ValueError) as exc:
            raise JobFailed(f"cannot read the input: {exc}") from exc
        return out

    # -- replicas -----------------------------------------------------------------------------
    async def _start_replicas(self, spec: TransformJobSpec, model: ModelSpec) -> None:
        self._spec, self._model = spec, model
        self.ready = asyncio.Condition()
        starts = [self._start_one() for _ in range(spec.instance_count)]
        # Every start runs to its end (each checks for a stop), so that none is still starting a
        # process, unrecorded, when the job stops its replicas.
        outcomes = await asyncio.gather(*starts, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        self.say(f"{len(self.replicas)} replica(s) ready")

    async def _start_one(self) -> None:
        spec, model = self._spec, self._model
        rid = f"{self.name[:20]}-{uuid.uuid4().hex[:8]}"
        log_path = self.log_dir / f"{rid}.log"
        launch = ReplicaLaunch(
            replica_id=rid,
            endpoint=self.name,
            variant="transform",
            model_name=spec.model,
            model=model,
            log_path=log_path,
            cpus=spec.resources.cpus,
        )
        try:
            proc = await asyncio.to_thread(self.executor.start, launch)
        except (OSError, ModelyardError) as exc:
            raise JobFailed(f"could not start a replica of model {spec.model!r}: {exc}") from exc
        replica = Replica(rid, proc, log_path)
        self.replicas[rid] = replica  # recorded at once: whatever happens next, it is stopped
        await asyncio.to_thread(self._record_replicas)
        deadline = time.monotonic() + spec.startup_timeout_s
        while True:
            if self.ending:
                return  # the job ends: the replica is stopped with the others
            if self.runner.shutdown.is_set():
                raise Shutdown()
            if await asyncio.to_thread(self._stop_asked):
                raise StopAsked()
            code = self.executor.exit_code(proc)
            if code is not None:
                del self.replicas[rid]
                raise JobFailed(
                    f"a replica of model {spec.model!r} exited with code {code} while starting; "
                    f"its log ends: {_tail(log_path)}"
                )
            if await asyncio.to_thread(self.executor.ready, proc, 1.0):
                break
            if time.monotonic() > deadline:
                raise JobFailed(
                    f"a replica of model {spec.model!r} did not answer /ping within "
                    f"startup_timeout_s ({spec.startup_timeout_s} s); its log ends: "
                    f"{_tail(log_path)}"
                )
            await asyncio.sleep(0.05)
        replica.ready = True
        async with self.ready:
            self.ready.notify_all()

    def _stop_asked(self) -> bool:
        with self.store.tx() as repo:
            job = repo.get_transform(self.name)
        if job is None or job.attempt != self.attempt:
            raise Shutdown()  # another run has the job
        return job.stop_requested

    def _record_replicas(self) -> None:
        replicas = [
            {
                "id": r.id,
                "pid": r.proc.pid,
                "started_at": r.proc.started_at,
                "address": r.proc.address,
                "log_path": str(r.log_path),
            }
            for r in self.replicas.values()
        ]
        self._write(replicas=replicas)

    async def acquire(self) -> Replica:
        """The ready replica with the fewest batches in progress (waits while none is)."""
        async with self.ready:
            while True:
                live = [r for r in self.replicas.values() if r.ready and not r.gone]
                if live:
                    best = min(live, key=lambda r: r.outstanding)
                    best.outstanding += 1
                    return best
                await self.ready.wait()

    async def replace(self, replica: Replica) -> None:
        """A replica died: start another in its place (a few times, then the job fails)."""
        if replica.gone:
            return
        replica.gone = True
        self.replicas.pop(replica.id, None)
        self.restarts += 1
        code = self.executor.exit_code(replica.proc)
        self.say(f"replica {replica.id} exited (code {code}); starting another")
        if self.restarts > 3 * self._spec.instance_count:
            raise JobFailed(
                f"replicas of model {self._spec.model!r} keep exiting ({self.restarts} so far); "
                f"the last one's log ends: {_tail(replica.log_path)}"
            )
        # Shielded: if the pipeline is cancelled meanwhile, the start still ends by recording
        # its replica (or failing), and _stop_replicas waits for it.
        task = asyncio.ensure_future(self._start_one())
        self.starting.add(task)
        task.add_done_callback(self.starting.discard)
        await asyncio.shield(task)

    async def alive(self, replica: Replica) -> bool:
        """Whether a replica whose connection failed is still running (it may take a moment
        for a killed process to be seen as ended)."""
        for _ in range(10):
            if self.executor.exit_code(replica.proc) is not None:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _stop_replicas(self, kill: bool = False) -> None:
        self.ending = True
        if self.starting:  # replacements starting: each stops waiting and records its replica
            await asyncio.gather(*self.starting, return_exceptions=True)
        procs = [r.proc for r in self.replicas.values()]
        self.replicas.clear()
        for proc in procs:
            self.executor.signal(proc, "kill" if kill else "term")
        deadline = time.monotonic() + STOP_GRACE_S
        while procs and time.monotonic() < deadline:
            procs = [p for p in procs if self.executor.exit_code(p) is None]
            await asyncio.sleep(0.05)
        for proc in procs:
            self.executor.signal(proc, "kill")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        found = tail_lines(path, lines)
    except OSError:
        return "(no log)"
    return " | ".join(line for line in found if line.strip()) or "(empty)"
