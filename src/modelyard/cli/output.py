"""Rendering for the CLI: tables for people, JSON and YAML for programs."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def dump(data: Any, fmt: Format) -> bool:
    """Print data as JSON or YAML; False when the caller should draw a table instead."""
    if fmt is Format.json:
        out.print(json.dumps(data, indent=2), markup=False)
        return True
    if fmt is Format.yaml:
        out.print(yaml.safe_dump(data, sort_keys=False).rstrip(), markup=False)
        return True
    return False


def age(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = int(time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(columns: list[str], rows: list[list[Any]]) -> None:
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*[str(cell) for cell in row])
    out.print(grid)


def endpoints_table(items: list[dict[str, Any]]) -> None:
    table(
        ["NAME", "STATUS", "REVISION", "READY", "INVOCATIONS", "4XX", "5XX", "AGE"],
        [
            [
                e["name"],
                e["status"],
                e["revision"],
                e["replicas_ready"],
                e["invocations"],
                e["errors_4xx"],
                e["errors_5xx"],
                age(e["created_at"]),
            ]
            for e in items
        ],
    )


def models_table(items: list[dict[str, Any]]) -> None:
    table(
        ["NAME", "RUNTIME", "ARTIFACT", "AGE"],
        [
            [
                m["name"],
                m["spec"]["runtime"],
                m["spec"].get("artifact") or "-",
                age(m["created_at"]),
            ]
            for m in items
        ],
    )


def describe_endpoint(view: dict[str, Any]) -> None:
    out.print(f"[bold]Endpoint[/bold] {view['name']}")
    out.print(
        f"  Status:     {view['status']}" + (f" — {view['message']}" if view["message"] else ""),
        markup=False,
    )
    out.print(f"  Revision:   {view['revision']} (serving: {view['active_revision'] or '-'})")
    spec = view.get("spec") or {}
    kind = spec.get("type", "realtime")
    out.print(f"  Type:       {kind}", markup=False)
    if kind == "async":
        out.print(f"  URL:        {view['async_url']}", markup=False)
    else:
        out.print(f"  URL:        {view['url']}", markup=False)
    out.print(
        f"  Invocations: {view['invocations']}  "
        f"4xx: {view['errors_4xx']}  5xx: {view['errors_5xx']}"
    )
    if kind == "serverless":
        cfg, st = spec["serverless"], view.get("serverless_status") or {}
        avg = st.get("cold_start_ms_avg")
        out.print(
            f"  Serverless: {cfg['memory_mb']} MB, max concurrency {cfg['max_concurrency']}, "
            f"provisioned {cfg['provisioned_concurrency']}, idle timeout {cfg['idle_timeout_s']} s",
            markup=False,
        )
        out.print(
            f"  Cold starts: {st.get('cold_starts', 0)}"
            + (f" (held {avg:g} ms on average)" if avg is not None else ""),
            markup=False,
        )
    if kind == "async":
        st = view.get("async_status") or {}
        age = st.get("oldest_queued_age_s")
        out.print(
            f"  Queue:      {st.get('queued', 0)} queued, {st.get('running', 0)} running, "
            f"{st.get('succeeded', 0)} succeeded, {st.get('failed', 0)} failed"
            + (f"; oldest queued {age:.1f} s ago" if age is not None else ""),
            markup=False,
        )
        where = st.get("locations") or {}
        if where:
            out.print(f"  Results:    {where['output']}", markup=False)
            if where["failure"] != where["output"]:
                out.print(f"  Failures:   {where['failure']}", markup=False)
        out.print(f"  Webhook secret: {st.get('webhook_secret', '')}", markup=False)
    out.print("  Variants:")
    for v in view["variants"]:
        batching = v.get("batching")
        batches = (
            f", batching up to {batching['max_batch_size']} rows within "
            f"{batching['max_delay_ms']:g} ms"
            if batching
            else ""
        )
        auto, st = v.get("autoscaling"), v.get("autoscaling_status")
        count = f"{v['instance_count']} instance(s)"
        if auto and st:
            count = f"capacity {st['capacity']} (autoscaling {st['min']}..{st['max']})"
        out.print(
            f"    {v['name']}: model {v['model']}, {count}, "
            f"weight {v['weight']:g}{batches}, invocations {v['invocations']}",
            markup=False,
        )
        if auto:
            for line in autoscaling_lines(auto):
                out.print(f"      {line}", markup=False)
        for r in v["replicas"]:
            line = (
                f"      {r['id']}  {r['state']:<8} rev {r['revision']}  pid {r['pid'] or '-'}  "
                f"{r['address'] or '-'}  restarts {r['restarts']}"
            )
            out.print(line + (f"  {r['message']}" if r["message"] else ""), markup=False)
    if view.get("last_log_lines"):
        out.print("  Last log lines of the failed replica:")
        for line in view["last_log_lines"]:
            out.print(f"    {line}", markup=False)
    out.print("  Revisions:")
    for rev in view["revisions"]:
        msg = f" — {rev['message']}" if rev["message"] else ""
        out.print(f"    {rev['number']}: {rev['state']}{msg}", markup=False)
    if view.get("scaling_activities"):
        out.print("  Scaling activities:")
        for act in view["scaling_activities"]:
            stamp = time.strftime("%H:%M:%S", time.localtime(act["at"]))
            out.print(
                f"    {stamp}  {act['variant']}: {act['from']} -> {act['to']}  {act['cause']}",
                markup=False,
            )
    out.print("  Events:")
    for event in view["events"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        out.print(f"    {stamp}  {event['message']}", markup=False)


def autoscaling_lines(auto: dict[str, Any]) -> list[str]:
    """A variant's autoscaling spec in words, one line each policy and scheduled action."""
    lines = []
    for policy in auto.get("policies") or []:
        if policy.get("target_tracking"):
            tt = policy["target_tracking"]
            lines.append(f"target tracking: {tt['metric']} at {tt['target']:g}")
        elif policy.get("step"):
            step = policy["step"]
            steps = ", ".join(
                f"[{'-inf' if a['lower'] is None else format(a['lower'], 'g')}, "
                f"{'inf' if a['upper'] is None else format(a['upper'], 'g')}): {a['change']:+d}"
                for a in step["adjustments"]
            )
            lines.append(f"step on alarm {step['alarm']} ({step['adjustment_type']}): {steps}")
    for action in auto.get("scheduled") or []:
        sets = [f"{k} {action[k]}" for k in ("min", "max") if action.get(k) is not None]
        lines.append(f"scheduled {action['cron']!r} ({action['timezone']}): {', '.join(sets)}")
    scale_in = "disabled" if auto.get("disable_scale_in") else f"{auto['scale_in_cooldown_s']} s"
    lines.append(f"cooldowns: scale-out {auto['scale_out_cooldown_s']} s, scale-in {scale_in}")
    return lines


