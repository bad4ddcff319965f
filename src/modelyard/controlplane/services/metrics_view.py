"""Reading an endpoint's metrics: its series over a window, merged into periods, with every
statistic of each period (``GET /api/v1/endpoints/{name}/metrics``, ``modelyard metrics``)."""

from __future__ import annotations

from typing import Any

from modelyard.controlplane.store.repo import Store
from modelyard.errors import InvalidInputError, NotFoundError
from modelyard.metrics.series import METRICS, RESOLUTION_S, ROLLUP_S, STATISTICS, periods, statistic

#: the longest window read at once, and the most periods in it
MAX_SINCE_S = 14 * 24 * 3600
MAX_PERIODS = 2000


def read_metrics(
    store: Store,
    name: str,
    now: float,
    *,
    since_s: int = 900,
    period_s: int | None = None,
    metric: str | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    if metric is not None and metric not in METRICS:
        raise InvalidInputError(f"metric: must be one of {', '.join(METRICS)} (got {metric!r})")
    if not 0 < since_s <= MAX_SINCE_S:
        raise InvalidInputError(f"since: must be 1 s to {MAX_SINCE_S // 86400} days")
    if period_s is None:  # about 90 periods, in whole multiples of 10 s (of 1 min past a day,
        # where points are 1-minute roll-ups)
        unit = RESOLUTION_S if since_s <= 86400 else ROLLUP_S
        period_s = max(unit, -(-since_s // 90 // unit) * unit)
    if period_s % RESOLUTION_S or period_s <= 0:
        raise InvalidInputError(f"period: must be a multiple of {RESOLUTION_S} s")
    if since_s / period_s > MAX_PERIODS:
        raise InvalidInputError(f"period: at most {MAX_PERIODS} periods a read; use a longer one")
    with store.tx() as repo:
        if repo.get_endpoint(name) is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        # The window, aligned to the period; the last period is the one in progress.
        end = now - now % period_s + period_s
        start = end - -(-since_s // period_s) * period_s
        found = repo.metric_points(name, start, end, metric=metric, variant=variant)
    series = []
    for key, points in sorted(found.items(), key=lambda kv: (kv[0].metric, kv[0].variant)):
        kind = METRICS.get(key.metric, ("gauge", ""))[0]
        rows: list[dict[str, float | None]] = []
        for at, point in periods(points, period_s, start, end):
            if point is None:
                rows.append({"at": at})
                continue
            rows.append({"at": at, **{stat: statistic(point, stat, kind) for stat in STATISTICS}})
        series.append(
            {
                "metric": key.metric,
                "kind": kind,
                "variant": key.variant,
                "replica": key.replica,
                "points": rows,
            }
        )
    return {
        "endpoint": name,
        "start": start,
        "end": end,
        "period_s": period_s,
        "resolutions_s": [RESOLUTION_S, ROLLUP_S],
        "series": series,
    }
