"""Benchmark Modelyard's data plane against a hand-written server, the HTTP ceiling and the raw
model, on the public workloads (W1 "tiny", W2 "batchable"; see bench/README.md).

Everything it needs is started here, bound to 127.0.0.1 on free ports in temporary folders, and
stopped at the end (also on Ctrl-C and errors). Results go to
bench/results/<UTC time>-<host>.json/.md and bench/results/latest.json/.md (--out DIR instead).

Exit status: 0 when every request succeeded (missed performance targets are reported, not
failures); 1 when any request failed; 2 for bad arguments; 3 when a server or tool failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np

from harness import coldstart, machine, report
from harness.common import (
    BATCH_ROWS,
    BATCHING,
    CEILING,
    HANDWRITTEN,
    N_FEATURES,
    N_SAMPLES,
    PLATFORM,
    PLATFORM_NO_BATCHING,
    REPO_ROOT,
    RESULTS_DIR,
    WORKLOADS,
    Workload,
    child_env,
)
from harness.load import Generator, LoadResult, PythonGenerator, WrkGenerator, wrk_path
from harness.procs import Child, HarnessError, PeakRss
from harness.report import Measurement
from harness.servers import Platform, Processes, Server, UvicornServer, stop_all

EXIT_REQUEST_ERRORS = 1
EXIT_USAGE = 2
EXIT_HARNESS = 3


@dataclass(frozen=True, slots=True)
class Defaults:
    levels: tuple[int, ...]
    warmup_s: float
    duration_s: float
    cold_start_rounds: int


DEFAULTS = Defaults(levels=(1, 16, 64), warmup_s=3.0, duration_s=10.0, cold_start_rounds=5)
QUICK = Defaults(levels=(1, 16, 64), warmup_s=0.3, duration_s=1.0, cold_start_rounds=2)
COLD_START_ENDPOINT = "w1-tiny-serverless"
HANDLER = "async"  # the hand-written server's handler; see bench/baselines/handwritten.py


@dataclass(frozen=True, slots=True)
class Settings:
    workloads: list[Workload]
    levels: list[int]
    warmup_s: float
    duration_s: float
    workers: int
    batching_replicas: int
    generator: str  # "wrk" or "python"
    handler: str
    cold_start_rounds: int  # 0: not measured
    quick: bool
    out_dir: Path
    latest: bool  # also write latest.json/.md

    def as_json(self) -> dict[str, Any]:
        return {
            "workloads": [w.id for w in self.workloads],
            "levels": self.levels,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "workers": self.workers,
            "batching_replicas": self.batching_replicas,
            "generator": self.generator,
            "handwritten_handler": self.handler,
            "cold_start_rounds": self.cold_start_rounds,
            "quick": self.quick,
            "platform_batching": dict(BATCHING),
            "request": f'{{"instances": [[{N_FEATURES} floats]]}} as application/json',
            "data": f"make_classification(n_samples={N_SAMPLES}, n_features={N_FEATURES}, "
            "random_state=0), float64",
        }


# -- arguments ---------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of client counts: {text!r}") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("client counts must be whole numbers of at least 1")
    return levels


def _workloads(text: str) -> list[Workload]:
    wanted = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [w for w in wanted if w not in WORKLOADS]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown workload {', '.join(unknown) or text!r}; known: {', '.join(WORKLOADS)}"
        )
    return [WORKLOADS[w] for w in WORKLOADS if w in wanted]


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: levels 1,16,64, warm-up 0.3 s, 1 s per level; results go to "
        "bench/results/tmp/ (git-ignored) unless --out says otherwise",
    )
    parser.add_argument(
        "--workloads",
        type=_workloads,
        metavar="W1,W2",
        help="which workloads, comma-separated (default: W1,W2)",
    )
    parser.add_argument(
        "--levels",
        type=_levels,
        metavar="1,16,64",
        help="concurrent keep-alive clients per run (default: 1,16,64)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help="measured seconds per level (default: 10)",
    )
    parser.add_argument(
        "--warmup",
        type=_positive_float,
        metavar="S",
        help="warm-up seconds before each level (default: 3)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=os.cpu_count() or 1,
        help="uvicorn workers of the baselines = replicas of each platform endpoint "
        "(default: the number of CPUs, %(default)s here)",
    )
    parser.add_argument(
        "--batching-replicas",
        type=int,
        metavar="N",
        default=1,
        help="replicas of the platform's batching endpoint (default: 1: one replica's batches "
        "fill; more replicas split them, see bench/NOTES.md). The hand-written server keeps "
        "--workers",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk (C, preferred; whole seconds only), python (asyncio + "
        "aiohttp in a separate process), auto: wrk when installed (default)",
    )
    parser.add_argument(
        "--handwritten-handler",
        choices=("async", "sync"),
        default=HANDLER,
        help="the hand-written server's handler: async def (default, the faster; see "
        "bench/baselines/handwritten.py) or def",
    )
    parser.add_argument(
        "--cold-start-rounds",
        type=int,
        metavar="N",
        help="serverless cold-start rounds on W1 (default: 5, --quick: 2); each waits until a "
        "serverless endpoint (idle_timeout_s 1) has scaled to zero, ~4 s, then times one request",
    )
    parser.add_argument(
        "--no-cold-start",
        action="store_true",
        help="skip the serverless cold-start measurement (it also does not run without W1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write <UTC time>-<host>.json/.md into DIR instead (and no latest.json/.md)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.batching_replicas < 1:
        parser.error("--batching-replicas must be at least 1")
    if args.cold_start_rounds is not None and args.cold_start_rounds < 1:
        parser.error("--cold-start-rounds must be at least 1 (--no-cold-start skips them)")
    defaults = QUICK if args.quick else DEFAULTS
    workloads = args.workloads or list(WORKLOADS.values())
    if args.no_cold_start or WORKLOADS["W1"] not in workloads:
        cold_start_rounds = 0
    else:
        cold_start_rounds = args.cold_start_rounds or defaults.cold_start_rounds
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if wrk_path() else "python"
    elif generator == "wrk" and not wrk_path():
        parser.error("--generator wrk: wrk is not installed (make wrk-bin installs it)")
    duration = float(args.duration or defaults.duration_s)
    if generator == "wrk" and duration != math.ceil(duration):
        duration = float(math.ceil(duration))
        print(f"note: wrk runs for whole seconds; measuring {duration:g} s per level")
    if args.out is not None:
        out_dir, latest = args.out, False
    elif args.quick:
        out_dir, latest = RESULTS_DIR / "tmp", True
    else:
        out_dir, latest = RESULTS_DIR, True
    return Settings(
        workloads=workloads,
        levels=args.levels or list(defaults.levels),
        warmup_s=float(args.warmup or defaults.warmup_s),
        duration_s=duration,
        workers=args.workers,
        batching_replicas=args.batching_replicas,
        generator=generator,
        handler=args.handwritten_handler,
        cold_start_rounds=cold_start_rounds,
        quick=args.quick,
        out_dir=out_dir,
        latest=latest,
    )


# -- the run ---------------------------------------------------------------------------------


_STARTED = time.monotonic()


def say(line: str) -> None:
    """A progress line, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {line}", flush=True)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Models and request bodies, written to the work folder."""

    models: dict[Workload, Path]
    body_file: Path
    rows_file: Path
    expected: dict[str, list[list[float]]]  # each workload's answer to the request


