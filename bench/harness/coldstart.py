"""Serverless cold starts: how long the first W1 request takes when it arrives at zero replicas.

A serverless endpoint of the W1 model scales to zero after ``IDLE_TIMEOUT_S`` without requests.
Each round waits (polling ``describe``) until it has no replica at all, then times ONE request
from just before it is sent to its whole answer (200 and the model's predictions), then
``WARM_REQUESTS`` more to the now-warm endpoint, timed the same way: the in-run baseline. Every
request opens its own connection (loopback TCP connect, ~0.1 ms, is in each time), so cold and
warm are measured alike. The gateway's own count (``serverless_status.cold_starts``) is read
before each round and once after the last, to confirm each round was one cold start.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from harness.procs import HarnessError, wait_until
from modelyard.client import Client
from modelyard.errors import ModelyardError

IDLE_TIMEOUT_S = 1  # the smallest the spec allows
WARM_REQUESTS = 5
ZERO_TIMEOUT_S = 60.0  # for the endpoint to scale to zero (idle 1 s + the replica's drain)
COUNT_TIMEOUT_S = 5.0  # for the gateway to report the last round's cold start (syncs: 0.25 s)
REQUEST_TIMEOUT_S = 60.0
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Timed:
    ms: float
    error: str | None  # None: 200 with the expected predictions


def post_once(url: str, body: bytes, expected: list[list[float]]) -> Timed:
    """One POST on a new connection, timed from just before sending to the last byte read."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=REQUEST_TIMEOUT_S
    )
    started = time.perf_counter()
    try:
        conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        ms = (time.perf_counter() - started) * 1000.0
    except (OSError, http.client.HTTPException) as exc:
        return Timed((time.perf_counter() - started) * 1000.0, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    if resp.status != 200:
        return Timed(ms, f"status {resp.status}: {data[:300].decode(errors='replace')}")
    try:
        predictions = json.loads(data)["predictions"]
        right = bool(np.allclose(predictions, expected, rtol=0, atol=1e-9))
    except (ValueError, KeyError, TypeError):
        return Timed(ms, f"no predictions in the answer: {data[:300].decode(errors='replace')}")
    if not right:
        return Timed(ms, f"answered {predictions}, the model says {expected}")
    return Timed(ms, None)


def _status(view: dict[str, Any]) -> tuple[int, float]:
    """The gateway's cold starts so far and the milliseconds they held requests in all."""
    status = view.get("serverless_status") or {}
    count = int(status.get("cold_starts") or 0)
    avg = status.get("cold_start_ms_avg")
    return count, (count * float(avg) if avg is not None else 0.0)


def _replicas(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for v in view["variants"] for r in v["replicas"]]


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def measure(
    client: Client,
    endpoint: str,
    url: str,
    body: bytes,
    expected: list[list[float]],
    rounds: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The rounds; returns the result document's ``serverless_cold_start`` section. Failed
    requests are in it (``errors``, each round's ``error``), not raised."""

    def describe() -> dict[str, Any]:
        try:
            return client.describe_endpoint(endpoint)
        except ModelyardError as exc:
            raise HarnessError(f"describe {endpoint} failed: {exc}") from exc

    def at_zero() -> dict[str, Any] | None:
        view = describe()
        return None if _replicas(view) else view

    problems: list[str] = []
    done: list[dict[str, Any]] = []
    counts: list[tuple[int, float]] = []  # the gateway's (cold starts, held ms) before each round
    warms: list[float] = []  # every answered warm request's time
    last_request = time.monotonic()
    for number in range(1, rounds + 1):
        try:
            view = wait_until(at_zero, ZERO_TIMEOUT_S, f"{endpoint} to scale to zero", POLL_S)
        except HarnessError as exc:
            problems.append(f"round {number}: {exc}; the rounds stopped there")
            break
        # At zero the previous round's requests are long reported: the idle time counts from the
        # gateway's sync that reported them.
        waited_s = time.monotonic() - last_request
        counts.append(_status(view))
        cold = post_once(url, body, expected)
        warm = [post_once(url, body, expected) for _ in range(WARM_REQUESTS)]
        last_request = time.monotonic()
        warm_ok = [w.ms for w in warm if w.error is None]
        warms += warm_ok
        errors = [f"cold request: {cold.error}"] if cold.error else []
        errors += [f"warm request {i}: {w.error}" for i, w in enumerate(warm, 1) if w.error]
        done.append(
            {
                "round": number,
                "zero_after_s": round(waited_s, 2),
                "cold_ms": round(cold.ms, 3),
                "ok": cold.error is None,
                "warm_ms": [round(w.ms, 3) for w in warm],
                "warm_median_ms": _median(warm_ok),
                "errors": errors,
            }
        )
        say(
            f"[W1] serverless cold start, round {number}/{rounds}: zero after {waited_s:.1f} s, "
            f"cold {cold.ms:8.1f} ms, warm median "
            + ("–" if not warm_ok else f"{statistics.median(warm_ok):.2f} ms")
            + (f"  ERRORS: {'; '.join(errors)}" if errors else "")
        )

    final: tuple[int, float] | None = None
    if done:
        # The gateway reports counts on its next sync: wait for the last round's, a few seconds.
        want = counts[-1][0] + 1
        deadline = time.monotonic() + COUNT_TIMEOUT_S
        while True:
            final = _status(describe())
            if final[0] >= want or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
    for i, entry in enumerate(done):
        after = counts[i + 1] if i + 1 < len(counts) else final
        assert after is not None
        entry["gateway_cold_starts"] = after[0] - counts[i][0]
        held = after[1] - counts[i][1]
        entry["gateway_held_ms"] = round(held, 1) if entry["gateway_cold_starts"] else None
        if entry["gateway_cold_starts"] != 1:
            problems.append(
                f"round {entry['round']}: the gateway counted {entry['gateway_cold_starts']} "
                "cold starts, not 1"
            )

    colds = [entry["cold_ms"] for entry in done]
    errors_total = sum(len(entry["errors"]) for entry in done)
    median_cold = _median(colds)
    median_warm = _median(warms)
    return {
        "workload": "W1",
        "endpoint": endpoint,
        "idle_timeout_s": IDLE_TIMEOUT_S,
        "rounds_wanted": rounds,
        "warm_requests_per_round": WARM_REQUESTS,
        "rounds": done,
        "cold_ms_median": median_cold,
        "cold_ms_max": round(max(colds), 3) if colds else None,
        "warm_ms_median": median_warm,
        "cold_vs_warm_median": round(median_cold / median_warm, 1)
        if median_cold is not None and median_warm
        else None,
        "gateway_cold_starts": {
            "before": counts[0][0] if counts else None,
            "after": final[0] if final else None,
            "one_per_round": bool(done) and all(e["gateway_cold_starts"] == 1 for e in done),
        },
        "errors": errors_total,
        "problems": problems,
    }
