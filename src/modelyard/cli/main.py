"""``modelyard``: run a server, apply specs, inspect endpoints, invoke them."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard import __version__
from modelyard.cli import alarms as alarms_cli
from modelyard.cli import metrics as metrics_table
from modelyard.cli import output
from modelyard.cli import rollouts as rollouts_cli
from modelyard.cli import shadow as shadow_cli
from modelyard.cli.options import Output, StateDir, Url
from modelyard.cli.output import Format, dump, err, out
from modelyard.client import Client
from modelyard.client.client import read_documents
from modelyard.errors import ModelyardError, UserError
from modelyard.settings import DEFAULT_API_PORT, DEFAULT_GATEWAY_PORT

app = typer.Typer(
    help="Modelyard: managed endpoints for your ML models, on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

KIND_ALIASES = {
    "model": "model",
    "models": "model",
    "mo": "model",
    "endpoint": "endpoint",
    "endpoints": "endpoint",
    "ep": "endpoint",
}


def _client(url: str | None, state_dir: Path | None) -> Client:
    return Client(url=url, state_dir=state_dir)


def _kind(kind: str) -> str:
    try:
        return KIND_ALIASES[kind.lower()]
    except KeyError:
        raise typer.BadParameter(f"must be 'model' or 'endpoint' (got {kind!r})") from None


def _version(value: bool) -> None:
    if value:
        out.print(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version")
    ] = False,
) -> None:
    pass


@app.command()
def server(
    state_dir: StateDir = None,
    store_url: Annotated[
        str | None,
        typer.Option(
            help="Store URL: sqlite:///PATH or postgresql://USER@HOST/DB",
            show_default="SQLite in the state dir",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Control-plane API port (0 = any free port)")
    ] = DEFAULT_API_PORT,
    gateway_port: Annotated[
        int, typer.Option(help="Gateway (invocations) port (0 = any)")
    ] = DEFAULT_GATEWAY_PORT,
    gateway_workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Gateway processes sharing the gateway port. One handles tens of thousands of "
            "requests a second; more pay only when it is the bottleneck (bench/NOTES.md)",
        ),
    ] = 1,
    require_invoke_token: Annotated[
        bool, typer.Option(help="Require the invoke token (state dir: invoke-token) on invocations")
    ] = False,
    invocation_timeout: Annotated[
        float, typer.Option(help="Seconds a model may take to answer")
    ] = 60.0,
    metrics_retention: Annotated[
        float,
        typer.Option(
            min=1,
            help="Hours of metrics kept at 10 s resolution; older ones are rolled up to 1 minute "
            "(kept 14 days)",
        ),
    ] = 24.0,
    autoscale_interval: Annotated[
        float,
        typer.Option(min=1, hidden=True, help="Seconds between autoscaling decisions"),
    ] = 10.0,
    autoscale_window: Annotated[
        float,
        typer.Option(min=10, hidden=True, help="Seconds of metrics that target tracking averages"),
    ] = 60.0,
) -> None:
    """Start the control plane and the gateway; Ctrl-C stops everything."""
    from modelyard.server import Supervisor
    from modelyard.settings import ServerSettings, default_store_url

    folder = (state_dir or Path(".modelyard")).resolve()
    settings = ServerSettings(
        state_dir=folder,
        store_url=store_url or default_store_url(folder),
        host=host,
        api_port=port,
        gateway_port=gateway_port,
        gateway_workers=gateway_workers,
        require_invoke_token=require_invoke_token,
        invocation_timeout_s=invocation_timeout,
        metrics_retention_s=metrics_retention * 3600.0,
        autoscale_interval_s=autoscale_interval,
        autoscale_window_s=autoscale_window,
    )
    raise typer.Exit(Supervisor(settings, echo=lambda line: out.print(line, markup=False)).run())


def _progress_printer() -> Any:
    last: dict[str, str] = {}

    def show(view: dict[str, Any]) -> None:
        total = sum(
            (v.get("autoscaling_status") or {}).get("capacity", v["instance_count"])
            for v in view["variants"]
        )
        ready = sum(
            1
            for v in view["variants"]
            for r in v["replicas"]
            if r["state"] == "ready" and r["revision"] == view["revision"]
        )
        line = (
            f"  endpoint/{view['name']}: {view['status']} "
            f"(revision {view['revision']}, {ready}/{total} replicas ready)"
        )
        if view["status"] == "Failed" and view["message"]:
            line += f"\n    {view['message']}"
        if last.get(view["name"]) != line:
            last[view["name"]] = line
            err.print(line, markup=False)

    return show


@app.command()
def apply(
    file: Annotated[
        Path, typer.Option("-f", "--file", help="YAML file with one or more documents")
    ],
    wait: Annotated[
        bool,
        typer.Option(
            help="Wait until endpoints are InService; an update's rollout is shown until it "
            "ends (exit status 1 if it rolled back, was aborted or failed)"
        ),
    ] = True,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for an endpoint to be InService (a rollout is followed "
            "until it ends, within its max_execution_s)"
        ),
    ] = 300,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Create or update the resources in FILE (idempotent)."""
    with _client(url, state_dir) as client:
        results = client.apply_file(file)
        if not dump(results, output_format):
            for r in results:
                rev = f" (revision {r['revision']})" if "revision" in r else ""
                out.print(f"{r['kind'].lower()}/{r['name']} {r['action']}{rev}", markup=False)
        if not wait:
            return
        failed = []
        for r in results:
            if r["kind"] != "Endpoint":
                continue
            why = rollouts_cli.wait_revision(
                client, r["name"], r["revision"], timeout, _progress_printer()
            )
            if why is not None:
                err.print(f"endpoint/{r['name']}: {why}", markup=False)
                failed.append(r["name"])
        if failed:
            err.print(
                f"error: not in service: {', '.join(failed)} "
                "(see `modelyard describe endpoint NAME`)"
            )
            raise typer.Exit(1)