def prepare(settings: Settings, work: Path) -> Prepared:
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=N_SAMPLES, n_features=N_FEATURES, random_state=0)
    x = np.asarray(x, dtype=np.float64)
    estimators = {
        "W1": lambda: LogisticRegression(max_iter=1000),
        "W2": lambda: RandomForestClassifier(
            n_estimators=100, max_depth=8, random_state=0, n_jobs=1
        ),
    }
    row = x[:1]
    body_file = work / "request.json"
    body_file.write_bytes(json.dumps({"instances": row.tolist()}).encode())
    rows_file = work / "rows.npy"
    np.save(rows_file, x[:BATCH_ROWS])
    models: dict[Workload, Path] = {}
    expected: dict[str, list[list[float]]] = {}
    for workload in settings.workloads:
        model = estimators[workload.id]().fit(x, y)
        path = work / f"{workload.slug}.joblib"
        joblib.dump(model, path)
        models[workload] = path
        expected[workload.id] = model.predict_proba(row).tolist()
    return Prepared(models, body_file, rows_file, expected)


def measure_raw(settings: Settings, prepared: Prepared, work: Path) -> dict[str, dict[str, Any]]:
    """The raw in-process baseline, in a child process with nothing else running."""
    spec = ",".join(f"{w.id}={path}" for w, path in prepared.models.items())
    argv = [
        sys.executable,
        "-m",
        "harness.raw",
        "--models",
        spec,
        "--rows",
        str(prepared.rows_file),
        "--duration",
        str(settings.duration_s),
        "--warmup",
        str(settings.warmup_s),
    ]
    out_file = work / "raw.json"
    with open(out_file, "wb") as out:
        child = Child(
            "raw in-process baseline",
            argv,
            log_path=work / "raw.log",
            env=child_env(),
            stdout=out.fileno(),
        )
        limit = 60 + len(prepared.models) * 3 * (settings.duration_s + settings.warmup_s)
        try:
            child.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"the raw in-process baseline took over {limit:g} s") from exc
        finally:
            child.stop()
    if child.proc.returncode != 0:
        raise HarnessError(f"the raw in-process baseline failed:\n{child.log_tail()}")
    result: dict[str, dict[str, Any]] = json.loads(out_file.read_text())
    return result


