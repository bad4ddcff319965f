"""The benchmark harness (bench/run.py) works end to end.

Correctness only: these tests time nothing and assert no performance number or target, only that
every run happened without a failed request and that the report is complete. They run the quick
mode on few levels and two workers, to stay short. The serverless cold-start rounds run in the
first test (quick mode: 2) and are skipped in the second (--no-cold-start).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN = REPO_ROOT / "bench" / "run.py"
TARGETS = {
    "W1": ["ceiling", "handwritten", "platform"],
    "W2": ["ceiling", "handwritten", "platform", "platform_no_batching"],
}
RAW_KEYS = ("calls_per_s", "p50_ms", "batch_rows_per_s")
LEVEL_RATIOS = (
    "platform_vs_handwritten_rps",
    "platform_vs_handwritten_p99",
    "platform_vs_ceiling_rps",
)
W2_RATIOS = (
    "platform_vs_raw_batch_rows",
    "platform_no_batching_vs_handwritten_rps",
    "batching_gain_rps",
)


def run_bench(out: Path, *args: str, timeout_s: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out), "--workers", "2", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def load_results(out: Path) -> tuple[dict[str, Any], str]:
    (json_file,) = out.glob("*.json")
    (md_file,) = out.glob("*.md")
    assert json_file.stem == md_file.stem
    document: dict[str, Any] = json.loads(json_file.read_text())
    return document, md_file.read_text()


def check_cold_start(document: dict[str, Any], markdown: str, rounds: int) -> None:
    """The serverless cold-start section: every round ran, answered, and was one cold start by
    the gateway's own count; the numbers are sane (no speed is asserted)."""
    cold = document["serverless_cold_start"]
    assert document["settings"]["cold_start_rounds"] == rounds
    assert cold["workload"] == "W1" and cold["idle_timeout_s"] == 1
    assert [r["round"] for r in cold["rounds"]] == list(range(1, rounds + 1)), cold
    assert cold["errors"] == 0 and cold["problems"] == [], cold
    for r in cold["rounds"]:
        assert r["ok"] and r["errors"] == [], r
        assert r["cold_ms"] > 0 and r["zero_after_s"] > 0, r
        assert len(r["warm_ms"]) == cold["warm_requests_per_round"] and min(r["warm_ms"]) > 0, r
        assert r["gateway_cold_starts"] == 1 and r["gateway_held_ms"] > 0, r
        # it really started a replica: slower than a request to the replica it left running
        assert r["cold_ms"] > r["warm_median_ms"], r
    colds = [r["cold_ms"] for r in cold["rounds"]]
    assert cold["cold_ms_max"] == max(colds)
    assert min(colds) <= cold["cold_ms_median"] <= cold["cold_ms_max"]
    assert cold["warm_ms_median"] > 0 and cold["cold_vs_warm_median"] > 1
    gateway = cold["gateway_cold_starts"]
    assert gateway["one_per_round"] and gateway["after"] - gateway["before"] == rounds, gateway

    (target,) = [t for t in document["targets"] if t["id"] == "serverless-cold-start"]
    assert target["measured"] == cold["cold_ms_max"]
    assert target["status"] in ("PASS", "FAIL")
    assert "## Serverless cold start (W1)" in markdown
    assert "| round | zero after s | cold ms | warm median ms |" in markdown
    assert f"The gateway counted one cold start per round ({rounds} for {rounds} rounds" in markdown


