"""One run of a transform job's mini-batches: read ahead, sent to the replicas, committed in
input order, exactly once (see :mod:`modelyard.transform.runner`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from modelyard import storage
from modelyard.controlplane.store.repo import TransformRecord
from modelyard.spec.resources import TransformJobSpec
from modelyard.transform import source
from modelyard.transform.records import Processing, RecordError
from modelyard.transform.source import Batch, InputFile

if TYPE_CHECKING:
    from modelyard.transform.runner import JobRun, Replica

#: replicas that die under one batch before it fails (a model that kills its process)
MAX_DEATHS_PER_BATCH = 3
#: requests spent finding the bad records of a failed batch, and the most reported
LOCATE_BUDGET = 64
LOCATE_MAX = 10
#: the model server's own report of the bad record in a CSV or JSON-lines body (its line or row
#: N is the batch's Nth record: a batch's body has one record a line, no blank lines)
_BAD_RECORD = re.compile(r"\bmalformed (?:CSV|JSON lines): (?:line|row) (\d+)\b")
#: answers that refuse the request itself: trying it again cannot pass
_REFUSALS = (400, 413, 415)


class JobFailed(Exception):
    """The job cannot go on; the message says why (and what to do)."""


class Shutdown(Exception):
    """The control plane is stopping: the job stays InProgress and resumes when it is back."""


@dataclass(slots=True)
class FileEnd:
    file: int


@dataclass(slots=True)
class Outcome:
    item: Batch | FileEnd
    body: bytes = b""
    records: int = 0
    failed: int = 0
    failure: dict[str, Any] | None = None


def output_uri(job: TransformJobSpec, file: InputFile) -> str:
    return storage.join(job.output.uri, file.name + ".out")


def failure_uri(job: TransformJobSpec, name: str) -> str:
    return storage.join(job.output.uri, f"{name}.failures.jsonl")


def spool_path(job: TransformJobSpec, file: InputFile, name: str, work: Path, index: int) -> Path:
    """Where a file's output is written until it is whole: beside its target (hidden), or for
    an object store under the job's work folder."""
    target = output_uri(job, file)
    if storage.is_local(target):
        path = Path(storage.local_path(target))
        return path.parent / f".{path.name}.{name}.partial"
    return work / f"spool-{index}"


def move_spool(job: TransformJobSpec, file: InputFile, name: str, work: Path, index: int) -> None:
    """Publish a whole file's spool as ``<output>/<name>.out`` (a no-op once it was moved)."""
    path = spool_path(job, file, name, work, index)
    if not path.exists():
        return
    target = output_uri(job, file)
    if storage.is_local(target):
        os.replace(path, storage.local_path(target))
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself is durable
            os.fsync(folder)
        finally:
            os.close(folder)
    else:
        with open(path, "rb") as src, storage.atomic_write(target) as dst:
            shutil.copyfileobj(src, dst, source.CHUNK)
        path.unlink()


def publish_failures(job: TransformJobSpec, name: str, work: Path, length: int) -> None:
    """Publish the first ``length`` bytes (the committed ones) of a job's failure spool."""
    if length <= 0:
        return
    with (
        open(work / "failures.jsonl", "rb") as src,
        storage.atomic_write(failure_uri(job, name)) as dst,
    ):
        left = length
        while left > 0 and (chunk := src.read(min(source.CHUNK, left))):
            dst.write(chunk)
            left -= len(chunk)


