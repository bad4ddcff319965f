"""``modelyard metrics``: an endpoint's metrics (``Client.metrics``) as a table with sparklines.

One row per metric and variant. A replica's series (``cpu_percent``, ``memory_mb``,
``batch_size``) are combined per variant: CPU as the average of its replicas, memory as their sum
(the variant's resident memory), batch size as rows per model call over all of them. The
sparkline has a character per complete period of the window, blank where there is no data
(counters and batch sizes have no point in a period without events); it draws a counter's
events, a latency's p90 (total, model and overhead each a row), a gauge's average and the mean
batch size, each scaled from zero to the row's highest value. The last
period shown is the newest whose points have been written (``SETTLED_S`` after its end): the
one in progress is left out.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from modelyard.metrics.series import METRICS, RESOLUTION_S

SPARKS = "▁▂▃▄▅▆▇█"
#: seconds after a period's end until its points are in the store (metrics/recorder.py)
SETTLED_S = 3.5
#: the characters a sparkline gets when no --period is given (at most; fewer on a narrow terminal)
MAX_BARS = 60
MIN_BARS = 20
_WIDE = 240
UNITS = {
    "invocations": "requests",
    "errors_4xx": "requests",
    "errors_5xx": "requests",
    "latency_ms": "ms",
    "model_latency_ms": "ms",
    "overhead_latency_ms": "ms",
    "concurrent_requests": "requests",
    "cold_starts": "requests",
    "replicas": "replicas",
    "cpu_percent": "%",
    "memory_mb": "MB",
    "batch_size": "rows",
    "async_backlog": "requests",
    "async_oldest_age_s": "s",
}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)([smhd]?)")


def parse_duration(value: str | int) -> int:
    """Seconds of ``90s``, ``15m``, ``2h`` or ``1d`` (a bare number is seconds)."""
    if isinstance(value, int):  # the option's default
        return value
    found = _DURATION.fullmatch(value.strip().lower())
    if found is None or int(found[1]) == 0:
        raise typer.BadParameter(f"{value!r} is not a duration; use e.g. 90s, 15m, 2h or 1d")
    return int(found[1]) * _SECONDS[found[2] or "s"]


def span(seconds: float) -> str:
    """``90`` as ``1m30s``, ``900`` as ``15m``, ``86400`` as ``1d``."""
    left, parts = int(seconds), list[str]()
    for unit in "dhms":
        if left >= _SECONDS[unit] or (unit == "s" and not parts):
            parts.append(f"{left // _SECONDS[unit]}{unit}")
            left %= _SECONDS[unit]
            if not left:
                break
    return "".join(parts)


def default_period(since_s: int, bars: int = MAX_BARS) -> int:
    """The shortest period (a multiple of 10 s) that fits the window in ``bars`` characters."""
    return max(RESOLUTION_S, math.ceil(since_s / bars / RESOLUTION_S) * RESOLUTION_S)


def sparkline(values: Sequence[float | None]) -> str:
    top = max((v for v in values if v is not None), default=0.0)
    return "".join(
        " " if v is None else SPARKS[round(7 * v / top) if top > 0 else 0] for v in values
    )


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass(frozen=True, slots=True)
class Row:
    metric: str
    variant: str
    values: list[float | None]  # one a period, for the sparkline
    last: str
    window: str


#: per (metric, variant): its series (a replica's each), as (kind, settled points)
Settled = dict[tuple[str, str], list[tuple[str, list[dict[str, Any]]]]]


def rows(view: dict[str, Any], now: float) -> list[Row]:
    """The table's rows of a ``Client.metrics`` answer, read at ``now``."""
    period = view["period_s"]
    settled: Settled = defaultdict(list)
    for series in view["series"]:
        points = [p for p in series["points"] if p["at"] + period + SETTLED_S <= now]
        settled[(series["metric"], series["variant"])].append((series["kind"], points))
    order = list(METRICS)
    keys = sorted(settled, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1]))
    return [_row(*key, settled, period) for key in keys if settled[key][0][1]]


def _row(metric: str, variant: str, settled: Settled, period: int) -> Row:
    kind = settled[(metric, variant)][0][0]
    points = [p for _, p in settled[(metric, variant)]]
    if kind == "counter":
        return _counter_row(metric, variant, points[0], period, settled)
    if kind == "histogram":
        return _latency_row(metric, variant, points[0])
    if kind == "distribution":
        return _distribution_row(metric, variant, points)
    combine = sum if metric == "memory_mb" else _mean
    values = [
        _combine(combine, [p.get("avg") for p in period_points])
        for period_points in zip(*points, strict=True)
    ]
    if len(points) > 1 or metric in ("cpu_percent", "memory_mb"):
        how = "sum" if combine is sum else "avg"
        n = len(points)
        last = f"{number(values[-1])} ({how} of {n} replica{'s' if n > 1 else ''})"
        peak = max((v for v in values if v is not None), default=None)
    else:
        last = number(values[-1])
        peak = max((p["max"] for p in points[0] if p.get("max") is not None), default=None)
    present = [v for v in values if v is not None]
    avg = _mean(present) if present else None
    return Row(metric, variant, values, last, f"avg {number(avg)} · max {number(peak)}")


