"""Scheduled actions: when each last fired, and the bounds in force.

A cron expression is matched against the wall clock of its time zone, and each match is turned
into an instant with :mod:`zoneinfo`, so daylight-saving changes behave as a person reading the
schedule expects:

- a time that does not exist (the hour skipped in spring) fires when the clock has passed it:
  ``30 2 * * *`` in Europe/Paris fires at 03:30 on the day the clocks go from 02:00 to 03:00;
- a time that happens twice (the hour repeated in autumn) fires once, at its first occurrence.

Pure functions of the spec and the time; no clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from modelyard.spec.autoscaling import AutoscalingSpec, ScheduledActionSpec

#: get_prev steps tried before giving up (a match that maps past ``now`` is skipped: at most one)
_TRIES = 4


def last_fired(action: ScheduledActionSpec, now: float) -> float:
    """The latest instant at or before ``now`` when ``action`` fired (epoch seconds)."""
    zone = ZoneInfo(action.timezone)
    # The wall clock now, a moment ahead so that a match at exactly ``now`` counts.
    wall = datetime.fromtimestamp(now, zone).replace(tzinfo=None) + timedelta(seconds=1)
    matches = croniter(action.cron, wall)
    for _ in range(_TRIES):
        match: datetime = matches.get_prev(datetime)
        # fold=0: the first of a repeated time; a skipped time takes the offset before the
        # change, which puts it just after the change (02:30 that never was is 03:30).
        at = match.replace(tzinfo=zone, fold=0).timestamp()
        if at <= now:
            return at
    raise AssertionError(f"cron {action.cron!r} found no match before {now}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Bounds:
    min: int
    max: int
    #: the scheduled action in force and when it fired (None: the spec's own bounds)
    action: int | None = None
    fired_at: float | None = None


def bounds(spec: AutoscalingSpec, since: float, now: float) -> Bounds:
    """The bounds in force at ``now``: those of the scheduled action that fired most recently
    after ``since`` (when the autoscaling spec took effect), its missing min or max taken from
    the spec; the spec's own bounds when none fired since. Ties go to the later action."""
    best: tuple[float, int] | None = None
    for i, action in enumerate(spec.scheduled):
        at = last_fired(action, now)
        if at > since and (best is None or at >= best[0]):
            best = (at, i)
    if best is None:
        return Bounds(spec.min, spec.max)
    at, i = best
    action = spec.scheduled[i]
    low = spec.min if action.min is None else action.min
    high = spec.max if action.max is None else action.max
    return Bounds(low, high, i, at)


def describe(action: ScheduledActionSpec, fired_at: float) -> str:
    """``'0 8 * * 1-5' (Europe/Paris) fired 2024-03-29 08:00 +01:00``."""
    local = datetime.fromtimestamp(fired_at, UTC).astimezone(ZoneInfo(action.timezone))
    return (
        f"scheduled action {action.cron!r} ({action.timezone}) fired "
        f"{local.strftime('%Y-%m-%d %H:%M %z')}"
    )