class Pipeline:
    """Reading, sending and committing the mini-batches of one run of a job."""

    def __init__(
        self, run: JobRun, spec: TransformJobSpec, inputs: list[InputFile], job: TransformRecord
    ) -> None:
        self.run = run
        self.spec = spec
        self.inputs = inputs
        self.proc = Processing(spec)
        self.cursor = dict(job.cursor)
        self.done = job.records_done
        self.failed = job.records_failed
        self.failure_bytes = job.failure_bytes
        self.total = job.total_records or 0
        self.media = source.REQUEST_MEDIA[spec.input.content_type]
        self.slots = spec.instance_count * spec.max_concurrent_transforms
        self.results: dict[int, Outcome] = {}
        self.committed = asyncio.Event()
        self.spool: Any = None
        self.spool_file = -1
        self.failures: Any = None
        self.session: aiohttp.ClientSession | None = None
        self.abort: tuple[str, str] | None = None
        self.read_all = False
        self.last_seq = -1
        #: the commit running in a worker thread, if any
        self.committing: asyncio.Future[None] | None = None

    # -- the run ------------------------------------------------------------------------------
    async def go(self) -> tuple[str, str]:
        self.failures = self._reopen(self.run.work / "failures.jsonl", self.failure_bytes)
        self.failures.seek(self.failure_bytes)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        try:
            if self.cursor.get("finalizing"):
                await asyncio.to_thread(self._finalize, self.cursor["file"])
            outcome = await self._batches()
        finally:
            await self.session.close()
            self.failures.close()
            if self.spool is not None:
                self.spool.close()
        return outcome

    async def _batches(self) -> tuple[str, str]:
        queue: asyncio.Queue[tuple[int, Batch] | None] = asyncio.Queue()
        window = asyncio.Semaphore(self.slots * 2)
        reader = self._read(window, queue)
        senders = [asyncio.create_task(self._send_loop(queue)) for _ in range(self.slots)]
        committer = asyncio.create_task(self._commit_loop(window))
        watcher = asyncio.create_task(self._watch())
        producer = asyncio.create_task(reader)
        tasks = [*senders, committer, watcher, producer]
        error: BaseException | None = None
        try:
            await self._until_done(producer, committer, tasks)
        except BaseException as exc:  # handled below, once nothing runs any more
            error = exc
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.committing is not None:  # a commit runs in a thread: let it end
            await asyncio.gather(self.committing, return_exceptions=True)
        # Nothing is removed here: the spools stay as committed, whatever the ending. The run
        # tidies up once the ending is recorded (JobRun._end); a run that resumes uses them.
        if error is not None:
            raise error
        if self.abort is not None:
            return self.abort
        summary = f"{self.done} record(s) transformed"
        if self.failed:
            where = failure_uri(self.spec, self.run.name)
            return "CompletedWithFailures", f"{summary}; {self.failed} failed (see {where})"
        return "Completed", summary

    async def _until_done(
        self, producer: asyncio.Task[Any], committer: asyncio.Task[Any], tasks: list[Any]
    ) -> None:
        while True:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None:
                    raise exc
            if committer in done:
                return
            tasks = [t for t in tasks if t not in done]

    # -- reading ------------------------------------------------------------------------------
    def _items(self) -> Iterator[Batch | FileEnd]:
        first = self.cursor["file"]
        for index in range(first, len(self.inputs)):
            start = self.cursor["start"] if index == first else 0
            line = self.cursor["line"] if index == first else 1
            try:
                yield from source.batches(index, self.inputs[index], self.spec, start, line)
            except (OSError, EOFError, ValueError) as exc:
                raise JobFailed(f"cannot read {self.inputs[index].uri}: {exc}") from exc
            yield FileEnd(index)

    async def _read(
        self, window: asyncio.Semaphore, queue: asyncio.Queue[tuple[int, Batch] | None]
    ) -> None:
        items = self._items()
        seq = 0
        while True:
            await window.acquire()
            if self.run.stopping or self.abort is not None:
                break
            item = await asyncio.to_thread(next, items, None)
            if item is None:
                break
            if isinstance(item, FileEnd):
                self.results[seq] = Outcome(item)
                self.committed.set()
            else:
                await queue.put((seq, item))
            seq += 1
        self.last_seq = seq - 1
        self.read_all = True
        self.committed.set()
        for _ in range(self.slots):
            await queue.put(None)

    # -- sending ------------------------------------------------------------------------------
    async def _send_loop(self, queue: asyncio.Queue[tuple[int, Batch] | None]) -> None:
        while (entry := await queue.get()) is not None:
            seq, batch = entry
            self.results[seq] = await self._transform(batch)
            self.committed.set()

    async def _transform(self, batch: Batch) -> Outcome:
        if batch.too_large:
            return self._failure(
                batch,
                f"the record is larger than max_payload_mb ({self.spec.max_payload_mb} MB)",
                [batch.first_line],
            )
        try:
            records = self.proc.request_records(batch.records)
        except (RecordError, UnicodeDecodeError) as exc:
            bad = [
                line
                for record, line in zip(batch.records, batch.lines, strict=True)
                if not self._filters_ok(record)
            ]
            return self._failure(batch, f"input_filter: {exc}", bad)
        payload = (
            records[0] if self.spec.input.split_type == "none" else b"\n".join(records) + b"\n"
        )
        error, answer, model_error = await self._call(payload, self.spec.model_client.max_retries)
        if answer is not None:
            try:
                body = self.proc.assemble(batch.records, answer)
            except (RecordError, UnicodeDecodeError) as exc:
                return self._failure(batch, str(exc), [])
            return Outcome(batch, body=body, records=len(batch.records))
        bad = []
        if model_error and len(records) > 1:
            found = _BAD_RECORD.search(error)
            if found and 1 <= int(found.group(1)) <= len(batch.lines):
                bad = [batch.lines[int(found.group(1)) - 1]]
                error += f" (record {found.group(1)} of the mini-batch: input line {bad[0]})"
            else:
                bad = await self._locate(records, batch.lines, [LOCATE_BUDGET])
        elif model_error:
            bad = [batch.first_line]
        return self._failure(batch, error, bad)

    def _filters_ok(self, record: bytes) -> bool:
        try:
            self.proc.request_records([record])
        except (RecordError, UnicodeDecodeError):
            return False
        return True

    def _failure(self, batch: Batch, error: str, bad_lines: list[int]) -> Outcome:
        last = batch.lines[-1] if batch.lines else batch.first_line
        entry = {
            "input": self.inputs[batch.file].uri,
            "first_line": batch.first_line,
            "last_line": last,
            "records": len(batch.records),
            "bad_lines": bad_lines,
            "error": error,
        }
        return Outcome(batch, failed=len(batch.records), failure=entry)

    async def _call(self, payload: bytes, retries: int) -> tuple[str, bytes | None, bool]:
        """Post one request, with ``retries`` more tries after a failure that may pass (not after
        a 400, 413 or 415: the same body is refused again). Returns (the last error, the answer
        or None, whether the model refused or failed it)."""
        deaths = 0
        tries = 0
        error = ""
        model_error = False
        while tries <= retries:
            replica = await self.run.acquire()
            try:
                status, body = await self._post(replica, payload)
            except (aiohttp.ClientError, ConnectionError) as exc:
                if not await self.run.alive(replica):
                    deaths += 1
                    if deaths >= MAX_DEATHS_PER_BATCH:
                        return f"{deaths} replicas exited while working on it", None, False
                    await self.run.replace(replica)
                    continue  # a dead replica does not cost the batch a try
                error = f"the model's answer was cut off ({type(exc).__name__}); see its log"
                model_error = True
            except TimeoutError:
                limit = self.spec.model_client.timeout_s
                error = f"no answer within model_client.timeout_s ({limit} s)"
                model_error = False
            else:
                if status == 200:
                    return "", body, False
                error = f"the model answered {status}: {_message(body)}"
                model_error = True
                if status in _REFUSALS:
                    return error, None, True  # (finally: the replica's count goes down)
            finally:
                replica.outstanding -= 1
            tries += 1
        return error, None, model_error

    async def _post(self, replica: Replica, payload: bytes) -> tuple[int, bytes]:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.spec.model_client.timeout_s, sock_connect=5.0)
        headers = {"Content-Type": self.media, "Accept": self.spec.output_accept}
        async with self.session.post(
            f"{replica.proc.address}/invocations", data=payload, headers=headers, timeout=timeout
        ) as resp:
            return resp.status, await resp.read()

    async def _locate(self, records: list[bytes], lines: list[int], budget: list[int]) -> list[int]:
        """The lines of the records the model refuses, found by halving (within a budget)."""
        if len(records) == 1:
            return lines
        half = len(records) // 2
        bad: list[int] = []
        for part, part_lines in ((records[:half], lines[:half]), (records[half:], lines[half:])):
            if budget[0] <= 0 or len(bad) >= LOCATE_MAX:
                break
            budget[0] -= 1
            _, answer, _ = await self._call(b"\n".join(part) + b"\n", 0)
            if answer is None:
                bad += await self._locate(part, part_lines, budget)
        return bad[:LOCATE_MAX]

    # -- committing ---------------------------------------------------------------------------
    async def _commit_loop(self, window: asyncio.Semaphore) -> None:
        seq = 0
        while True:
            await self.committed.wait()
            self.committed.clear()
            ready: list[Outcome] = []
            while seq in self.results:
                ready.append(self.results.pop(seq))
                seq += 1
            if ready:
                self.committing = asyncio.ensure_future(asyncio.to_thread(self._commit, ready))
                await asyncio.shield(self.committing)
                for _ in ready:
                    window.release()
                if self.failed > self.spec.max_failed_records:
                    where = failure_uri(self.spec, self.run.name)
                    self.abort = (
                        "Failed",
                        f"{self.failed} record(s) failed, more than max_failed_records "
                        f"({self.spec.max_failed_records}); see {where}",
                    )
                    return
            if self.run.stopping:
                self.abort = ("Stopped", f"stopped after {self.done} record(s)")
                return
            if self.read_all and seq > self.last_seq:
                return

    def _commit(self, outcomes: list[Outcome]) -> None:
        """Append answers and failures in input order, make them durable, then record where the
        job is (docstring of this module)."""
        for outcome in outcomes:
            item = outcome.item
            if isinstance(item, FileEnd):
                self._spool(item.file)  # an empty file still gets its (empty) output
                self._flush()
                self.cursor["finalizing"] = True  # with the progress: one write
                self._write_progress()
                self._finalize(item.file)
                continue
            spool = self._spool(item.file)
            spool.write(outcome.body)
            if outcome.failure is not None:
                self.failures.write(orjson.dumps(outcome.failure) + b"\n")
            self.done += outcome.records
            self.failed += outcome.failed
            self.cursor.update(start=item.end, line=item.next_line)
            if self.failed > self.spec.max_failed_records:
                break  # the job fails here: the file is not finished (nor any after it)
        self._flush()
        self._write_progress()

    def _flush(self) -> None:
        for fh in (self.spool, self.failures):
            if fh is not None and not fh.closed:
                fh.flush()
                os.fsync(fh.fileno())
        if self.spool is not None and not self.spool.closed:
            self.cursor["out_bytes"] = self.spool.tell()
        self.failure_bytes = self.failures.tell()

    def _write_progress(self) -> None:
        self.run._write(
            cursor=dict(self.cursor),
            records_done=self.done,
            records_failed=self.failed,
            failure_bytes=self.failure_bytes,
            run_seconds=self.run._run_seconds(),
        )

    def _spool(self, index: int) -> Any:
        if self.spool_file == index and self.spool is not None:
            return self.spool
        if self.spool is not None:
            self.spool.close()
        path = spool_path(self.spec, self.inputs[index], self.run.name, self.run.work, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = self.cursor["out_bytes"] if index == self.cursor["file"] else 0
        self.spool = self._reopen(path, keep)
        self.spool_file = index
        return self.spool

    @staticmethod
    def _reopen(path: Path, keep: int) -> Any:
        """A spool for appending after its first ``keep`` (committed) bytes."""
        fh = open(path, "ab")  # noqa: SIM115
        if fh.seek(0, os.SEEK_END) < keep:  # never pad a spool with zeros
            fh.close()
            raise JobFailed(
                f"{path} is shorter than the {keep} bytes this job committed to it: it was "
                "changed outside the job; run the job again under a new name"
            )
        fh.truncate(keep)
        fh.seek(keep)
        return fh

    def _finalize(self, index: int) -> None:
        """Move a finished file's spool to ``<output>/<name>.out``, recorded before and after:
        a run that resumes in between moves it (or finds it moved) and goes on."""
        if not self.cursor.get("finalizing"):
            self.cursor.update(finalizing=True)
            self.run._write(cursor=dict(self.cursor))
        if self.spool_file == index and self.spool is not None:
            self.spool.close()
            self.spool, self.spool_file = None, -1
        move_spool(self.spec, self.inputs[index], self.run.name, self.run.work, index)
        self.cursor = {
            "file": index + 1,
            "start": 0,
            "line": 1,
            "out_bytes": 0,
            "finalizing": False,
        }
        self.run._write(cursor=dict(self.cursor))

    # -- watching -----------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Replicas that died, a stop asked for, the control plane stopping."""
        while True:
            if self.run.runner.shutdown.is_set():
                raise Shutdown()
            for replica in list(self.run.replicas.values()):
                if not replica.gone and self.run.executor.exit_code(replica.proc) is not None:
                    await self.run.replace(replica)
            job = await asyncio.to_thread(self._job)
            if job is None or job.attempt != self.run.attempt:
                raise Shutdown()
            if job.stop_requested and not self.run.stopping:
                self.run.say("stopping, as asked")
                self.run.stopping = True
                self.committed.set()
            await asyncio.sleep(0.25)

    def _job(self) -> TransformRecord | None:
        with self.run.store.tx() as repo:
            return repo.get_transform(self.run.name)


def _message(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace")
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
        for key in ("message", "Message"):
            if key in parsed:
                return str(parsed[key])
    return body[:500].decode("utf-8", "replace")
