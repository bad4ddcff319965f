"""Benchmark batch transform: W2's model over a large CSV of W2-shaped rows, against the raw
in-process rows/s at batch 64 measured in the same run (see bench/README.md, "Batch transform").

It writes the CSV (the 2000 rows of W2's data, repeated to the size asked), starts ``modelyard
server`` on free ports, runs a TransformJob over a small input (1/8 of the size) and then over the
whole one, and samples the summed RSS of all the server's processes while each runs: flat memory
means the large run's peak is about the small run's. Results go to
bench/results/transform-<UTC time>-<host>.json/.md and transform-latest.json/.md (--out DIR
instead).

Exit status: 0 when both jobs completed with every record (a missed target is reported, not a
failure); 1 when a job failed or lost records; 2 for bad arguments; 3 when the server failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import N_FEATURES, N_SAMPLES, RESULTS_DIR, child_env
from harness.procs import Child, HarnessError, PeakRss
from harness.servers import Platform

TARGET = 0.85
JOB_TIMEOUT_S = 1800.0
POLL_S = 0.25
FINAL = ("Completed", "CompletedWithFailures", "Failed", "Stopped")


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/transform.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="the large CSV (default 1024)")
    parser.add_argument(
        "--instances", type=int, default=1, help="instance_count of the job (default 1)"
    )
    parser.add_argument(
        "--payload-mb", type=int, default=6, help="max_payload_mb of the job (default 6)"
    )
    parser.add_argument("--raw-duration", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="write results into this folder")
    args = parser.parse_args(argv)
    if args.size_mb < 8 or args.instances < 1 or not 1 <= args.payload_mb <= 100:
        parser.error("--size-mb must be at least 8, --instances at least 1, --payload-mb 1..100")
    return args


def prepare(work: Path) -> tuple[Path, np.ndarray[Any, Any]]:
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(n_samples=N_SAMPLES, n_features=N_FEATURES, random_state=0)
    x = np.asarray(x, dtype=np.float64)
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1)
    path = work / "w2-batchable.joblib"
    joblib.dump(model.fit(x, y), path)
    np.save(work / "rows.npy", x[:64])
    return path, x


def write_csv(path: Path, x: np.ndarray[Any, Any], size_mb: int) -> int:
    """W2's rows, repeated until the file holds ``size_mb`` MB; returns the rows written."""
    text = io.StringIO()
    np.savetxt(text, x, delimiter=",", fmt="%.17g")
    block = text.getvalue().encode()
    rows_per_block = len(x)
    target = size_mb * 1_000_000
    rows = 0
    with open(path, "wb") as fh:
        written = 0
        while written < target:
            fh.write(block)
            written += len(block)
            rows += rows_per_block
    return rows


def raw_rows_per_s(model: Path, work: Path, duration_s: float) -> float:
    argv = [
        sys.executable, "-m", "harness.raw", "--models", f"W2={model}",
        "--rows", str(work / "rows.npy"), "--duration", str(duration_s),
        "--warmup", "1",
    ]  # fmt: skip
    out_file = work / "raw.json"
    with open(out_file, "wb") as out:
        child = Child("raw baseline", argv, log_path=work / "raw.log", env=child_env(),
                      stdout=out.fileno())  # fmt: skip
        try:
            child.proc.wait(timeout=120 + 3 * duration_s)
        finally:
            child.stop()
    if child.proc.returncode != 0:
        raise HarnessError(f"the raw baseline failed:\n{child.log_tail()}")
    return float(json.loads(out_file.read_text())["W2"]["batch_rows_per_s"])


