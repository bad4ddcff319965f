"""``modelyard shadow report|promote``: compare a shadow variant with production, and promote
it (``Client.shadow_report``, ``Client.promote_shadow``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelyard.cli import rollouts
from modelyard.cli.metrics import parse_duration
from modelyard.cli.options import Output, StateDir, Url
from modelyard.cli.output import Format, dump, err, out
from modelyard.client import Client

app = typer.Typer(
    help="Shadow variants: a variant named in the endpoint's `shadow: {variant, "
    "sampling_percent}` gets a copy of that share of requests; its answers are measured and "
    "compared with production's, never returned.",
    no_args_is_help=True,
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def report_lines(view: dict[str, Any]) -> list[str]:
    """The report as a user reads it."""
    prod, shadow = view["production"], view["shadow"]
    agreement = view["agreement"]
    lines = [
        f"endpoint/{view['endpoint']}: shadow {view['shadow_variant']} gets "
        f"{view['sampling_percent']:g} % of the requests of "
        f"{', '.join(view['production_variants'])} (last {view['since_s']} s)",
        "",
        f"{'':24}{'production':>14}{'shadow':>14}{'delta':>12}",
        f"{'invocations':24}{prod['invocations']:>14}{shadow['invocations']:>14}",
        f"{'errors (4xx/5xx)':24}"
        f"{prod['errors_4xx']:>8}/{prod['errors_5xx']:<5}{shadow['errors_4xx']:>8}/"
        f"{shadow['errors_5xx']:<5}",
        f"{'error rate':24}{_rate(prod['error_rate']):>14}{_rate(shadow['error_rate']):>14}",
    ]
    for metric, label in (("latency_ms", "latency"), ("model_latency_ms", "model latency")):
        for stat in ("p50", "p90", "p99"):
            delta = view["latency_delta_ms"][metric][stat]
            lines.append(
                f"{label + ' ' + stat + ' (ms)':24}{_ms(prod[metric][stat]):>14}"
                f"{_ms(shadow[metric][stat]):>14}"
                f"{'-' if delta is None else f'{delta:+.1f}':>12}"
            )
    lines += [
        "",
        f"agreement: {agreement['agreed']} of {agreement['compared']} answers compared "
        f"({_rate(agreement['rate'])})"
        + (
            f"; {view['copies_shed']} copies shed (too many in flight)"
            if view["copies_shed"]
            else ""
        ),
    ]
    return lines


@app.command("report")
def report(
    endpoint: Annotated[str, typer.Argument()],
    since: Annotated[str, typer.Option("--since", help="how far back: 90s, 15m, 2h, 1d")] = "15m",
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Compare the shadow variant with production: traffic, errors, latency (total and model)
    and how often their answers agreed (equal, or JSON equal with numbers within 1e-6)."""
    with Client(url=url, state_dir=state_dir) as client:
        view = client.shadow_report(endpoint, parse_duration(since))
    if dump(view, output_format):
        return
    for line in report_lines(view):
        out.print(line, markup=False, highlight=False)


@app.command("promote")
def promote(
    endpoint: Annotated[str, typer.Argument()],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="follow the rollout to its end")
    ] = True,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Make the shadow variant the production one: a new revision where it is the only variant
    (with the production variants' capacity), rolled out by the endpoint's deployment policy
    (a canary, with its alarms, if the endpoint has one)."""
    with Client(url=url, state_dir=state_dir) as client:
        result = client.promote_shadow(endpoint)
        out.print(
            f"endpoint/{endpoint}: shadow {result['variant']} promoted as revision "
            f"{result['revision']} (rollout {result['rollout']})",
            markup=False,
        )
        if not wait:
            return
        why = rollouts.wait_revision(
            client, endpoint, result["revision"], 600.0, lambda _view: None
        )
    if why is not None:
        err.print(f"endpoint/{endpoint}: {why}", markup=False)
        raise typer.Exit(1)
    out.print(f"endpoint/{endpoint}: {result['variant']} serves all traffic", markup=False)
