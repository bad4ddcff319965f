"""Adaptive batching in the replica: concurrent requests share one model call.

Each request's inputs join a queue as rows along their first axis. A single worker gathers rows
until ``max_batch_size`` is reached or the first waiting request has waited ``max_delay_ms``,
then calls the model once on all of them in a worker thread and hands each request its own slice
of the answer. While the model runs, the next batch gathers, so under load batches fill by
themselves. The window is only waited for when requests overlap: when recent requests found
others in flight on arrival (a moving average says so). A lone client is never delayed, and a
request never waits longer than ``max_delay_ms`` for others.

Rules a user can rely on:

- a model call never gets more than ``max_batch_size`` rows; a request with more rows than that
  is split into several calls and its answer joined back in order;
- requests whose rows differ in shape (say, a different number of features) never share a call;
- when a shared call fails, each request in it is retried alone, so one bad row fails only the
  request that sent it;
- answers keep the order of the rows; each request is encoded in its own ``Accept`` type.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from modelyard.errors import ModelInvocationError, ModelyardError
from modelyard.runtimes import Runtime


class _Part:
    """Rows of one request (or one slice of a request larger than a batch) waiting for a call."""

    __slots__ = ("arrived", "future", "n", "rows")

    def __init__(self, rows: Any, future: asyncio.Future[Any], arrived: float) -> None:
        self.rows = rows
        self.n = len(rows)
        self.future = future
        self.arrived = arrived


def call_model(runtime: Runtime, inputs: Any) -> Any:
    """``runtime.predict`` with the model's own failures as ModelInvocationError (HTTP 424)."""
    try:
        return runtime.predict(inputs)
    except ModelyardError:
        raise
    except Exception as exc:  # the model raised: the caller gets its error (the contract)
        raise ModelInvocationError(f"{type(exc).__name__}: {exc}") from exc