def preflight(url: str, body: bytes, expected: list[list[float]] | None, what: str) -> None:
    """One request before the load: the target must answer 200 with the model's predictions
    (wrk counts only statuses >= 400 as errors, and a wrong answer fast is no answer)."""
    try:
        resp = httpx.post(
            url,
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=30.0,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        raise HarnessError(f"{what} did not answer {url}: {exc}") from exc
    if resp.status_code != 200:
        raise HarnessError(f"{what} answered {resp.status_code}: {resp.text[:500]}")
    try:
        predictions = resp.json()["predictions"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"{what} answered no predictions: {resp.text[:500]}") from exc
    if expected is not None and not np.allclose(predictions, expected, rtol=0, atol=1e-9):
        raise HarnessError(f"{what} answered {predictions}, the model says {expected}")


class Bench:
    def __init__(self, settings: Settings, work: Path) -> None:
        self.settings = settings
        self.work = work
        self._stack = contextlib.ExitStack()
        self.generator: Generator | None = None
        self.warmer: PythonGenerator | None = None
        self.measurements: dict[str, dict[str, dict[int, Measurement]]] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.failed_runs: list[str] = []

    def close(self) -> None:
        self._stack.close()

    def run(self) -> dict[str, Any]:
        s = self.settings
        say(f"preparing data and models in {self.work}")
        prepared = prepare(s, self.work)
        body = prepared.body_file.read_bytes()

        say("measuring the raw in-process baseline")
        raw = measure_raw(s, prepared, self.work)
        for w in s.workloads:
            r = raw[w.id]
            say(
                f"[{w.id}] raw in-process: {r['calls_per_s']:,.0f} calls/s on 1 row "
                f"(p50 {r['p50_ms']:.3f} ms), {r['batch_rows_per_s']:,.0f} rows/s at batch "
                f"{r['batch_rows']}"
            )

        logs = self.work / "logs"
        # Warm-ups always use the Python generator (any duration; it needs no CPU while wrk runs).
        self.warmer = PythonGenerator(logs)
        self._stack.callback(self.warmer.close)
        if s.generator == "wrk":
            self.generator = WrkGenerator(logs)
        else:
            self.generator = self.warmer
        generator_description = self.generator.description
        say(f"load generator: {generator_description}")

        # Every server starts at once (their start-ups overlap), then each is waited for.
        say(
            f"starting the servers ({s.workers} workers / replicas each, "
            f"{s.batching_replicas} for the batching endpoint)"
        )
        servers: list[Server] = []
        self._stack.callback(stop_all, servers)
        platform = Platform(self.work)
        servers.append(platform)
        ceiling = UvicornServer("HTTP ceiling", "ceiling:app", s.workers, self.work, {})
        servers.append(ceiling)
        hands: dict[str, UvicornServer] = {}
        for workload in s.workloads:
            hands[workload.id] = UvicornServer(
                f"{workload.id} hand-written server",
                "handwritten:app",
                s.workers,
                self.work / workload.id,
                {"BENCH_MODEL_PATH": str(prepared.models[workload]), "BENCH_HANDLER": s.handler},
            )
            servers.append(hands[workload.id])
        platform.wait()
        endpoints = platform.deploy(prepared.models, s.workers, s.batching_replicas)
        ceiling.wait()
        for hand in hands.values():
            hand.wait()
        say("all servers up")

        for workload in s.workloads:
            self.measurements[workload.id] = {}
            self.labels[workload.id] = {
                CEILING: "HTTP ceiling (bare ASGI)",
                HANDWRITTEN: f"hand-written (FastAPI, {s.handler} def)",
                PLATFORM: "platform (batching)" if workload.batching else "platform",
                PLATFORM_NO_BATCHING: "platform (no batching)",
            }
            hand = hands[workload.id]
            expected = prepared.expected[workload.id]
            plans: dict[str, tuple[str, Processes, list[list[float]] | None]] = {
                CEILING: (ceiling.invocations_url, ceiling.processes, None),
                HANDWRITTEN: (hand.invocations_url, hand.processes, expected),
            }
            for target in (PLATFORM, PLATFORM_NO_BATCHING):
                name = endpoints.get((workload.id, target))
                if name is not None:
                    plans[target] = (
                        platform.invocations_url(name),
                        platform.processes_for(name),
                        expected,
                    )
            for target in workload.targets:
                url, processes, answer = plans[target]
                preflight(url, body, answer, self.labels[workload.id][target])
                for level in s.levels:
                    self._measure(workload, target, url, processes, prepared, level)

        cold_start = None
        if s.cold_start_rounds:
            w1 = WORKLOADS["W1"]
            cold_start = self._cold_start(
                platform, w1.slug, body, prepared.expected[w1.id], s.cold_start_rounds
            )

        document = report.build(
            machine=machine.describe(generator_description),
            settings=s.as_json(),
            workloads=s.workloads,
            labels=self.labels,
            measurements=self.measurements,
            raw=raw,
            cold_start=cold_start,
        )
        return document

    def _cold_start(
        self,
        platform: Platform,
        model: str,
        body: bytes,
        expected: list[list[float]],
        rounds: int,
    ) -> dict[str, Any]:
        """The serverless cold-start rounds (harness/coldstart.py), after every throughput run:
        applied only now, so that its standby interpreter and replicas are in no other number."""
        say(
            f"[W1] serverless cold start: endpoint {COLD_START_ENDPOINT} "
            f"(idle_timeout_s {coldstart.IDLE_TIMEOUT_S}), {rounds} rounds"
        )
        platform.deploy_serverless(COLD_START_ENDPOINT, model, coldstart.IDLE_TIMEOUT_S)
        assert platform.client is not None
        result = coldstart.measure(
            platform.client,
            COLD_START_ENDPOINT,
            platform.invocations_url(COLD_START_ENDPOINT),
            body,
            expected,
            rounds,
            say,
        )
        for entry in result["rounds"]:
            for error in entry["errors"]:
                self.failed_runs.append(
                    f"W1 serverless cold start, round {entry['round']}: {error}"
                )
        for problem in result["problems"]:
            say(f"[W1] serverless cold start: {problem}")
        say(
            f"[W1] serverless cold start: cold median {result['cold_ms_median']} ms, max "
            f"{result['cold_ms_max']} ms; warm median {result['warm_ms_median']} ms"
        )
        return result

    def _measure(
        self,
        workload: Workload,
        target: str,
        url: str,
        processes: Processes,
        prepared: Prepared,
        level: int,
    ) -> None:
        s = self.settings
        assert self.generator is not None and self.warmer is not None
        with PeakRss(processes) as rss:
            warm = self.warmer.run(url, prepared.body_file, level, s.warmup_s)
            load = self.generator.run(url, prepared.body_file, level, s.duration_s)
        measurement = Measurement(load, rss.peak_mb)
        self.measurements[workload.id].setdefault(target, {})[level] = measurement
        label = self.labels[workload.id][target]
        say(f"[{workload.id}] {label:<32} {level:>3} clients  {_summary(load, rss.peak_mb)}")
        if warm.error_count:
            self.failed_runs.append(
                f"{workload.id} {label}, {level} clients (warm-up): {warm.errors}"
            )
        if load.error_count:
            self.failed_runs.append(f"{workload.id} {label}, {level} clients: {load.errors}")


def _summary(load: LoadResult, peak_rss_mb: float) -> str:
    return (
        f"{load.requests_per_s:>9,.0f} req/s  p50 {load.p50_ms:7.2f} ms  "
        f"p99 {load.p99_ms:7.2f} ms  errors {load.error_count}  peak RSS {peak_rss_mb:,.0f} MB"
    )


def write_results(settings: Settings, document: dict[str, Any], text: str) -> list[Path]:
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = f"{stamp}-{socket.gethostname()}"
    written = []
    names = [stem, "latest"] if settings.latest else [stem]
    for name in names:
        json_path = settings.out_dir / f"{name}.json"
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        md_path = settings.out_dir / f"{name}.md"
        md_path.write_text(text)
        written += [json_path, md_path]
    return written


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    bench = Bench(settings, work)
    keep_work = False
    try:
        document = bench.run()
    except HarnessError as exc:
        keep_work = True
        print(f"error: {exc}\n(logs kept in {work})", file=sys.stderr)
        return EXIT_HARNESS
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    except Exception:  # a defect, or a failure nobody foresaw: same exit as a failed server
        keep_work = True
        traceback.print_exc()
        print(f"error: the benchmark failed (logs kept in {work})", file=sys.stderr)
        return EXIT_HARNESS
    finally:
        # A second Ctrl-C must not cut the clean-up short (each stop has its own time limit).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            bench.close()
        finally:
            signal.signal(signal.SIGINT, previous)
            if not keep_work:
                shutil.rmtree(work, ignore_errors=True)
    document["settings"]["wall_s"] = round(time.monotonic() - started, 1)
    text = report.markdown(document)
    paths = write_results(settings, document, text)
    say("")
    say(text)
    say(
        "results: "
        + ", ".join(
            str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p) for p in paths
        )
    )
    if bench.failed_runs:
        print("error: requests failed:\n  " + "\n  ".join(bench.failed_runs), file=sys.stderr)
        return EXIT_REQUEST_ERRORS
    return 0


if __name__ == "__main__":
    sys.exit(main())
