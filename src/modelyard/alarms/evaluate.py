"""Evaluating an alarm: pure functions of its spec, the metric's points and the time.

The rules, exactly (CloudWatch's, with its missing-data treatment simplified as written here):

1. **Periods.** Periods are aligned to the clock (each starts at a multiple of ``period_s`` since
   the epoch). The alarm looks at the last ``evaluation_periods`` (N) *complete* periods: those
   that ended at least :data:`SETTLE_S` seconds before ``now``. The period in progress, and one
   that ended less than ``SETTLE_S`` ago (its last points may not be written yet: the recorder
   writes a 10 s interval 2–3 s after it ends), are never looked at.
2. **A period's value** is ``statistic`` of all the points of the period merged: the 10 s points
   it spans, and every series of the endpoint for the metric — all variants' when the alarm names
   no variant, and every replica's for per-replica metrics (cpu_percent, memory_mb: ``avg`` is
   then the mean over replicas and samples, ``max`` the highest any replica reported;
   batch_size: ``avg`` is rows per model call over all replicas). A period without any point,
   or whose statistic is undefined (a percentile of anything but a latency histogram), has no
   data (it is *missing*). Counters and batch_size write no point for a period without events,
   so a period without traffic is missing for ``invocations`` — not 0.
3. **Breaching.** A period breaches when ``value <comparison> threshold``.
4. **Missing periods** are, by ``treat_missing_data``: ``breaching`` — counted as breaching;
   ``not_breaching`` — counted as not breaching; ``missing`` and ``ignore`` — left out.
5. **The state**, with M = ``datapoints_to_alarm`` (default N): when no period of the N has data
   and missing periods are left out, INSUFFICIENT_DATA with ``missing`` and the current state
   kept with ``ignore``; otherwise ALARM when at least M periods breach, else OK. (CloudWatch's
   ``missing`` may look back beyond the N periods when fewer than M have data; Modelyard does not:
   with fewer than M periods of data an alarm is OK.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelyard.metrics.series import METRICS, Point, periods, statistic
from modelyard.spec.alarms import COMPARISONS, AlarmSpec

#: seconds after a period's end before it is evaluated (its points are written by then)
SETTLE_S = 5.0
OK, ALARM, INSUFFICIENT_DATA = "OK", "ALARM", "INSUFFICIENT_DATA"


@dataclass(frozen=True, slots=True)
class Evaluation:
    state: str
    reason: str
    #: the periods evaluated: ``[start, end)``
    start: float
    end: float
    #: each period's value, oldest first (None: no data)
    values: tuple[float | None, ...]


def window(spec: AlarmSpec, now: float, settle_s: float = SETTLE_S) -> tuple[float, float]:
    """``[start, end)`` of the N complete periods evaluated at ``now``."""
    end = float(math.floor((now - settle_s) / spec.period_s) * spec.period_s)
    return end - spec.evaluation_periods * spec.period_s, end


def period_values(
    spec: AlarmSpec, points: Iterable[Point], start: float, end: float
) -> list[float | None]:
    """The statistic of each period in ``[start, end)`` over all ``points`` (any series)."""
    kind = METRICS[spec.metric][0]
    return [
        None if merged is None else statistic(merged, spec.statistic, kind)
        for _, merged in periods(points, spec.period_s, start, end)
    ]


def breaches(spec: AlarmSpec, value: float) -> bool:
    threshold = spec.threshold
    if spec.comparison == "greater_than":
        return value > threshold
    if spec.comparison == "greater_or_equal":
        return value >= threshold
    if spec.comparison == "less_than":
        return value < threshold
    return value <= threshold


def _number(value: float | None) -> str:
    return "no data" if value is None else repr(round(value, 3))


def decide(spec: AlarmSpec, values: Sequence[float | None], current: str) -> tuple[str, str]:
    """(state, reason) from the periods' values, oldest first (rule 4 and 5)."""
    n, m = len(values), spec.datapoints_needed
    rule = spec.treat_missing_data
    what = f"{spec.statistic} {spec.metric}"
    periods_text = f"the last {n} period{'s' if n != 1 else ''} ({spec.period_s} s)"
    present = [v for v in values if v is not None]
    missing = n - len(present)
    if not present and rule in ("missing", "ignore"):
        where = spec.dimensions.endpoint
        if spec.dimensions.variant:
            where += f" variant {spec.dimensions.variant}"
        reason = f"no data for {what} of {where} in {periods_text}"
        if rule == "ignore":
            return current, f"{reason}; state kept (treat_missing_data: ignore)"
        return INSUFFICIENT_DATA, reason
    breaching = sum(1 for v in present if breaches(spec, v))
    if rule == "breaching":
        breaching += missing
    condition = f"{what} {COMPARISONS[spec.comparison]} {spec.threshold}"
    note = f"{m} needed for ALARM"
    if missing:
        left_out = rule in ("missing", "ignore")
        note += "; no data is left out" if left_out else f"; no data counts as {rule}"
    reason = (
        f"{breaching} of {periods_text} had {condition}: "
        f"{', '.join(_number(v) for v in values)} ({note.replace('_', ' ')})"
    )
    return (ALARM if breaching >= m else OK), reason


def evaluate(
    spec: AlarmSpec,
    points: Iterable[Point],
    now: float,
    current: str,
    settle_s: float = SETTLE_S,
) -> Evaluation:
    """The alarm's state at ``now`` given the metric's points (of every series it watches) and
    its ``current`` state (kept when ``treat_missing_data: ignore`` finds no data)."""
    start, end = window(spec, now, settle_s)
    values = period_values(spec, points, start, end)
    state, reason = decide(spec, values, current)
    return Evaluation(state, reason, start, end, tuple(values))