@app.command()
def rollback(
    endpoint: Annotated[str, typer.Argument()],
    to_revision: Annotated[int, typer.Option("--to-revision", help="The revision to return to")],
    wait: Annotated[bool, typer.Option(help="Wait until it is InService")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait")] = 300,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Roll an endpoint back to an earlier revision (recorded as a new revision)."""
    with _client(url, state_dir) as client:
        result = client.rollback_endpoint(endpoint, to_revision)
        out.print(f"endpoint/{endpoint} {result['action']} (revision {result['revision']})")
        if wait:
            why = rollouts_cli.wait_revision(
                client, endpoint, result["revision"], timeout, _progress_printer()
            )
            if why is not None:
                err.print(f"error: rollback did not complete: {why}", markup=False)
                raise typer.Exit(1)


@app.command()
def get(
    kind: Annotated[str, typer.Argument(help="models | endpoints")],
    name: Annotated[str | None, typer.Argument(help="One resource by name")] = None,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """List models or endpoints (with status and invocation counts)."""
    with _client(url, state_dir) as client:
        if _kind(kind) == "model":
            items = [client.get_model(name)] if name else client.list_models()
            if not dump(items if not name else items[0], output_format):
                output.models_table(items)
        else:
            items = client.list_endpoints()
            if name:
                items = [e for e in items if e["name"] == name]
                if not items:
                    client.describe_endpoint(name)  # raises the 404
            if not dump(items if not name else items[0], output_format):
                output.endpoints_table(items)


@app.command()
def describe(
    kind: Annotated[str, typer.Argument(help="model | endpoint")],
    name: Annotated[str, typer.Argument()],
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Show one resource in detail: replicas, revisions, events, failures."""
    with _client(url, state_dir) as client:
        if _kind(kind) == "model":
            view = client.get_model(name)
            if not dump(view, output_format):
                dump(view, Format.yaml)
            return
        view = client.describe_endpoint(name)
        if not dump(view, output_format):
            output.describe_endpoint(view)


@app.command()
def delete(
    kind: Annotated[str, typer.Argument(help="model | endpoint")],
    name: Annotated[str, typer.Argument()],
    wait: Annotated[
        bool, typer.Option(help="Wait until an endpoint's replicas are stopped")
    ] = True,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Delete a model or an endpoint (endpoints drain their replicas first)."""
    with _client(url, state_dir) as client:
        if _kind(kind) == "model":
            client.delete_model(name)
        else:
            client.delete_endpoint(name, wait=wait)
        out.print(f"{_kind(kind)}/{name} deleted", markup=False)


@app.command()
def invoke(
    endpoint: Annotated[str, typer.Argument()],
    body: Annotated[str | None, typer.Option("--body", "-d", help="Request body (text)")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read the body from a file ('-' for stdin)")
    ] = None,
    content_type: Annotated[
        str, typer.Option(help="Content type of the body")
    ] = "application/json",
    accept: Annotated[str | None, typer.Option(help="Response encoding")] = None,
    variant: Annotated[str | None, typer.Option(help="Invoke this variant")] = None,
    custom_attributes: Annotated[str | None, typer.Option(help="Passed to the model")] = None,
    is_async: Annotated[
        bool,
        typer.Option(
            "--async",
            help="Queue the request on an async endpoint (the file is streamed, up to 1 GB)",
        ),
    ] = False,
    input_location: Annotated[
        str | None,
        typer.Option(help="--async: a storage URI holding the payload (instead of a body)"),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="--async: wait for the result and say where it is")
    ] = False,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Invoke an endpoint through the gateway and print the answer (with --async: queue it and
    print its inference id and where its result will be)."""
    if is_async:
        _invoke_async(
            endpoint,
            body,
            file,
            input_location,
            content_type,
            accept,
            custom_attributes,
            wait,
            url,
            state_dir,
        )
        return
    if input_location is not None or wait:
        raise typer.BadParameter("--input-location and --wait go with --async")
    if (body is None) == (file is None):
        raise typer.BadParameter("give exactly one of --body and --file")
    if file is not None:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    else:
        data = (body or "").encode()
    with _client(url, state_dir) as client:
        result = client.invoke(
            endpoint,
            data,
            content_type=content_type,
            accept=accept,
            variant=variant,
            custom_attributes=custom_attributes,
        )
    if result.content_type.startswith(("application/json", "text/")):
        out.print(result.body.decode("utf-8", "replace").rstrip(), markup=False)
    else:
        sys.stdout.buffer.write(result.body)
    err.print(f"(variant {result.variant})", style="dim")


def _invoke_async(
    endpoint: str,
    body: str | None,
    file: Path | None,
    input_location: str | None,
    content_type: str,
    accept: str | None,
    custom_attributes: str | None,
    wait: bool,
    url: str | None,
    state_dir: Path | None,
) -> None:
    if body is not None and file is not None:
        raise typer.BadParameter("give at most one of --body and --file")
    payload: Any = None
    if file is not None:
        payload = sys.stdin.buffer if str(file) == "-" else file
    elif body is not None:
        payload = body.encode()
    if payload is None and input_location is None:
        raise typer.BadParameter("give --body, --file or --input-location")
    with _client(url, state_dir) as client:
        queued = client.invoke_async(
            endpoint,
            payload,
            input_location=input_location,
            content_type=content_type,
            accept=accept,
            custom_attributes=custom_attributes,
        )
        out.print(f"inference id: {queued['inference_id']}", markup=False)
        out.print(f"output:       {queued['output_location']}", markup=False)
        out.print(f"failure:      {queued['failure_location']}", markup=False)
        if not wait:
            return
        view = client.wait_async(endpoint, queued["inference_id"])
    if view["status"] == "Completed":
        out.print(f"Completed: {view['output_location']}", markup=False)
        return
    err.print(f"Failed: {view.get('failure_reason', '')}", markup=False)
    raise typer.Exit(1)


async_app = typer.Typer(help="Requests queued on async endpoints.", no_args_is_help=True)
app.add_typer(async_app, name="async")


@async_app.command("get")
def async_get(
    endpoint: Annotated[str, typer.Argument()],
    inference_id: Annotated[str, typer.Argument()],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is done")] = False,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Show one async request: its status, where its result or failure is, and why."""
    with _client(url, state_dir) as client:
        if wait:
            view = client.wait_async(endpoint, inference_id)
        else:
            view = client.async_invocation(endpoint, inference_id)
    if not dump(view, output_format):
        dump({k: v for k, v in view.items() if v not in (None, "")}, Format.yaml)


@async_app.command("list")
def async_list(
    endpoint: Annotated[str, typer.Argument()],
    status: Annotated[str | None, typer.Option(help="Queued, Running, Completed or Failed")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """List an async endpoint's requests, newest first."""
    with _client(url, state_dir) as client:
        items = client.list_async_invocations(endpoint, status=status, limit=limit)
    if not dump(items, output_format):
        output.async_table(items)


transform_app = typer.Typer(
    help="Batch transform jobs: run a model over stored files and write its answers to files.",
    no_args_is_help=True,
)
app.add_typer(transform_app, name="transform")


@transform_app.command("run")
def transform_run(
    file: Annotated[
        Path,
        typer.Option(
            "-f", "--file", help="YAML file with one or more TransformJob documents (and Models)"
        ),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress until the jobs end, then a summary")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="--wait: seconds to wait for each job", show_default="as long as it runs"
        ),
    ] = None,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Start the transform jobs in FILE (and apply the Models in it).

    Relative paths in FILE are relative to FILE. With --wait: a progress bar (a line a second
    when not on a terminal), then a summary; exit status 1 when a job ends Failed or Stopped
    (CompletedWithFailures is a success, with a warning)."""
    documents = read_documents(file)
    jobs = [d.name for d in documents if d.kind == "TransformJob"]
    if not jobs:
        raise UserError(
            f"{file} holds no TransformJob document (kind: TransformJob); "
            "for models and endpoints alone use `modelyard apply -f`"
        )
    with _client(url, state_dir) as client:
        for r in client.apply(documents):
            out.print(f"{r['kind'].lower()}/{r['name']} {r['action']}", markup=False)
        if not wait:
            return
        ended = [_wait_transform(client, name, timeout) for name in jobs]
    if any(view["status"] in ("Failed", "Stopped") for view in ended):
        raise typer.Exit(1)


def _wait_transform(client: Client, name: str, timeout: float | None) -> dict[str, Any]:
    try:
        with output.TransformProgress() as show:
            view = client.wait_transform(name, timeout_s=timeout, on_progress=show)
    except KeyboardInterrupt:
        err.print(f"stopped waiting; `modelyard transform stop {name}` stops the job itself")
        raise
    output.transform_summary(view)
    if view["status"] == "CompletedWithFailures":
        failed = view["summary"]["failures"]
        err.print(
            f"warning: {failed} record(s) of transformjob/{name} failed; "
            f"see {view['failure_file']}",
            markup=False,
        )
    elif view["status"] in ("Failed", "Stopped"):
        err.print(
            f"error: transformjob/{name} ended {view['status']}; "
            f"`modelyard transform logs {name}` shows its log",
            markup=False,
        )
    return view


@transform_app.command("list")
def transform_list(
    output_format: Output = Format.table, url: Url = None, state_dir: StateDir = None
) -> None:
    """List transform jobs, newest first: status, model, records done/total and failed."""
    with _client(url, state_dir) as client:
        items = client.list_transform_jobs()
    if not dump(items, output_format):
        output.transforms_table(items)


@transform_app.command("describe")
def transform_describe(
    name: Annotated[str, typer.Argument()],
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Show one transform job: status, progress, summary, files written, where failures are."""
    with _client(url, state_dir) as client:
        view = client.transform_job(name)
    if not dump(view, output_format):
        output.describe_transform(view)


@transform_app.command("stop")
def transform_stop(
    name: Annotated[str, typer.Argument()], url: Url = None, state_dir: StateDir = None
) -> None:
    """Stop a running transform job: it keeps the output files it finished and ends Stopped."""
    with _client(url, state_dir) as client:
        result = client.stop_transform_job(name)
    out.print(f"transformjob/{name} {result['status']}", markup=False)


@transform_app.command("logs")
def transform_logs(
    name: Annotated[str, typer.Argument()],
    tail: Annotated[
        int, typer.Option(help="Lines to show of each log (the job's, each replica's)")
    ] = 100,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Print a transform job's log and its replicas' logs."""
    with _client(url, state_dir) as client:
        for line in client.transform_logs(name, tail=tail):
            out.print(line, markup=False)


@app.command()
def metrics(
    endpoint: Annotated[str, typer.Argument()],
    variant: Annotated[str | None, typer.Option(help="One variant only")] = None,
    metric: Annotated[
        str | None, typer.Option(help="One metric only (invocations, latency_ms, …)")
    ] = None,
    since: Annotated[
        int,
        typer.Option(
            parser=metrics_table.parse_duration,
            metavar="DURATION",
            show_default=False,
            help="The window, back from now: 90s, 15m, 2h, 1d (up to 14d); default 15m",
        ),
    ] = 900,
    period: Annotated[
        int | None,
        typer.Option(
            parser=metrics_table.parse_duration,
            metavar="DURATION",
            show_default=False,
            help="Each sparkline character (a multiple of 10s); by default the window fits in "
            f"{metrics_table.MAX_BARS} characters (fewer on a narrow terminal)",
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Redraw the table every 5 s until Ctrl-C")
    ] = False,
    output_format: Output = Format.table,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Show an endpoint's metrics over a window: one row per metric and variant, a sparkline
    (counters: events per period; latency_ms: p90; gauges: average; blank: no data), the last
    complete period (latency: p50 · p90 · p99), and the whole window (totals and rates, errors
    as a share of invocations; or average and maximum). cpu_percent is the average of a
    variant's replicas (100 = one core), memory_mb their sum.

    -o json|yaml prints every statistic of every period (Client.metrics)."""
    if watch and output_format is not Format.table:
        raise typer.BadParameter("--watch draws the table; leave out -o", param_hint="--watch")
    period_s = period or metrics_table.default_period(since, metrics_table.bars(out))
    with _client(url, state_dir) as client:

        def read() -> dict[str, Any]:
            return client.metrics(
                endpoint, since_s=since, period_s=period_s, metric=metric, variant=variant
            )

        view = read()
        if dump(view, output_format):
            return
        if watch:
            metrics_table.watch(out, read)
        else:
            metrics_table.show(out, view)


@app.command()
def logs(
    endpoint: Annotated[str, typer.Argument()],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines")] = False,
    tail: Annotated[int, typer.Option(help="Lines per replica to show first")] = 100,
    url: Url = None,
    state_dir: StateDir = None,
) -> None:
    """Print the logs of an endpoint's replicas."""
    with _client(url, state_dir) as client:
        page = client.logs(endpoint, tail=tail)
        for line in page["lines"]:
            out.print(line, markup=False)
        while follow:
            time.sleep(0.5)  # polling the control plane for new lines
            page = client.logs(endpoint, cursor=page["cursor"])
            for line in page["lines"]:
                out.print(line, markup=False)


app.add_typer(alarms_cli.app, name="alarms")
app.add_typer(rollouts_cli.app, name="rollout")
app.add_typer(shadow_cli.app, name="shadow")
app.command("history")(rollouts_cli.history)
app.command("update-weights")(rollouts_cli.update_weights)


def main() -> None:
    try:
        app()
    except ModelyardError as exc:
        err.print(f"error: {exc.message}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