def _counter_row(
    metric: str, variant: str, points: list[dict[str, Any]], period: int, settled: Settled
) -> Row:
    values = [p.get("sum") for p in points]
    total = sum(v or 0.0 for v in values)
    last = values[-1] or 0.0  # no point: no event
    if metric == "invocations":
        rate = total / (len(points) * period)
        return Row(
            metric,
            variant,
            values,
            f"{number(last)} ({number(last / period)}/s)",
            f"{number(total)} ({number(rate)}/s)",
        )
    calls = settled.get(("invocations", variant), [])
    invoked = sum(p.get("sum") or 0.0 for _, points in calls for p in points)
    share = f" ({100 * total / invoked:.2g}%)" if invoked and total else ""
    return Row(metric, variant, values, number(last), f"{number(total)}{share}")


def _latency_row(metric: str, variant: str, points: list[dict[str, Any]]) -> Row:
    newest = points[-1]
    count = sum(p.get("sample_count") or 0.0 for p in points)
    avg = sum(p.get("sum") or 0.0 for p in points) / count if count else None
    peak = max((p["max"] for p in points if p.get("max") is not None), default=None)
    last = " · ".join(f"{q} {number(newest.get(q))}" for q in ("p50", "p90", "p99"))
    return Row(
        metric,
        variant,
        [p.get("p90") for p in points],
        last if "p50" in newest else "-",
        f"avg {number(avg)} · max {number(peak)}",
    )


def _distribution_row(metric: str, variant: str, points: list[list[dict[str, Any]]]) -> Row:
    """Rows per model call, over the variant's replicas: each period's, the last, the window's."""
    values: list[float | None] = []
    rows_sum = calls_sum = 0.0
    for period_points in zip(*points, strict=True):
        rows = sum(p.get("sum") or 0.0 for p in period_points)
        calls = sum(p.get("sample_count") or 0.0 for p in period_points)
        values.append(rows / calls if calls else None)
        rows_sum, calls_sum = rows_sum + rows, calls_sum + calls
    avg = rows_sum / calls_sum if calls_sum else None
    return Row(
        metric,
        variant,
        values,
        number(values[-1]),
        f"avg {number(avg)} · {number(calls_sum)} calls",
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _combine(
    how: Callable[[Sequence[float]], float], values: Sequence[float | None]
) -> float | None:
    present = [v for v in values if v is not None]
    return how(present) if present else None


def render(view: dict[str, Any], now: float | None = None) -> Table | str:
    """The table (or, when there is nothing to show yet, why)."""
    found = rows(view, time.time() if now is None else now)
    period = view["period_s"]
    if not found:
        return (
            f"no metrics for endpoint {view['endpoint']} in the last "
            f"{span(view['end'] - view['start'])} yet (points are written every {RESOLUTION_S} s, "
            "a few seconds after their end)"
        )
    shown = span(max(len(row.values) for row in found) * period)
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("METRIC", "VARIANT", "UNIT", f"EVERY {span(period)}"):
        grid.add_column(column, no_wrap=True)
    grid.add_column(f"LAST {span(period)}", overflow="fold")
    grid.add_column(f"WINDOW ({shown})", overflow="fold")
    for row in found:
        grid.add_row(
            row.metric,
            row.variant or "-",
            UNITS.get(row.metric, ""),
            sparkline(row.values),
            row.last,
            row.window,
        )
    return grid


def bars(console: Console) -> int:
    """Sparkline characters that fit: on a terminal, what its width leaves for them."""
    return max(MIN_BARS, min(MAX_BARS, console.width - 85)) if console.is_terminal else MAX_BARS


def show(console: Console, view: dict[str, Any]) -> None:
    if not console.is_terminal:  # a pipe or a file: whole lines, however long
        console = Console(file=console.file, width=_WIDE, highlight=False)
    console.print(render(view))


def watch(console: Console, read: Callable[[], dict[str, Any]], every_s: float = 5.0) -> None:
    """Redraw the table every ``every_s`` seconds until Ctrl-C."""
    with Live(render(read()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(every_s)  # the points change every 10 s
                live.update(render(read()), refresh=True)
        except KeyboardInterrupt:
            return
