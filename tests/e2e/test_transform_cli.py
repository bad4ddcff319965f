"""Batch transform jobs from the outside: `modelyard transform run|list|describe|logs|stop` as
a user runs them, and the SDK's ``Client.wait_transform``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from modelyard.cli.output import TransformProgress
from modelyard.errors import ConflictError
from tests.support import ServerProcess, make_sklearn_model, write_yaml

ROWS = 4000
MODEL = {"kind": "Model", "name": "m", "spec": {"artifact": "model.joblib", "runtime": "sklearn"}}


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def job(name: str, input_uri: str, output_uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "TransformJob",
        "name": name,
        "spec": {"model": "m", "input": {"uri": input_uri}, "output": {"uri": output_uri}, **spec},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("e2e-transform")
    model = make_sklearn_model(root / "model.joblib")
    rows = np.random.default_rng(0).normal(size=(ROWS, 4))
    (root / "data").mkdir()
    np.savetxt(root / "data" / "rows.csv", rows, delimiter=",", fmt="%.5f")
    server = ServerProcess(root / "state")
    try:
        yield {"server": server, "root": root, "model": model, "rows": rows}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def finished(server: dict[str, Any]) -> dict[str, Any]:
    """`transform run --wait` of a job over the CSV, its output captured (not a terminal)."""
    root = server["root"]
    spec = write_yaml(root / "job.yaml", [MODEL, job("score-jan", "data/", "out/")])
    ran = cli(server["server"].state_dir, "transform", "run", "-f", str(spec), "--wait")
    return {**server, "ran": ran}


def test_run_wait_shows_progress_and_summary(finished: dict[str, Any]) -> None:
    ran, root = finished["ran"], finished["root"]
    assert ran.returncode == 0, ran.stderr
    assert "model/m created" in ran.stdout and "transformjob/score-jan created" in ran.stdout
    progress = re.findall(rf"^records (\d+)/{ROWS} \((\d+)%\)", ran.stderr, re.MULTILINE)
    assert progress, ran.stderr
    assert progress[-1] == (str(ROWS), "100")
    assert re.search(rf"^records {ROWS}/{ROWS} \(100%\), [\d,]+ rec/s", ran.stderr, re.M)
    assert "transformjob/score-jan Completed" in ran.stdout
    assert f"Records:    {ROWS} (0 failed)" in ran.stdout
    assert re.search(r"Throughput: [\d,]+ rec/s", ran.stdout)
    assert f"Output:     file://{root}/out" in ran.stdout
    assert "\x1b[" not in ran.stderr + ran.stdout  # no bar drawn into a pipe

    written = (root / "out" / "rows.csv.out").read_text().splitlines()
    assert len(written) == ROWS
    expected = finished["model"].predict(finished["rows"])
    assert [int(float(line)) for line in written] == expected.tolist()


def test_list_describe_and_logs_show_the_finished_job(finished: dict[str, Any]) -> None:
    state = finished["server"].state_dir
    listed = cli(state, "transform", "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = [ln for ln in listed.stdout.splitlines() if ln.startswith("score-jan ")]
    assert line.split()[1:5] == ["Completed", "m", f"{ROWS}/{ROWS}", "(100%)"]

    described = cli(state, "transform", "describe", "score-jan")
    assert described.returncode == 0, described.stderr
    assert "Status:     Completed" in described.stdout
    assert re.search(
        rf"Summary:    {ROWS} records, 0 failures in [\d.]+s, [\d,]+ rec/s", described.stdout
    )
    as_json = json.loads(cli(state, "transform", "describe", "score-jan", "-o", "json").stdout)
    assert as_json["summary"]["records"] == ROWS and as_json["status"] == "Completed"

    logs = cli(state, "transform", "logs", "score-jan")
    assert logs.returncode == 0, logs.stderr
    assert re.search(rf"^\[job\] .* Completed: {ROWS} record\(s\) transformed$", logs.stdout, re.M)
    assert re.search(r"^\[job\] .* 1 replica\(s\) ready$", logs.stdout, re.M)


def test_stop_of_a_finished_job_is_a_conflict(finished: dict[str, Any]) -> None:
    stopped = cli(finished["server"].state_dir, "transform", "stop", "score-jan")
    assert stopped.returncode == 1
    assert "error: transform job 'score-jan' already ended (Completed)" in stopped.stderr


def test_a_bad_input_location_fails_before_any_work(server: dict[str, Any]) -> None:
    root, state = server["root"], server["server"].state_dir
    spec = write_yaml(root / "bad.yaml", [MODEL, job("bad-input", "no-such-folder/", "out-bad/")])
    refused = cli(state, "transform", "run", "-f", str(spec), "--wait")
    assert refused.returncode == 1
    assert "error: documents[1].spec.input.uri: cannot read the input" in refused.stderr
    assert "no-such-folder" in refused.stderr
    assert not (root / "out-bad").exists()
    missing = cli(state, "transform", "describe", "bad-input")
    assert missing.returncode == 1 and "no transform job named 'bad-input'" in missing.stderr


def test_a_file_without_a_transform_job_is_refused(server: dict[str, Any]) -> None:
    spec = write_yaml(server["root"] / "model-only.yaml", [MODEL])
    refused = cli(server["server"].state_dir, "transform", "run", "-f", str(spec))
    assert refused.returncode == 1
    assert "holds no TransformJob document" in refused.stderr


def test_a_failed_job_exits_non_zero(server: dict[str, Any]) -> None:
    root = server["root"]
    (root / "mixed").mkdir()
    (root / "mixed" / "a.csv").write_text("0.1,0.2,0.3,0.4\nnot,a,number,here\n")
    spec = write_yaml(root / "fails.yaml", [MODEL, job("fails", "mixed/", "out-fails/")])
    ran = cli(server["server"].state_dir, "transform", "run", "-f", str(spec), "--wait")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "transformjob/fails Failed" in ran.stdout
    assert "error: transformjob/fails ended Failed" in ran.stderr
    assert f"Failures:   file://{root}/out-fails/" in ran.stdout


def test_sdk_wait_transform_reports_progress(server: dict[str, Any]) -> None:
    client, root = server["server"].client, server["root"]
    artifact = f"file://{(root / 'model.joblib').resolve()}"
    client.apply(
        [{"kind": "Model", "name": "m-sdk", "spec": {**MODEL["spec"], "artifact": artifact}}]
    )
    spec = {**job("sdk-job", f"{root}/data", f"{root}/out-sdk")["spec"], "model": "m-sdk"}
    assert client.run_transform("sdk-job", spec)["action"] == "created"
    assert client.run_transform("sdk-job", spec)["action"] == "unchanged"
    seen: list[dict[str, Any]] = []
    final = client.wait_transform("sdk-job", timeout_s=60, on_progress=seen.append)
    assert final["status"] == "Completed"
    assert seen[0]["status"] == "InProgress" and seen[-1] == final
    assert all(view["name"] == "sdk-job" for view in seen)
    assert final["progress"]["records_done"] == ROWS
    assert client.transform_logs("sdk-job", tail=1)[-1].endswith("record(s) transformed")
    assert "sdk-job" in [item["name"] for item in client.list_transform_jobs()]
    with pytest.raises(ConflictError, match="already exists"):
        client.run_transform("sdk-job", {**spec, "max_payload_mb": 2})


def test_plain_progress_lines_come_at_most_once_a_second() -> None:
    """Off a terminal, progress is a line a second (and the last one), not a line a poll."""
    now = [0.0]
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=200)

    def view(done: int, status: str = "InProgress") -> dict[str, Any]:
        progress = {"records_done": done, "records_failed": 0, "total_records": 1000}
        return {"status": status, "progress": progress, "summary": {"records_per_s": 100.0}}

    with TransformProgress(console, every_s=1.0, clock=lambda: now[0]) as show:
        for step in range(8):  # a poll each 0.25 s
            now[0] = step * 0.25
            show(view(step * 50))
        now[0] = 2.1
        show(view(1000, "Completed"))
    lines = sink.getvalue().splitlines()
    assert lines == [
        "records 0/1000 (0%), 100 rec/s, ETA 10s",
        "records 200/1000 (20%), 200 rec/s, ETA 4s",
        "records 1000/1000 (100%), 100 rec/s [Completed]",
    ]
