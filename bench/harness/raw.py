"""The raw in-process baseline: the model's own speed, with no server in the way.

Run as ``python -m harness.raw --models W1=PATH,W2=PATH --rows ROWS.npy --duration S --warmup S``
(a child process, with the same one-thread math libraries as a ``cpus: 1`` replica). For each
model, after a warm-up, it calls ``predict_proba`` on one row (the request's row) for S seconds,
timing each call, then on a batch of 64 rows for S seconds, and prints one JSON object::

    {"W1": {"calls_per_s": ..., "p50_ms": ..., "p99_ms": ..., "batch_rows": 64,
            "batch_calls_per_s": ..., "batch_rows_per_s": ...}, ...}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import joblib
import numpy as np


def _percentile_ms(sorted_ns: list[int], q: float) -> float:
    rank = max(1, math.ceil(q / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def _loop(call: Callable[[], Any], duration_s: float, timings: list[int] | None) -> float:
    """Call ``call`` for ``duration_s`` seconds (at least once); returns calls per second."""
    calls = 0
    start = now = time.perf_counter_ns()
    deadline = start + int(duration_s * 1e9)
    while now < deadline or calls == 0:
        call()
        after = time.perf_counter_ns()
        if timings is not None:
            timings.append(after - now)
        now = after
        calls += 1
    return calls / ((now - start) / 1e9)


def measure(
    model: Any, rows: np.ndarray[Any, Any], duration_s: float, warmup_s: float
) -> dict[str, Any]:
    one = np.ascontiguousarray(rows[:1])
    batch = np.ascontiguousarray(rows)
    _loop(lambda: model.predict_proba(one), warmup_s / 2, None)
    _loop(lambda: model.predict_proba(batch), warmup_s / 2, None)
    timings: list[int] = []
    calls_per_s = _loop(lambda: model.predict_proba(one), duration_s, timings)
    timings.sort()
    batch_calls_per_s = _loop(lambda: model.predict_proba(batch), duration_s, None)
    return {
        "calls_per_s": calls_per_s,
        "p50_ms": _percentile_ms(timings, 50),
        "p99_ms": _percentile_ms(timings, 99),
        "batch_rows": len(batch),
        "batch_calls_per_s": batch_calls_per_s,
        "batch_rows_per_s": batch_calls_per_s * len(batch),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="harness.raw", description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, help="ID=PATH[,ID=PATH...]")
    parser.add_argument("--rows", required=True, help=".npy file: the batch; row 0 is the request")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    args = parser.parse_args()
    rows = np.load(args.rows)
    results = {}
    for item in args.models.split(","):
        workload, _, path = item.partition("=")
        results[workload] = measure(joblib.load(path), rows, args.duration, args.warmup)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