def run_job(
    platform: Platform, name: str, data: Path, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    assert platform.client is not None
    client = platform.client
    job = {
        "kind": "TransformJob",
        "name": name,
        "spec": {
            "model": "w2",
            "input": {"uri": str(data), "content_type": "text/csv", "split_type": "line"},
            "output": {"uri": str(out)},
            "instance_count": args.instances,
            "max_payload_mb": args.payload_mb,
            "resources": {"cpus": 1},
        },
    }
    with PeakRss(platform.child.tree) as rss:
        started = time.monotonic()
        client.apply([job])
        last = 0.0
        while True:
            view: dict[str, Any] = client._call("GET", f"/api/v1/transform-jobs/{name}")
            if view["status"] in FINAL:
                break
            if time.monotonic() - started > JOB_TIMEOUT_S:
                raise HarnessError(f"job {name} took over {JOB_TIMEOUT_S:g} s")
            if time.monotonic() - last > 10:
                p = view["progress"]
                say(f"  {name}: {p['records_done']:,} / {p['total_records'] or '?'} records")
                last = time.monotonic()
            platform.child.check_running()
            time.sleep(POLL_S)
        wall = time.monotonic() - started
    summary = view["summary"]
    with open(out / (data.name + ".out"), "rb") as fh:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return {
        "status": view["status"],
        "message": view["message"],
        "records": summary["records"],
        "failures": summary["failures"],
        "output_lines": lines,
        "job_duration_s": summary["duration_s"],
        "wall_s": round(wall, 3),
        "rows_per_s": summary["records"] / summary["duration_s"] if summary["duration_s"] else 0,
        "peak_rss_mb": round(rss.peak_mb, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-transform-") as tmp:
        work = Path(tmp)
        say(f"preparing W2's model and {args.size_mb} MB of CSV in {work}")
        model, x = prepare(work)
        (work / "small").mkdir()
        (work / "large").mkdir()
        small_rows = write_csv(work / "small" / "rows.csv", x, max(8, args.size_mb // 8))
        large_rows = write_csv(work / "large" / "rows.csv", x, args.size_mb)
        say("measuring the raw in-process baseline (W2, predict_proba at batch 64)")
        raw = raw_rows_per_s(model, work, args.raw_duration)
        say(f"raw in-process: {raw:,.0f} rows/s at batch 64")
        platform = Platform(work)
        try:
            platform.wait()
            assert platform.client is not None
            platform.client.apply(
                [{"kind": "Model", "name": "w2", "spec": {"artifact": f"file://{model}",
                  "runtime": "sklearn", "method": "predict_proba"}}]
            )  # fmt: skip
            results = {}
            for label, rows in (("small", small_rows), ("large", large_rows)):
                say(f"transform job over {label}/rows.csv ({rows:,} rows)")
                out = work / f"out-{label}"
                result = run_job(platform, f"bench-{label}", work / label / "rows.csv", out, args)
                result["input_rows"] = rows
                results[label] = result
                say(
                    f"  {result['status']}: {result['records']:,} records in "
                    f"{result['job_duration_s']:.1f} s = {result['rows_per_s']:,.0f} rows/s; "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB"
                )
        except HarnessError as exc:
            say(f"error: {exc}")
            return 3
        finally:
            platform.stop()
    per_worker = results["large"]["rows_per_s"] / args.instances
    document = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "size_mb": args.size_mb,
        "instances": args.instances,
        "max_payload_mb": args.payload_mb,
        "raw_batch64_rows_per_s": raw,
        "jobs": results,
        "rows_per_s_per_worker": per_worker,
        "ratio": per_worker / raw,
        "target": TARGET,
        "rss_ratio_large_to_small": results["large"]["peak_rss_mb"]
        / max(1.0, results["small"]["peak_rss_mb"]),
    }
    text = render(document)
    print(text)
    write(document, text, args.out)
    complete = all(
        r["status"] == "Completed" and r["records"] == r["input_rows"] == r["output_lines"]
        for r in results.values()
    )
    return 0 if complete else 1


def render(doc: dict[str, Any]) -> str:
    large, small = doc["jobs"]["large"], doc["jobs"]["small"]
    met = "met" if doc["ratio"] >= doc["target"] else "MISSED"
    return "\n".join(
        [
            f"# Batch transform benchmark ({doc['when']}, {doc['host']})",
            "",
            f"W2's model (predict_proba) over {doc['size_mb']} MB of CSV "
            f"({large['input_rows']:,} rows), {doc['instances']} replica(s), max_payload_mb "
            f"{doc['max_payload_mb']}.",
            "",
            "| | rows | seconds | rows/s | peak RSS (all server processes) |",
            "|---|---|---|---|---|",
            f"| raw in-process, batch 64 | | | {doc['raw_batch64_rows_per_s']:,.0f} | |",
            f"| job, {small['input_rows']:,} rows | {small['records']:,} | "
            f"{small['job_duration_s']:.1f} | {small['rows_per_s']:,.0f} | "
            f"{small['peak_rss_mb']:.0f} MB |",
            f"| job, {large['input_rows']:,} rows | {large['records']:,} | "
            f"{large['job_duration_s']:.1f} | {large['rows_per_s']:,.0f} | "
            f"{large['peak_rss_mb']:.0f} MB |",
            "",
            f"- rows/s per worker: {doc['rows_per_s_per_worker']:,.0f} = "
            f"**{doc['ratio']:.2f}×** raw at batch 64 (target ≥ {doc['target']:.2f}×: {met})",
            f"- peak RSS, large input / small input: **{doc['rss_ratio_large_to_small']:.2f}×** "
            f"for {doc['size_mb'] // max(1, doc['size_mb'] // 8)}× the data (flat memory: ≈ 1)",
            "- job duration: from the job's start to its end as the platform records it "
            "(counting the records, starting the replica, all batches, stopping it).",
            "",
        ]
    )


def write(doc: dict[str, Any], text: str, out_dir: Path | None) -> None:
    folder = out_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    names = [f"transform-{stamp}-{doc['host']}"] + ([] if out_dir else ["transform-latest"])
    for name in names:
        (folder / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (folder / f"{name}.md").write_text(text)
        say(f"wrote {folder / name}.json and .md")


if __name__ == "__main__":
    sys.exit(main())