def check_results(
    document: dict[str, Any],
    markdown: str,
    generator: str,
    workloads: list[str],
    levels: list[int],
    cold_start_rounds: int,
) -> None:
    assert document["machine"]["generator"].startswith(generator)
    assert document["settings"]["generator"] == generator
    for key in ("cpu_model", "logical_cores", "ram_gb", "os", "python", "git_commit", "date"):
        assert document["machine"][key], key
    for package in ("numpy", "scikit-learn", "uvicorn", "modelyard"):
        assert document["machine"]["versions"][package], package
    assert document["errors_total"] == 0

    assert sorted(document["results"]) == sorted(workloads)
    for workload in workloads:
        raw = document["raw_in_process"][workload]
        assert all(raw[key] > 0 for key in RAW_KEYS), raw
        targets = document["results"][workload]["targets"]
        assert list(targets) == TARGETS[workload]
        for target, result in targets.items():
            assert sorted(int(level) for level in result["levels"]) == levels, target
            for level, m in result["levels"].items():
                where = f"{workload} {target} {level}"
                assert m["requests"] > 0, where
                assert m["errors"] == 0, (where, m["errors_by_kind"])
                assert m["requests_per_s"] > 0 and m["p50_ms"] > 0 and m["p99_ms"] > 0, where
                assert m["peak_rss_mb"] > 0, where
                assert m["vs_handwritten_rps"] > 0 and m["vs_ceiling_rps"] > 0, where
        ratios = document["ratios"][workload]
        assert sorted(int(level) for level in ratios) == levels
        for level, values in ratios.items():
            expected = LEVEL_RATIOS + (W2_RATIOS if workload == "W2" else ())
            assert all(values[key] > 0 for key in expected), (workload, level, values)
        assert f'## {workload} "' in markdown
    assert document["ratios"]["w1_added_p50_ms"]["added_ms"] is not None

    measured = {t["id"]: t for t in document["targets"]}
    assert len(measured) == 7
    for target in measured.values():
        if target["id"] == "serverless-cold-start":
            in_run = cold_start_rounds > 0
        else:
            in_run = target["id"].partition("-")[0].upper() in workloads
        assert target["status"] in (("PASS", "FAIL") if in_run else ("NOT MEASURED",)), target
        assert target["description"] in markdown

    assert "| target | clients | req/s | p50 ms | p99 ms | errors | peak RSS MB |" in markdown
    assert "## Targets" in markdown
    assert document["machine"]["generator"] in markdown

    if cold_start_rounds:
        check_cold_start(document, markdown, cold_start_rounds)
    else:
        assert document["serverless_cold_start"] is None
        assert document["settings"]["cold_start_rounds"] == 0
        assert "## Serverless cold start" not in markdown


@pytest.mark.timeout(180)
def test_quick_run_with_the_python_generator(tmp_path: Path) -> None:
    done = run_bench(tmp_path, "--generator", "python", "--levels", "1,64")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document, markdown = load_results(tmp_path)
    check_results(document, markdown, "python", ["W1", "W2"], [1, 64], cold_start_rounds=2)
    assert "## Targets" in done.stdout  # the report is printed at the end


@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make wrk-bin)")
def test_quick_run_with_wrk(tmp_path: Path) -> None:
    done = run_bench(
        tmp_path, "--generator", "wrk", "--workloads", "W1", "--levels", "1,64", "--no-cold-start"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document, markdown = load_results(tmp_path)
    check_results(document, markdown, "wrk", ["W1"], [1, 64], cold_start_rounds=0)


@pytest.mark.parametrize(
    "args",
    [
        ["--levels", "0"],
        ["--workloads", "W9"],
        ["--duration", "-1"],
        ["--workers", "0"],
        ["--cold-start-rounds", "0"],
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str]) -> None:
    done = run_bench(tmp_path, *args, timeout_s=60)
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr
    assert not list(tmp_path.iterdir())


def test_help_names_the_options(tmp_path: Path) -> None:
    done = run_bench(tmp_path, "--help", timeout_s=60)
    assert done.returncode == 0, done.stderr
    for option in ("--no-cold-start", "--cold-start-rounds", "--quick", "--out"):
        assert option in done.stdout, option


TRANSFORM = REPO_ROOT / "bench" / "transform.py"


@pytest.mark.timeout(180)
def test_transform_benchmark_runs_both_jobs_and_reports_the_ratio(tmp_path: Path) -> None:
    argv = [sys.executable, str(TRANSFORM), "--size-mb", "8", "--raw-duration", "0.5"]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (json_file,) = tmp_path.glob("transform-*.json")
    document = json.loads(json_file.read_text())
    for job in document["jobs"].values():  # every record transformed, and written once
        assert job["status"] == "Completed"
        assert job["records"] == job["input_rows"] == job["output_lines"] > 0
        assert job["peak_rss_mb"] > 0
    assert document["raw_batch64_rows_per_s"] > 0
    assert document["ratio"] == pytest.approx(
        document["rows_per_s_per_worker"] / document["raw_batch64_rows_per_s"]
    )
    assert "raw at batch 64" in (tmp_path / (json_file.stem + ".md")).read_text()


def test_transform_benchmark_refuses_bad_arguments(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(TRANSFORM), "--size-mb", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--size-mb" in done.stderr
    assert not list(tmp_path.iterdir())
