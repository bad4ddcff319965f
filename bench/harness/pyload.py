"""The Python load generator, a long-lived child process of the harness.

It reads one JSON command per line on stdin::

    {"url": ..., "body_file": ..., "concurrency": C, "duration_s": D, "timeout_s": T}

runs C concurrent keep-alive clients (asyncio + aiohttp, one connection each) against ``url``
for D seconds, each POSTing the body as ``application/json`` again as soon as its last answer
arrived, and writes one JSON line with the result on stdout (the same fields as the wrk script
prints). Responses that complete after the window closes are not counted. A non-2xx answer is a
``status`` error; a failed connect, a broken connection and a request slower than T seconds are
``connect``, ``read`` and ``timeout`` errors. It exits at the end of stdin.

Run it as ``python -m harness.pyload`` with ``bench/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


def percentile_ms(sorted_ns: list[int], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of sorted nanoseconds, in ms."""
    if not sorted_ns:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


async def run_load(
    url: str, body: bytes, concurrency: int, duration_s: float, timeout_s: float
) -> dict[str, Any]:
    latencies: list[int] = []
    errors = dict.fromkeys(ERROR_KINDS, 0)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        start = time.perf_counter_ns()
        deadline = start + int(duration_s * 1e9)

        async def client() -> None:
            while True:
                sent = time.perf_counter_ns()
                kind: str | None = None
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if not 200 <= resp.status < 300:
                            kind = "status"
                except TimeoutError:
                    kind = "timeout"
                except aiohttp.ClientConnectorError:
                    kind = "connect"
                except (aiohttp.ClientError, OSError):
                    kind = "read"
                done = time.perf_counter_ns()
                if done > deadline:
                    return
                if kind != "status" and kind is not None:
                    errors[kind] += 1
                    continue
                latencies.append(done - sent)  # a status error is still a completed request
                if kind == "status":
                    errors["status"] += 1

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        await asyncio.wait(tasks, timeout=duration_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed_s = (min(time.perf_counter_ns(), deadline) - start) / 1e9
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_s": elapsed_s,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "errors": errors,
    }


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # the cheaper loop: less of the CPU under test goes to us


def main() -> int:
    loop_factory = _loop_factory()
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(
                run_load(
                    command["url"],
                    Path(command["body_file"]).read_bytes(),
                    int(command["concurrency"]),
                    float(command["duration_s"]),
                    float(command["timeout_s"]),
                )
            )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
