"""``modelyard metrics``' table: durations, sparklines, and rows from an API answer."""

from __future__ import annotations

import io
from typing import Any

import pytest
import typer
from rich.console import Console

from modelyard.cli import metrics as table

START = 1000.0
#: read at the end of the window: its last period [1050, 1060) is not written yet
NOW = 1060.0


def series(
    metric: str, kind: str, stat: str, values: list[float | None], **labels: str
) -> dict[str, Any]:
    points = [
        {"at": START + 10 * i} if v is None else {"at": START + 10 * i, stat: v}
        for i, v in enumerate(values)
    ]
    return {
        "metric": metric,
        "kind": kind,
        "variant": labels.get("variant", "v"),
        "replica": labels.get("replica", ""),
        "points": points,
    }


def view(*found: dict[str, Any]) -> dict[str, Any]:
    return {
        "endpoint": "e",
        "start": START,
        "end": START + 60,
        "period_s": 10,
        "series": list(found),
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("45", 45),
        (" 2H ", 7200),
        (900, 900),
    ],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert table.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15x", "0m", "", "1.5h", "-5m"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(typer.BadParameter, match=r"use e\.g\. 90s, 15m, 2h or 1d"):
        table.parse_duration(text)


def test_spans_and_default_periods() -> None:
    assert [table.span(s) for s in (0, 10, 90, 900, 3600 + 60, 86400)] == [
        "0s",
        "10s",
        "1m30s",
        "15m",
        "1h1m",
        "1d",
    ]
    assert table.default_period(120) == 10
    assert table.default_period(900) == 20  # 45 characters
    assert table.default_period(900, bars=20) == 50
    assert table.default_period(14 * 86400) == 20160


def test_sparklines_scale_from_zero_and_leave_gaps_blank() -> None:
    assert table.sparkline([10, None, 20, 30, 40]) == "▃ ▅▆█"
    assert table.sparkline([0, 0, None]) == "▁▁ "
    assert table.sparkline([]) == ""


def test_rows_of_counters_latency_and_replica_gauges() -> None:
    answer = view(
        series("memory_mb", "gauge", "avg", [100, 100, 110, 120, 130, 999], replica="r1"),
        series("memory_mb", "gauge", "avg", [50, None, 50, 50, 60, 999], replica="r2"),
        series("cpu_percent", "gauge", "avg", [10, 20, 30, 40, 50, 999], replica="r1"),
        series("cpu_percent", "gauge", "avg", [30, None, 10, 20, 10, 999], replica="r2"),
        series("latency_ms", "histogram", "p90", [1, 2, None, 4, 5, 999]),
        series("errors_4xx", "counter", "sum", [1, None, 0, 0, 3, 999]),
        series("invocations", "counter", "sum", [10, None, 20, 30, 40, 999]),
    )
    answer["series"][4]["points"][4].update(p50=2.5, p99=9.75, sum=50.0, sample_count=10, max=12.0)
    rows = {(r.metric, r.variant): r for r in table.rows(answer, NOW)}
    assert list(rows) == [  # the catalogue's order
        ("invocations", "v"),
        ("errors_4xx", "v"),
        ("latency_ms", "v"),
        ("cpu_percent", "v"),
        ("memory_mb", "v"),
    ]
    calls = rows[("invocations", "v")]
    assert calls.values == [10, None, 20, 30, 40]  # the period in progress is left out
    assert (calls.last, calls.window) == ("40 (4/s)", "100 (2/s)")
    errors = rows[("errors_4xx", "v")]
    assert (errors.last, errors.window) == ("3", "4 (4%)")
    latency = rows[("latency_ms", "v")]
    assert latency.values == [1, 2, None, 4, 5]
    assert latency.last == "p50 2.5 · p90 5 · p99 9.75"
    assert latency.window == "avg 5 · max 12"
    cpu = rows[("cpu_percent", "v")]
    assert cpu.values == [20, 20, 20, 30, 30]  # the replicas' average
    assert cpu.last == "30 (avg of 2 replicas)"
    memory = rows[("memory_mb", "v")]
    assert memory.values == [150, 100, 160, 170, 190]  # their sum
    assert (memory.last, memory.window) == ("190 (sum of 2 replicas)", "avg 154 · max 190")


def test_the_table_and_an_empty_window() -> None:
    answer = view(
        series("invocations", "counter", "sum", [10, None, 20, 30, 40, 999], variant="blue")
    )
    console = Console(file=io.StringIO(), width=200)
    console.print(table.render(answer, NOW))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    header, row = text.splitlines()
    for column in ("METRIC", "VARIANT", "UNIT", "EVERY 10s", "LAST 10s", "WINDOW (50s)"):
        assert column in header
    assert row.split() == [
        "invocations",
        "blue",
        "requests",
        "▃",
        "▅▆█",
        "40",
        "(4/s)",
        "100",
        "(2/s)",
    ]
    nothing = table.render(view(), NOW)
    assert nothing == (
        "no metrics for endpoint e in the last 1m yet (points are written every 10 s, a few "
        "seconds after their end)"
    )


def test_watch_redraws_until_ctrl_c() -> None:
    answers = [view(series("invocations", "counter", "sum", [1, 2, 3, 4, 5, 6]))] * 2
    calls = []

    def read() -> dict[str, Any]:
        calls.append(1)
        if len(calls) > len(answers):
            raise KeyboardInterrupt
        return answers[len(calls) - 1]

    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    table.watch(console, read, every_s=0)  # returns at Ctrl-C, no traceback
    assert len(calls) == 3
    assert "invocations" in console.file.getvalue()  # type: ignore[attr-defined]


def test_rows_of_model_and_overhead_latency_and_batch_sizes_over_replicas() -> None:
    def batches(sums: list[float | None], calls: list[float | None], replica: str) -> Any:
        found = series("batch_size", "distribution", "sum", sums, replica=replica)
        for point, n in zip(found["points"], calls, strict=True):
            if n is not None:
                point.update(sample_count=n, avg=point["sum"] / n)
        return found

    answer = view(
        batches([8, None, 6, 10, 4, 999], [2, None, 3, 5, 1, 9], "r1"),
        batches([4, 2, None, 10, 4, 999], [1, 2, None, 5, 3, 9], "r2"),
        series("overhead_latency_ms", "histogram", "p90", [0.5, 0.6, None, 0.7, 0.4, 9]),
        series("model_latency_ms", "histogram", "p90", [3, 4, None, 5, 6, 999]),
    )
    rows = {(r.metric, r.variant): r for r in table.rows(answer, NOW)}
    assert list(rows) == [
        ("model_latency_ms", "v"),
        ("overhead_latency_ms", "v"),
        ("batch_size", "v"),
    ]
    assert rows[("model_latency_ms", "v")].values == [3, 4, None, 5, 6]
    assert rows[("overhead_latency_ms", "v")].values == [0.5, 0.6, None, 0.7, 0.4]
    size = rows[("batch_size", "v")]
    # rows per model call over both replicas: (8 + 4) / 3, 2 / 2, 6 / 3, 20 / 10, 8 / 4
    assert size.values == [4, 1, 2, 2, 2]
    assert (size.last, size.window) == ("2", "avg 2.18 · 22 calls")  # 48 rows / 22 calls
    console = Console(file=io.StringIO(), width=200)
    console.print(table.render(answer, NOW))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines[3].split()[:3] == ["batch_size", "v", "rows"]
    assert lines[1].split()[:3] == ["model_latency_ms", "v", "ms"]
