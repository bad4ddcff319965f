"""Scheduled actions on a fake clock: cron in a time zone, daylight-saving changes, the most
recent action that fired since autoscaling took effect."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from modelyard.controlplane.autoscale.schedule import Bounds, bounds, describe, last_fired
from modelyard.spec.autoscaling import AutoscalingSpec, ScheduledActionSpec

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def at(*parts: int, zone: ZoneInfo = PARIS, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=zone, fold=fold).timestamp()  # type: ignore[misc]


def local(ts: float, zone: ZoneInfo = PARIS) -> str:
    return datetime.fromtimestamp(ts, zone).isoformat()


def action(cron: str, zone: str = "Europe/Paris", **bounds: int) -> ScheduledActionSpec:
    return ScheduledActionSpec(cron=cron, timezone=zone, **bounds)


WEEKDAYS_8 = action("0 8 * * 1-5", min=4)


@pytest.mark.parametrize(
    ("now", "fired"),
    [
        (at(2024, 1, 15, 8, 0), "2024-01-15T08:00:00+01:00"),  # Monday 08:00 sharp counts
        (at(2024, 1, 15, 7, 59), "2024-01-12T08:00:00+01:00"),  # before: last Friday's
        (at(2024, 1, 14, 12, 0), "2024-01-12T08:00:00+01:00"),  # Sunday: Friday's
        (at(2024, 7, 1, 9, 0), "2024-07-01T08:00:00+02:00"),  # summer time: 08:00 local
    ],
)
def test_cron_fires_on_the_wall_clock_of_its_time_zone(now: float, fired: str) -> None:
    assert local(last_fired(WEEKDAYS_8, now)) == fired


def test_the_same_cron_in_another_zone_fires_at_another_instant() -> None:
    now = at(2024, 1, 15, 12, 0)
    paris = last_fired(WEEKDAYS_8, now)
    ny = last_fired(action("0 8 * * 1-5", "America/New_York", min=4), now + 7 * 3600)
    assert ny - paris == 6 * 3600  # 08:00 in New York is six hours after 08:00 in Paris


def test_utc_is_the_default_zone() -> None:
    utc = ScheduledActionSpec(cron="0 8 * * *", min=2)
    assert last_fired(utc, 1_700_000_000.0) % 86400 == 8 * 3600


def test_weekday_8am_moves_by_an_hour_of_utc_across_the_spring_change() -> None:
    friday = last_fired(WEEKDAYS_8, at(2024, 3, 29, 9, 0))
    monday = last_fired(WEEKDAYS_8, at(2024, 4, 1, 9, 0))
    assert datetime.fromtimestamp(friday, ZoneInfo("UTC")).hour == 7
    assert datetime.fromtimestamp(monday, ZoneInfo("UTC")).hour == 6
    assert local(monday) == "2024-04-01T08:00:00+02:00"


def test_a_time_skipped_in_spring_fires_once_the_clock_passes_it() -> None:
    """Paris, 31 March 2024: 02:00 becomes 03:00; 02:30 never happens that day."""
    half_past_two = action("30 2 * * *", min=3)
    assert local(last_fired(half_past_two, at(2024, 3, 31, 3, 10))) == "2024-03-30T02:30:00+01:00"
    assert local(last_fired(half_past_two, at(2024, 3, 31, 3, 30))) == "2024-03-31T03:30:00+02:00"
    assert local(last_fired(half_past_two, at(2024, 4, 1, 2, 31))) == "2024-04-01T02:30:00+02:00"


def test_a_time_repeated_in_autumn_fires_once() -> None:
    """Paris, 27 October 2024: 03:00 goes back to 02:00; 02:30 happens twice, fires once."""
    half_past_two = action("30 2 * * *", min=3)
    first = at(2024, 10, 27, 2, 30, fold=0)
    second = at(2024, 10, 27, 2, 30, fold=1)
    assert second - first == 3600
    assert last_fired(half_past_two, first) == first
    assert last_fired(half_past_two, second + 60) == first  # not again an hour later
    assert local(last_fired(half_past_two, at(2024, 10, 28, 2, 30))) == "2024-10-28T02:30:00+01:00"


def test_hourly_cron_in_the_skipped_hour_of_new_york() -> None:
    """New York, 10 March 2024: 02:00 becomes 03:00; an every-15-minutes cron just goes on."""
    every_15 = action("*/15 * * * *", "America/New_York", max=2)
    fired = last_fired(every_15, at(2024, 3, 10, 3, 5, zone=NEW_YORK))
    assert local(fired, NEW_YORK) == "2024-03-10T03:00:00-04:00"


# -- the bounds in force -----------------------------------------------------------------------


def spec(*actions: dict[str, Any], low: int = 1, high: int = 10) -> AutoscalingSpec:
    return AutoscalingSpec.model_validate({"min": low, "max": high, "scheduled": list(actions)})


BUSINESS = spec(
    {"cron": "0 8 * * 1-5", "timezone": "Europe/Paris", "min": 4},
    {"cron": "0 20 * * 1-5", "timezone": "Europe/Paris", "min": 1, "max": 3},
)
SINCE = at(2024, 1, 14, 12, 0)  # autoscaling applied on a Sunday


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(2024, 1, 15, 7, 59), Bounds(1, 10)),  # nothing fired since: the spec's bounds
        (at(2024, 1, 15, 8, 0), Bounds(4, 10, 0, at(2024, 1, 15, 8, 0))),  # min 4, max kept
        (at(2024, 1, 15, 19, 59), Bounds(4, 10, 0, at(2024, 1, 15, 8, 0))),
        (at(2024, 1, 15, 20, 0), Bounds(1, 3, 1, at(2024, 1, 15, 20, 0))),
        (at(2024, 1, 20, 12, 0), Bounds(1, 3, 1, at(2024, 1, 19, 20, 0))),  # the weekend
        (at(2024, 1, 22, 8, 30), Bounds(4, 10, 0, at(2024, 1, 22, 8, 0))),
    ],
)
def test_the_most_recent_action_that_fired_sets_the_bounds(now: float, expected: Bounds) -> None:
    assert bounds(BUSINESS, SINCE, now) == expected


def test_actions_that_fired_before_autoscaling_took_effect_do_not_count() -> None:
    since = at(2024, 1, 15, 8, 30)  # applied after Monday's 08:00
    assert bounds(BUSINESS, since, at(2024, 1, 15, 9, 0)) == Bounds(1, 10)


def test_the_later_action_wins_a_tie() -> None:
    both = spec(
        {"cron": "0 8 * * *", "min": 2},
        {"cron": "0 8 * * *", "min": 5},
    )
    found = bounds(both, 0.0, 1_700_000_000.0)
    assert (found.min, found.action) == (5, 1)


def test_describe_says_which_action_fired_when_in_its_zone() -> None:
    fired = at(2024, 4, 1, 8, 0)
    assert describe(WEEKDAYS_8, fired) == (
        "scheduled action '0 8 * * 1-5' (Europe/Paris) fired 2024-04-01 08:00 +0200"
    )