def async_table(items: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold")
    table.add_column("INFERENCE ID", no_wrap=True, min_width=36)  # ids are for copying: whole
    for column in ("STATUS", "RECEIVED", "ATTEMPTS"):
        table.add_column(column, no_wrap=True)
    table.add_column("DETAIL", overflow="fold")
    for item in items:
        received = item.get("received_at")
        detail = item.get("failure_reason") or item.get("message") or ""
        if item["status"] == "Completed":  # where: `modelyard async get ENDPOINT ID`
            detail = f"{item.get('output_bytes') or 0} B result"
        table.add_row(
            item["inference_id"],
            item["status"],
            time.strftime("%H:%M:%S", time.localtime(received)) if received else "-",
            str(item.get("attempts", 0)),
            detail,
        )
    out.print(table)


def _records(done: int, total: int | None) -> str:
    if total is None:
        return f"{done}/?"
    percent = f" ({100 * done // total}%)" if total else ""
    return f"{done}/{total}{percent}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 and whole != seconds else f"{whole}s"


def transform_progress(view: dict[str, Any], rate: float | None) -> tuple[str, str, str]:
    """(records, rate, ETA) of a transform job's description as words, at ``rate`` records a
    second (the job's average when None)."""
    progress = view["progress"]
    processed = progress["records_done"] + progress["records_failed"]
    total = progress["total_records"]
    if total is None:
        return f"{processed} (counting records…)", "", ""
    records = _records(processed, total)
    if progress["records_failed"]:
        records += f", {progress['records_failed']} failed"
    rate = rate or view["summary"]["records_per_s"]
    if not rate:
        return records, "", ""
    if view["status"] != "InProgress" or processed >= total:
        return records, f"{rate:,.0f} rec/s", ""
    return records, f"{rate:,.0f} rec/s", f"ETA {duration(math.ceil((total - processed) / rate))}"


class TransformProgress:
    """Shows a transform job's progress, fed its descriptions (``Client.wait_transform``'s
    ``on_progress``): an animated bar on a terminal; elsewhere (a pipe, a log, CI) a plain line
    at most every ``every_s`` seconds, and the last one.

    While the job runs, its rate is that of the last ``window_s`` seconds seen, not the job's
    average, which counts the replicas' start and so would put the ETA too far."""

    def __init__(
        self,
        console: Console = err,
        every_s: float = 1.0,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.every_s = every_s
        self.window_s = window_s
        self.clock = clock
        self.samples: deque[tuple[float, int]] = deque()
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.printed_at: float | None = None
        self.last_line = ""

    def __enter__(self) -> TransformProgress:
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[records]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
            )
            self.task = self.bar.add_task("records", total=None, records="", rate="", eta="")
            self.bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _rate(self, now: float, view: dict[str, Any]) -> float | None:
        progress = view["progress"]
        processed = progress["records_done"] + progress["records_failed"]
        if view["status"] != "InProgress" or not processed:
            return None
        self.samples.append((now, processed))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        since, before = self.samples[0]
        return (processed - before) / (now - since) if now - since >= 0.5 else None

    def __call__(self, view: dict[str, Any]) -> None:
        now = self.clock()
        records, rate, eta = transform_progress(view, self._rate(now, view))
        if self.bar is not None and self.task is not None:
            progress = view["progress"]
            self.bar.update(
                self.task,
                description=view["status"] if view["status"] != "InProgress" else "records",
                completed=progress["records_done"] + progress["records_failed"],
                total=progress["total_records"],
                records=records,
                rate=rate,
                eta=eta,
            )
            return
        line = ", ".join(part for part in (f"records {records}", rate, eta) if part)
        if view["status"] != "InProgress":
            line += f" [{view['status']}]"
        final = view["status"] not in ("InProgress", "Stopping")
        due = self.printed_at is None or now - self.printed_at >= self.every_s
        if line != self.last_line and (due or final):
            self.console.print(line, markup=False)
            self.printed_at, self.last_line = now, line


def transforms_table(items: list[dict[str, Any]]) -> None:
    table(
        ["NAME", "STATUS", "MODEL", "RECORDS", "FAILED", "AGE"],
        [
            [
                job["name"],
                job["status"],
                job["model"],
                _records(job["records_done"] + job["records_failed"], job["total_records"]),
                job["records_failed"],
                age(job["created_at"]),
            ]
            for job in items
        ],
    )


def transform_summary(view: dict[str, Any]) -> None:
    """What a finished job did: status, records, failures, time, throughput, where it wrote."""
    summary, spec = view["summary"], view["spec"]
    message = f" — {view['message']}" if view["message"] else ""
    rate = summary["records_per_s"]
    out.print(f"transformjob/{view['name']} {view['status']}{message}", markup=False)
    out.print(f"  Records:    {summary['records']} ({summary['failures']} failed)")
    out.print(f"  Duration:   {duration(summary['duration_s'])}")
    out.print(f"  Throughput: {f'{rate:,.0f} rec/s' if rate else '-'}")
    out.print(f"  Output:     {spec['output']['uri']}", markup=False)
    if view["failure_file"]:
        out.print(f"  Failures:   {view['failure_file']}", markup=False)


def _clock(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def describe_transform(view: dict[str, Any]) -> None:
    spec, progress, summary = view["spec"], view["progress"], view["summary"]
    source = spec["input"]
    message = f" — {view['message']}" if view["message"] else ""
    files = f"{progress['files_done']}/{progress['files_total'] or '?'}"
    processed = progress["records_done"] + progress["records_failed"]
    rate = summary["records_per_s"]
    out.print(f"[bold]TransformJob[/bold] {view['name']}")
    for label, value in (
        ("Status", f"{view['status']}{message}"),
        ("Model", view["model"]),
        (
            "Input",
            f"{source['uri']} ({source['content_type']}, split {source['split_type']}, "
            f"compression {source['compression']})",
        ),
        ("Output", spec["output"]["uri"]),
        ("Strategy", f"{spec['batch_strategy']}, up to {spec['max_payload_mb']} MB a request"),
        (
            "Progress",
            f"{_records(processed, progress['total_records'])} records processed, "
            f"{progress['records_failed']} failed, files {files}",
        ),
        (
            "Summary",
            f"{summary['records']} records, {summary['failures']} failures in "
            f"{duration(summary['duration_s'])}" + (f", {rate:,.0f} rec/s" if rate else ""),
        ),
        ("Failures", view["failure_file"] or "-"),
        ("Created", _clock(view["created_at"])),
        ("Started", _clock(view["started_at"])),
        ("Finished", _clock(view["finished_at"])),
    ):
        out.print(f"  {label + ':':<11} {value}", markup=False)
    if view["replicas"]:
        out.print("  Replicas:")
        for r in view["replicas"]:
            out.print(f"    {r['id']}  {r['address'] or '-'}", markup=False)
    if view["outputs"]:
        out.print("  Files:")
        for f in view["outputs"]:
            state = "done" if f["done"] else "pending"
            line = f"    {f['input']} -> {f['output']} ({f['records']} records, {state})"
            out.print(line, markup=False)