def _join(parts: Sequence[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    joined: list[Any] = []
    for part in parts:
        joined.extend(part)
    return joined


def _join_outputs(outputs: Sequence[Any]) -> Any:
    if len(outputs) == 1:
        return outputs[0]
    if isinstance(outputs[0], dict):
        return {key: _join([np.asarray(o[key]) for o in outputs]) for key in outputs[0]}
    if isinstance(outputs[0], list):
        return _join(outputs)
    return np.concatenate([np.asarray(o) for o in outputs])


def _split(outputs: Any, sizes: Sequence[int]) -> list[Any]:
    """Each part's slice of a shared call's outputs (one output row per input row)."""
    total = sum(sizes)
    if isinstance(outputs, dict):
        columns = {key: _split(value, sizes) for key, value in outputs.items()}
        return [{key: col[i] for key, col in columns.items()} for i in range(len(sizes))]
    if not isinstance(outputs, (list, tuple, np.ndarray)) or len(outputs) != total:
        got = len(outputs) if isinstance(outputs, (list, tuple, np.ndarray)) else "no list of"
        raise ModelInvocationError(
            f"batching needs one output row per input row: the model answered {got} rows for "
            f"{total} input rows; remove batching from this variant"
        )
    slices = []
    start = 0
    for size in sizes:
        slices.append(outputs[start : start + size])
        start += size
    return slices


def _shape_key(rows: Any) -> Any:
    return rows.shape[1:] if isinstance(rows, np.ndarray) else "list"


class Batcher:
    """Gathers concurrent requests of one replica into shared model calls."""

    def __init__(
        self,
        runtime: Runtime,
        max_batch_size: int,
        max_delay_ms: float,
        *,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        #: Called (in the model thread) with the number of rows of every model call.
        self.observe = observe
        # Requests in this batcher now, and a moving average of how many others each new request
        # found on arrival: the sign that waiting for company pays.
        self._in_flight = 0
        self._company = 0.0
        self._queue: deque[_Part] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Future[None] | None = None
        self._need_rows = 1
        self._task: asyncio.Task[None] | None = None
        # One model thread: calls are serial by design, and the loop gathers the next batch.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="modelyard-batch")

    async def predict(self, inputs: Any) -> Any:
        """The model's outputs for one request's ``inputs``, computed in a shared call when they
        can be batched (rows along the first axis), alone otherwise."""
        return await self.submit(inputs)

    def submit(self, inputs: Any) -> asyncio.Future[Any]:
        """Queue one request's ``inputs``; the future gets its outputs (or its error). Cheaper
        than :meth:`predict` for many requests at once: no task per request."""
        loop = asyncio.get_running_loop()
        rows = self.runtime.batch_rows(inputs)
        if rows is None or len(rows) == 0:  # nothing to share a call with: a call of its own
            return loop.run_in_executor(self._thread, call_model, self.runtime, inputs)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._gather_forever())
        size = self.max_batch_size
        futures: list[asyncio.Future[Any]] = []
        now = loop.time()
        self._company += _COMPANY_WEIGHT * (self._in_flight - self._company)
        for start in range(0, len(rows), size):
            future: asyncio.Future[Any] = loop.create_future()
            self._queue.append(_Part(rows[start : start + size], future, now))
            self._queued_rows += min(size, len(rows) - start)
            futures.append(future)
        wake = self._wake
        if wake is not None and self._queued_rows >= self._need_rows and not wake.done():
            wake.set_result(None)
        self._in_flight += 1
        if len(futures) == 1:
            result = futures[0]
        else:  # a request split across calls: its outputs joined back in order
            result = loop.create_future()
            gathered = asyncio.gather(*futures)
            gathered.add_done_callback(partial(_join_into, result))
        result.add_done_callback(self._done)
        return result

    def _done(self, _: asyncio.Future[Any]) -> None:
        self._in_flight -= 1

    def _others_expected(self) -> bool:
        """Whether requests have been overlapping lately, so others may join within the window."""
        return self._company >= 0.5

    async def _wait_for_rows(self, need: int, deadline: float | None) -> None:
        """Until ``need`` rows are queued or the deadline (loop time) passes."""
        if self._queued_rows >= need:
            return
        loop = asyncio.get_running_loop()
        self._need_rows = need
        self._wake = wake = loop.create_future()
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, _resolve, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    async def _gather_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_rows(1, None)
            if self.max_delay_s > 0 and self._others_expected():
                # The oldest waiting request sets the deadline.
                deadline = self._queue[0].arrived + self.max_delay_s
                await self._wait_for_rows(self.max_batch_size, deadline)
            batch: list[_Part] = []
            rows = 0
            while self._queue and rows + self._queue[0].n <= self.max_batch_size:
                part = self._queue.popleft()
                rows += part.n
                batch.append(part)
            self._queued_rows -= rows
            live = [part for part in batch if not part.future.done()]  # callers may be gone
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._thread, self._call, live)
            except Exception as exc:  # a defect here must not leave callers waiting forever
                results = [exc] * len(live)
            for part, result in zip(live, results, strict=True):
                if part.future.done():
                    continue
                if isinstance(result, BaseException):
                    part.future.set_exception(result)
                else:
                    part.future.set_result(result)

    def _call(self, batch: list[_Part]) -> list[Any]:
        """Each part's outputs (or the error that is its answer), from as few calls as the
        parts' shapes allow. Runs in the model thread."""
        groups: dict[Any, list[int]] = {}
        for i, part in enumerate(batch):
            groups.setdefault(_shape_key(part.rows), []).append(i)
        results: list[Any] = [None] * len(batch)
        for members in groups.values():
            parts = [batch[i] for i in members]
            try:
                outputs = self._run(_join([p.rows for p in parts]))
                slices = _split(outputs, [p.n for p in parts])
            except ModelyardError as exc:
                if len(parts) == 1:
                    results[members[0]] = exc
                    continue
                # Someone's rows broke the shared call: each part alone, so only theirs fails.
                for i in members:
                    try:
                        results[i] = _split(self._run(batch[i].rows), [batch[i].n])[0]
                    except ModelyardError as alone:
                        results[i] = alone
                continue
            for i, piece in zip(members, slices, strict=True):
                results[i] = piece
        return results

    def _run(self, inputs: Any) -> Any:
        if self.observe is not None:
            self.observe(len(inputs))
        return call_model(self.runtime, inputs)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown(wait=False, cancel_futures=True)


_COMPANY_WEIGHT = 0.2


def _join_into(result: asyncio.Future[Any], gathered: asyncio.Future[list[Any]]) -> None:
    if result.done():
        return
    if gathered.cancelled():
        result.cancel()
    elif (exc := gathered.exception()) is not None:
        result.set_exception(exc)
    else:
        try:
            result.set_result(_join_outputs(gathered.result()))
        except Exception as failure:  # say, calls whose outputs differ in width
            result.set_exception(
                ModelInvocationError(
                    f"the request was split into calls of at most the batch size, and their "
                    f"outputs cannot be joined ({type(failure).__name__}: {failure}); send at "
                    "most max_batch_size rows or remove batching from this variant"
                )
            )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
