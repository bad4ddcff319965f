"""``modelyard alarms``: alarms' states, why they are in them, and their history.

Alarms are created and changed with ``modelyard apply -f`` (kind: Alarm)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from modelyard.cli.options import Output, StateDir, Url
from modelyard.cli.output import Format, age, dump, out, table
from modelyard.client import Client

app = typer.Typer(
    help="Alarms on endpoint metrics: state (OK, ALARM, INSUFFICIENT_DATA), reason, history. "
    "Create or change them with `modelyard apply -f` (kind: Alarm).",
    no_args_is_help=True,
)


def _watched(view: dict[str, Any]) -> str:
    return f"{view['endpoint']}/{view['variant']}" if view["variant"] else str(view["endpoint"])


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@app.command("list")
def list_alarms(
    output_format: Output = Format.table, url: Url = None, state_dir: StateDir = None
) -> None:
    """List alarms: state, since when, and the condition each watches."""
    with Client(url=url, state_dir=state_dir) as client:
        items = client.list_alarms()
    if dump(items, output_format):
        return
    table(
        ["NAME", "STATE", "SINCE", "ENDPOINT", "CONDITION"],
        [
            [a["name"], a["state"], age(a["state_since"]), _watched(a), a["condition"]]
            for a in items
        ],
    )


@app.command("describe")
def describe_alarm(
    name: Annotated[str, typer.Argument()],
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Show one alarm: state and why, the latest evaluation, actions, webhook secret, recent
    history and webhook deliveries."""
    with Client(url=url, state_dir=state_dir) as client:
        view = client.describe_alarm(name)
    if dump(view, output_format):
        return
    spec = view["spec"]
    actions = ", ".join(
        f"{state}: {' '.join(urls)}" for state, urls in spec["actions"].items() if urls
    )
    latest = f": {view['evaluation']}" if view["evaluation"] != view["reason"] else ""
    out.print(f"[bold]Alarm[/bold] {view['name']}")
    for label, value in (
        ("State", f"{view['state']} since {_when(view['state_since'])}"),
        ("Reason", view["reason"]),
        ("Condition", f"{view['condition']} (endpoint {_watched(view)})"),
        ("Missing data", spec["treat_missing_data"]),
        ("Evaluated", _when(view["evaluated_at"]) + latest),
        ("Actions", actions or "-"),
        ("Description", spec["description"] or "-"),
        ("Webhook secret", view["webhook_secret"]),
    ):
        out.print(f"  {label + ':':<15} {value}", markup=False)
    out.print("  History (newest first):")
    for t in view["history"]:
        line = f"    {_when(t['at'])}  {t['old_state']} -> {t['new_state']}: {t['reason']}"
        out.print(line, markup=False)
    if view["deliveries"]:
        out.print("  Webhooks (newest first):")
        for d in view["deliveries"]:
            error = f" ({d['last_error']})" if d["last_error"] else ""
            line = f"    {_when(d['created_at'])}  {d['url']}  {d['state']}, "
            out.print(f"{line}{d['attempts']} tries{error}", markup=False)


@app.command("history")
def alarm_history(
    name: Annotated[str, typer.Argument()],
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 100,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """An alarm's changes of state, newest first, each with its reason."""
    with Client(url=url, state_dir=state_dir) as client:
        page = client.alarm_history(name, limit=limit)
    items: list[dict[str, Any]] = page["items"]
    if dump(items, output_format):
        return
    table(
        ["TIME", "FROM", "TO", "REASON"],
        [[_when(t["at"]), t["old_state"], t["new_state"], t["reason"]] for t in items],
    )


@app.command("delete")
def delete_alarm(
    name: Annotated[str, typer.Argument()], url: Url = None, state_dir: StateDir = None
) -> None:
    """Delete an alarm and its history (webhooks already due are still delivered)."""
    with Client(url=url, state_dir=state_dir) as client:
        client.delete_alarm(name)
    out.print(f"alarm/{name} deleted", markup=False)
