"""``modelyard rollout status|abort|resume``, ``modelyard history`` and ``modelyard
update-weights``: rollouts as a user follows them (``Client.rollout_status`` and friends).

A rollout is the deployment of a new revision through the endpoint's ``deployment`` policy
(blue/green or rolling); the server moves it on (controlplane/reconcile/rollout.py), the CLI only
shows it. ``--watch`` and ``--wait`` redraw the status on a terminal and print a line per change
elsewhere (a pipe, a log, CI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from modelyard.cli.options import Output, StateDir, Url
from modelyard.cli.output import Format, dump, duration, err, out
from modelyard.client import Client

#: log lines `rollout status` shows
LOG_SHOWN = 6

app = typer.Typer(
    help="Rollouts: follow the deployment of a new revision (steps, traffic split, baking "
    "timer, watched alarms), abort it or resume it. Every deployment is listed by "
    "`modelyard history ENDPOINT`.",
    no_args_is_help=True,
)


def _clock(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return time.strftime(fmt, time.localtime(ts)) if ts else "-"


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def _mode(dep: dict[str, Any]) -> str:
    if dep["mode"] == "blue_green":
        traffic = ((dep.get("policy") or {}).get("blue_green") or {}).get("traffic") or {}
        return f"blue/green, {str(traffic.get('type', 'all_at_once')).replace('_', ' ')}"
    if dep["mode"] == "immediate":
        return "immediate (no replica replaced)"
    return str(dep["mode"])


def _state(dep: dict[str, Any]) -> str:
    return f"{dep['status']} ({dep['phase']})" if dep["phase"] else str(dep["status"])


def _revisions(dep: dict[str, Any]) -> str:
    if dep["from_revision"] is None:
        return str(dep["to_revision"])
    return f"{dep['from_revision']} → {dep['to_revision']}"


def _traffic(view: dict[str, Any]) -> list[str]:
    dep = view["rollout"] or {}
    lines = []
    for fleet in view["traffic"]:
        role = ""
        if dep.get("status") == "InProgress" and dep.get("from_revision") is not None:
            role = {dep["from_revision"]: " (old)", dep["to_revision"]: " (new)"}.get(
                fleet["revision"], ""
            )
        variants = ", ".join(
            f"{v['name']} {_pct(v['share'])} ({v['replicas_ready']} ready)"
            for v in fleet["variants"]
        )
        lines.append(f"revision {fleet['revision']}{role} {_pct(fleet['share'])}: {variants}")
    return lines or ["none (the endpoint serves no revision)"]


def _steps(dep: dict[str, Any]) -> str:
    what = "of replicas" if dep["mode"] == "rolling" else "of traffic"
    return "  ·  ".join(
        f"{i + 1}. {_pct(s['share'])} {what} {s['state']}" for i, s in enumerate(dep["steps"])
    )


def _alarms(view: dict[str, Any]) -> str:
    if not view["alarms"]:
        return "none watched (no auto_rollback in the deployment policy)"
    return "  ·  ".join(
        f"{a['name']} {a['state']}" + (f" ({a['reason']})" if a["state"] == "ALARM" else "")
        for a in view["alarms"]
    )


def status_lines(view: dict[str, Any]) -> list[str]:
    """`rollout status` as lines of text (a rollout_status view)."""
    dep = view["rollout"]
    if dep is None:
        return [
            f"endpoint/{view['endpoint']} has no rollout recorded: each apply that changes it "
            "records one"
        ]
    running = dep["status"] == "InProgress"
    took = "running" if running else "took"
    lines = [
        f"Rollout {dep['id']} of endpoint/{view['endpoint']}: revision {_revisions(dep)}, "
        f"{_mode(dep)}",
        f"  Status:     {_state(dep)}",
        f"  Started:    {_clock(dep['started_at'])} by {dep['by']} ({took} "
        f"{duration(dep['duration_s'])})",
        f"  Changes:    {'; '.join(dep['changes'])}",
    ]
    if dep["steps"]:
        lines.append(f"  Steps:      {_steps(dep)}")
    elif running and dep["mode"] in ("blue_green", "rolling"):
        lines.append("  Steps:      set once the new fleet is ready")
    traffic = _traffic(view)
    lines.append(f"  Traffic:    {traffic[0]}")
    lines += [f"              {line}" for line in traffic[1:]]
    if "wait_left_s" in dep:
        label = "Draining:" if dep["phase"] == "terminating" else "Baking:"
        lines.append(
            f"  {label:<11} {duration(dep['wait_left_s'])} left of {duration(dep['wait_s'])}"
        )
    if "max_execution_left_s" in dep:
        left = duration(dep["max_execution_left_s"])
        lines.append(f"  Time limit: {left} left (then it rolls back: max_execution_s)")
    if dep["mode"] in ("blue_green", "rolling"):
        lines.append(f"  Alarms:     {_alarms(view)}")
    if dep["reason"] and dep["status"] != "Succeeded":
        lines.append(f"  Reason:     {dep['reason']}")
    lines.append("  Log:")
    lines += [
        f"    {_clock(entry['at'], '%H:%M:%S')}  {entry['message']}"
        for entry in dep["log"][-LOG_SHOWN:]
    ]
    return lines


def change_line(view: dict[str, Any]) -> str:
    """One line of what a rollout is doing (without its timers, so it changes only when the
    rollout does)."""
    dep = view["rollout"]
    if dep is None:
        return f"endpoint/{view['endpoint']}: no rollout"
    parts = [f"rollout {dep['id']} (revision {_revisions(dep)}): {_state(dep)}"]
    current = [i for i, s in enumerate(dep["steps"]) if s["state"] == "current"]
    if current:
        parts.append(f"step {current[0] + 1} of {len(dep['steps'])}")
    shares = ", ".join(f"revision {t['revision']} {_pct(t['share'])}" for t in view["traffic"])
    parts.append(f"traffic {shares or 'none'}")
    if view["alarms"]:
        parts.append("alarms " + ", ".join(f"{a['name']} {a['state']}" for a in view["alarms"]))
    return "; ".join(parts)


class RolloutProgress:
    """Shows a rollout, fed its rollout_status views (``Client.wait_rollout``'s
    ``on_progress``): redrawn in place on a terminal; elsewhere a line when the rollout changes
    (:func:`change_line`) and each new line of its log."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self.last_line = ""
        self.seen: set[tuple[float, str]] = set()

    def __enter__(self) -> RolloutProgress:
        if self.console.is_terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=True)
            self.live.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.live is not None:
            self.live.stop()

    def __call__(self, view: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.update(Text("\n".join(status_lines(view))), refresh=True)
            return
        line = change_line(view)
        if line != self.last_line:
            self.console.print(line, markup=False)
            self.last_line = line
        for entry in (view["rollout"] or {}).get("log", []):
            key = (entry["at"], entry["message"])
            if key not in self.seen:
                self.seen.add(key)
                self.console.print(
                    f"  {_clock(entry['at'], '%H:%M:%S')}  {entry['message']}", markup=False
                )


def _exit_code(view: dict[str, Any]) -> int:
    dep = view["rollout"]
    return 0 if dep is None or dep["status"] == "Succeeded" else 1


def _follow(
    client: Client, name: str, rollout: int | None, console: Console = err
) -> dict[str, Any]:
    """Wait for rollout ``rollout`` of ``name`` to end, showing it on ``console``."""
    try:
        with RolloutProgress(console) as show:
            return client.wait_rollout(name, rollout=rollout, on_progress=show)
    except KeyboardInterrupt:
        err.print(
            f"stopped waiting; the rollout goes on: `modelyard rollout status {name} --watch` "
            f"follows it, `modelyard rollout abort {name}` rolls it back",
            markup=False,
        )
        raise


def _ended(view: dict[str, Any]) -> None:
    dep = view["rollout"]
    if dep is None:
        return
    line = f"rollout {dep['id']} of endpoint/{view['endpoint']} {dep['status']}"
    if dep["status"] == "Succeeded":
        out.print(f"{line}: revision {dep['to_revision']} serves all traffic", markup=False)
    else:
        err.print(f"error: {line}: {dep['reason'] or 'see its log'}", markup=False)


@app.command("status")
def status(
    endpoint: Annotated[str, typer.Argument()],
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Redraw live until the rollout ends (a line per change when not on a "
            "terminal); exit status 0 if it Succeeded, 1 if it RolledBack, was Aborted, "
            "Failed or Stopped",
        ),
    ] = False,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Show the endpoint's running (or latest) rollout, live with --watch.

    Revisions from → to, mode, status and phase, who started it and when, its steps (done,
    current, pending), the traffic split per revision and variant, the baking timer, the time
    left before max_execution_s rolls it back, the watched alarms and the last lines of its
    log. -o json|yaml prints it all (Client.rollout_status)."""
    if watch and output_format is not Format.table:
        raise typer.BadParameter("--watch draws the status; leave out -o", param_hint="--watch")
    with Client(url=url, state_dir=state_dir) as client:
        view = client.rollout_status(endpoint)
        if dump(view, output_format):
            return
        if not watch:
            for line in status_lines(view):
                out.print(line, markup=False)
            return
        rollout = view["rollout"]["id"] if view["rollout"] else None
        view = _follow(client, endpoint, rollout, out)
    for line in status_lines(view):
        out.print(line, markup=False)
    raise typer.Exit(_exit_code(view))


Wait = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Show the rollout until it ends; exit status 0 if it Succeeded, 1 otherwise",
    ),
]


@app.command("abort")
def abort(
    endpoint: Annotated[str, typer.Argument()],
    wait: Wait = False,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Roll the running rollout back to the revision served before it.

    All traffic returns to the old revision (at once for blue/green; in batches of
    rollback_max_batch for rolling) and the rollout ends Aborted. `modelyard rollout resume
    ENDPOINT` deploys the new revision again."""
    with Client(url=url, state_dir=state_dir) as client:
        dep = client.abort_rollout(endpoint)
        out.print(
            f"rollout {dep['id']} of endpoint/{endpoint}: abort asked; traffic returns to "
            f"revision {dep['from_revision']}",
            markup=False,
        )
        if not wait:
            return
        view = _follow(client, endpoint, dep["id"])
    _ended(view)
    raise typer.Exit(_exit_code(view))


@app.command("resume")
def resume(
    endpoint: Annotated[str, typer.Argument()],
    wait: Wait = False,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Deploy again the revision whose rollout was rolled back, aborted or failed.

    It becomes a new revision with the same specs, rolled out through the deployment policy
    from the first step."""
    with Client(url=url, state_dir=state_dir) as client:
        dep = client.resume_rollout(endpoint)
        out.print(
            f"rollout {dep['id']} of endpoint/{endpoint} started: revision {_revisions(dep)} "
            f"({_mode(dep)})",
            markup=False,
        )
        if not wait:
            return
        view = _follow(client, endpoint, dep["id"])
    _ended(view)
    raise typer.Exit(_exit_code(view))


def history(
    endpoint: Annotated[str, typer.Argument()],
    limit: Annotated[
        int, typer.Option(min=1, max=500, help="At most this many, newest first")
    ] = 50,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """List every deployment of an endpoint, newest first: who changed what, when, and how it
    ended.

    Each row: id, revisions from → to, mode (create, immediate, blue_green, rolling), status,
    who, when it started (local time) and how long it took; under it what changed and, for a
    rollout that did not succeed, why.

    `modelyard rollback ENDPOINT --to-revision N` goes back to any earlier revision (as a new
    revision, through the deployment policy)."""
    with Client(url=url, state_dir=state_dir) as client:
        items = client.deployments(endpoint, limit=limit)
    if dump(items, output_format):
        return
    rows = [["ID", "REVISION", "MODE", "STATUS", "BY", "STARTED", "TOOK"]]
    details: list[list[str]] = [[]]
    for d in items:
        rows.append(
            [
                str(d["id"]),
                _revisions(d),
                d["mode"],
                _state(d),
                d["by"],
                _clock(d["started_at"]),
                duration(d["duration_s"]),
            ]
        )
        lines = [f"    changes: {'; '.join(d['changes'])}"]
        if d["reason"] and d["status"] != "Succeeded":
            lines.append(f"    reason:  {d['reason']}")
        details.append(lines)
    # Lines, not a table that wraps: what changed is long, and read in a pipe as well.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, (row, lines) in enumerate(zip(rows, details, strict=True)):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.print(line.rstrip(), markup=False, style="bold" if i == 0 else None)
        for detail in lines:
            out.print(detail, markup=False)


def _parse_set(value: str) -> dict[str, Any]:
    """``NAME:weight=3,instance_count=2`` as ``{name, weight, instance_count}``."""
    example = "e.g. --set primary:weight=3,instance_count=2"
    name, sep, pairs = value.partition(":")
    if not sep or not name.strip() or not pairs.strip():
        raise typer.BadParameter(
            f"{value!r} is not NAME:KEY=VALUE[,KEY=VALUE]; {example}", param_hint="--set"
        )
    change: dict[str, Any] = {"name": name.strip()}
    for pair in pairs.split(","):
        key, eq, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in ("weight", "instance_count"):
            raise typer.BadParameter(
                f"{pair.strip()!r}: only weight=W and instance_count=N can change; {example}",
                param_hint="--set",
            )
        try:
            change[key] = float(raw) if key == "weight" else int(raw)
        except ValueError:
            kind = "a number" if key == "weight" else "a whole number"
            raise typer.BadParameter(
                f"{key} must be {kind}, got {raw.strip()!r}", param_hint="--set"
            ) from None
    return change


def update_weights(
    endpoint: Annotated[str, typer.Argument()],
    changes: Annotated[
        list[str],
        typer.Option(
            "--set",
            metavar="VARIANT:KEY=VALUE[,KEY=VALUE]",
            help="A variant and what to change: weight=W (relative to the other variants' "
            "weights), instance_count=N, or both (weight=3,instance_count=2). Repeat for "
            "more variants; they change together",
        ),
    ],
    wait: Annotated[
        bool, typer.Option(help="Wait until the new weights and counts are served")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait")] = 300,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Change variants' weights and instance counts in place, without a redeploy.

    No replica is replaced: added replicas start beside the others and no rollout runs
    (`modelyard history` records it as mode immediate); like SageMaker's
    UpdateEndpointWeightsAndCapacities. Each --set names a variant and what to change, e.g.
    `modelyard update-weights churn --set a:weight=1 --set b:weight=3,instance_count=2`."""
    variants = [_parse_set(value) for value in changes]
    with Client(url=url, state_dir=state_dir) as client:
        result = client.update_weights_and_capacities(endpoint, variants)
        out.print(
            f"endpoint/{endpoint} {result['action']} (revision {result['revision']})",
            markup=False,
        )
        if not wait or result["action"] == "unchanged":
            return
        view = client.wait_endpoint(endpoint, timeout_s=timeout, revision=result["revision"])
    if view["active_revision"] != result["revision"]:
        err.print(f"error: not served: {view['message'] or view['status']}", markup=False)
        raise typer.Exit(1)


def wait_revision(
    client: Client,
    name: str,
    revision: int,
    timeout_s: float,
    on_progress: Callable[[dict[str, Any]], None],
) -> str | None:
    """Wait until ``revision`` of endpoint ``name`` is served; None once it is, else why not.

    When its deployment is a rollout still running (blue/green, rolling), it is followed to
    its end first, shown on stderr, with no time limit but its own max_execution_s; then (or
    otherwise) the endpoint must be InService on the revision within ``timeout_s``."""
    view = client.rollout_status(name)
    dep = view["rollout"]
    ours = dep is not None and dep["to_revision"] == revision
    if ours and dep["status"] == "InProgress" and dep["mode"] in ("blue_green", "rolling"):
        dep = _follow(client, name, dep["id"])["rollout"]
    if ours and dep["status"] in ("RolledBack", "Aborted", "Failed", "Stopped"):
        return f"rollout {dep['id']} {dep['status']}: {dep['reason'] or 'see its log'}"
    described = client.wait_endpoint(
        name, timeout_s=timeout_s, on_progress=on_progress, revision=revision
    )
    if described["status"] == "Failed" or described["active_revision"] != revision:
        return str(described["message"] or described["status"])
    return None
