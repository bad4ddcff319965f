"""Batch transform jobs on a real server: outputs in input order, data processing, gzip and
folders, resuming after a crash exactly once, failed records, early errors and stopping."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest
from tests.support import ServerProcess, make_sklearn_model, wait_for

ACTIVE = ("InProgress", "Stopping")
#: a python predictor that answers the ``id`` of each JSON line, and blocks (until the file
#: ``open`` exists in its folder) every call after the first ``after.txt`` calls; each call
#: leaves a ``call-*`` file first, so a test knows how far the job got. While ``slow-load``
#: exists, a replica takes 1.5 s to load.
GATED_SOURCE = """
import os, time, uuid

class Predictor:
    def load(self, model_dir):
        self.folder = model_dir
        self.after = int(open(os.path.join(model_dir, "after.txt")).read())
        if os.path.exists(os.path.join(model_dir, "slow-load")):
            time.sleep(1.5)

    def predict(self, inputs):
        calls = len([f for f in os.listdir(self.folder) if f.startswith("call-")])
        open(os.path.join(self.folder, "call-" + uuid.uuid4().hex), "w").close()
        deadline = time.monotonic() + 60
        gate = os.path.join(self.folder, "open")
        while calls >= self.after and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        return [row["id"] for row in inputs]
"""


@dataclass
class Env:
    server: ServerProcess
    tmp: Path
    model: Any  # the fitted estimator behind the Models "labels" and "proba"
    headers: dict[str, str]

    def url(self, path: str) -> str:
        return f"{self.server.api_url}/api/v1{path}"

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.server.http.post(self.url(path), json=body, headers=self.headers)

    def get(self, path: str) -> httpx.Response:
        return self.server.http.get(self.url(path), headers=self.headers)

    def submit(self, name: str, spec: dict[str, Any]) -> None:
        resp = self.post("/transform-jobs", {"name": name, "spec": spec})
        assert resp.status_code == 201, resp.text

    def describe(self, name: str) -> dict[str, Any]:
        resp = self.get(f"/transform-jobs/{name}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def wait_done(self, name: str, timeout_s: float = 60) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            job = self.describe(name)
            return job if job["status"] not in ACTIVE else None

        return wait_for(ended, timeout_s, interval_s=0.1, what=f"transform job {name} to end")

    def run(self, name: str, spec: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        self.submit(name, spec)
        return self.wait_done(name, timeout_s)

    def gated(self, name: str, after: int) -> Path:
        """A Model ``name`` of the gated predictor (GATED_SOURCE) in its own folder."""
        folder = self.tmp / name
        folder.mkdir()
        (folder / "gate.py").write_text(GATED_SOURCE)
        (folder / "after.txt").write_text(str(after))
        spec = {"artifact": str(folder), "runtime": "python", "predictor": "gate:Predictor"}
        resp = self.post("/apply", {"documents": [{"kind": "Model", "name": name, "spec": spec}]})
        assert resp.status_code == 200, resp.text
        return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("transform")
    model = make_sklearn_model(tmp / "model.joblib")
    server = ServerProcess(tmp / "state")
    try:
        token = (server.state_dir / "token").read_text().strip()
        env = Env(server, tmp, model, {"Authorization": f"Bearer {token}"})
        artifact = str(tmp / "model.joblib")
        models = [
            {
                "kind": "Model",
                "name": "labels",
                "spec": {"artifact": artifact, "runtime": "sklearn"},
            },
            {
                "kind": "Model",
                "name": "proba",
                "spec": {"artifact": artifact, "runtime": "sklearn", "method": "predict_proba"},
            },
        ]
        assert env.post("/apply", {"documents": models}).status_code == 200
        yield env
    finally:
        server.stop()


# -- data ---------------------------------------------------------------------------------------
def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 4))


def csv_text(values: np.ndarray, digits: int = 6) -> str:
    """One CSV line per row; many ``digits`` make lines long, so 1 MB holds few of them."""
    return "".join(",".join(f"{v:.{digits}f}" for v in row) + "\n" for row in values)


def parsed(text: str) -> np.ndarray:
    """The rows of a CSV text as the server reads them."""
    return np.array([[float(v) for v in line.split(",")] for line in text.splitlines()])


def same_probas(written: Any, model: Any, values: np.ndarray) -> None:
    """``written`` holds the model's probabilities for ``values``, row for row, in order (to
    the last few bits: a batch's size may change how the floating-point sums go)."""
    expected = model.predict_proba(values)
    assert np.shape(written) == expected.shape
    np.testing.assert_allclose(written, expected, rtol=1e-12, atol=1e-15)


def csv_numbers(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in path.read_text().splitlines()]


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def job(model: str, source: Path, out: Path, **spec: Any) -> dict[str, Any]:
    inputs = spec.pop("input", {})
    return {
        "model": model,
        "input": {"uri": str(source), **inputs},
        "output": {"uri": str(out)},
        "max_payload_mb": 1,
        **spec,
    }


def jsonl_ids(count: int, pad: int = 0) -> str:
    return "".join(json.dumps({"id": n, "pad": "x" * pad}) + "\n" for n in range(count))


def replica_pid(address: str) -> int:
    """The process listening on a replica's address."""
    port = urlsplit(address).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    raise AssertionError(f"nothing listens on {address}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def calls(folder: Path) -> int:
    return len(list(folder.glob("call-*")))


# -- tests --------------------------------------------------------------------------------------
def test_csv_multi_record_output_is_one_line_per_record_in_input_order(env: Env) -> None:
    # ~1 KB lines: the 1 MB payload limit cuts 2500 records into 3 mini-batches, sent at once
    # to 2 replicas: they may answer in any order, the output is in the input's.
    text = csv_text(rows(2500), digits=250)
    source = write(env.tmp / "csv-in" / "data.csv", text)
    out = env.tmp / "csv-out"
    spec = job("proba", source.parent, out, instance_count=2, max_concurrent_transforms=2)

    done = env.run("csv", spec)

    assert done["status"] == "Completed", done["message"]
    same_probas(csv_numbers(out / "data.csv.out"), env.model, parsed(text))
    summary = done["summary"]
    assert summary["records"] == 2500 and summary["failures"] == 0
    assert summary["duration_s"] > 0 and summary["records_per_s"] > 0
    assert done["progress"]["total_records"] == 2500
    assert done["outputs"] == [
        {
            "input": str(source),
            "output": str(out / "data.csv.out"),
            "records": 2500,
            "done": True,
        }
    ]
    assert done["replicas"] == []
    assert not list(out.glob(".*"))  # no spool or probe left beside the output


def test_json_lines_with_input_filter_join_and_output_filter(env: Env) -> None:
    values = rows(300, seed=1)
    lines = "".join(
        json.dumps({"id": n, "features": list(row), "note": "x"}) + "\n"
        for n, row in enumerate(values)
    )
    source = write(env.tmp / "jl-in.jsonl", lines)
    out = env.tmp / "jl-out"
    processing = {
        "input_filter": "$.features",
        "join_source": "input",
        "output_filter": "$['id','SageMakerOutput']",
    }
    spec = job(
        "proba",
        source,
        out,
        input={"content_type": "application/jsonlines"},
        batch_strategy="single_record",
        max_concurrent_transforms=4,
        data_processing=processing,
    )

    done = env.run("jsonl", spec)

    assert done["status"] == "Completed", done["message"]
    written = [json.loads(line) for line in (out / "jl-in.jsonl.out").read_text().splitlines()]
    assert [sorted(w) for w in written] == [["SageMakerOutput", "id"]] * 300
    assert [w["id"] for w in written] == list(range(300))
    same_probas([w["SageMakerOutput"] for w in written], env.model, values)


def test_csv_filters_drop_the_id_column_and_write_id_and_prediction(env: Env) -> None:
    values = rows(400, seed=2)
    ids = [f"r{n:04d}" for n in range(400)]
    text = "".join(
        f"{i},{','.join(f'{v:.5f}' for v in row)}\n" for i, row in zip(ids, values, strict=True)
    )
    source = write(env.tmp / "ids.csv", text)
    out = env.tmp / "ids-out"
    processing = {"input_filter": "$[1:]", "join_source": "input", "output_filter": "$[0,-1]"}

    done = env.run("csv-ids", job("labels", source, out, data_processing=processing))

    assert done["status"] == "Completed", done["message"]
    features = np.array([[float(v) for v in line.split(",")[1:]] for line in text.splitlines()])
    labels = env.model.predict(features)
    expected = [f"{i},{label}" for i, label in zip(ids, labels, strict=True)]
    assert (out / "ids.csv.out").read_text().splitlines() == expected


def test_split_none_sends_each_file_as_one_record(env: Env) -> None:
    folder = env.tmp / "docs"
    docs = {f"doc{n}.json": rows(3 + n, seed=10 + n) for n in range(3)}
    for name, values in docs.items():
        write(folder / name, json.dumps({"instances": values.tolist()}))
    out = env.tmp / "docs-out"
    spec = job(
        "proba", folder, out, input={"content_type": "application/json", "split_type": "none"}
    )

    done = env.run("split-none", spec)

    assert done["status"] == "Completed", done["message"]
    assert done["summary"]["records"] == 3
    for name, values in docs.items():
        answer = json.loads((out / f"{name}.out").read_text())
        assert list(answer) == ["predictions"]
        same_probas(answer["predictions"], env.model, values)


def test_single_record_and_multi_record_write_the_same_output(env: Env) -> None:
    text = csv_text(rows(300, seed=3))
    source = write(env.tmp / "same.csv", text)
    outputs = {}
    for strategy in ("single_record", "multi_record"):
        out = env.tmp / f"same-{strategy}"
        name = f"same-{strategy.replace('_', '-')}"
        processing = {"join_source": "input"}  # each line: the record, then its label
        spec = job("labels", source, out, batch_strategy=strategy, data_processing=processing)
        done = env.run(name, spec)
        assert done["status"] == "Completed", done["message"]
        outputs[strategy] = (out / "same.csv.out").read_text()
    assert outputs["single_record"] == outputs["multi_record"]
    labels = env.model.predict(parsed(text))
    expected = [f"{line},{label}" for line, label in zip(text.splitlines(), labels, strict=True)]
    assert outputs["multi_record"].splitlines() == expected


def test_gzip_folder_gives_one_output_per_file_with_subfolders_kept(env: Env) -> None:
    folder = env.tmp / "gz"
    texts = {"a.csv.gz": csv_text(rows(50, seed=4)), "sub/b.csv.gz": csv_text(rows(7, seed=5))}
    for name, text in texts.items():
        write(folder / name, gzip.compress(text.encode()))
    write(folder / "empty.csv.gz", gzip.compress(b""))
    out = env.tmp / "gz-out"

    done = env.run("gzip", job("proba", folder, out, input={"compression": "gzip"}))

    assert done["status"] == "Completed", done["message"]
    for name, text in texts.items():
        same_probas(csv_numbers(out / f"{name}.out"), env.model, parsed(text))
    assert (out / "empty.csv.gz.out").read_bytes() == b""
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.csv.gz.out", "empty.csv.gz.out", "sub/b.csv.gz.out"]
    assert done["summary"]["records"] == 57


def test_parquet_row_groups_are_read_in_order(env: Env) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    values = rows(120, seed=6)
    table = pa.table({f"f{i}": values[:, i] for i in range(4)})
    source = env.tmp / "rows.parquet"
    pq.write_table(table, source, row_group_size=50)  # 3 row groups
    assert pq.ParquetFile(source).num_row_groups == 3
    out = env.tmp / "parquet-out"
    spec = job(
        "proba",
        source,
        out,
        input={"content_type": "application/x-parquet"},
        batch_strategy="single_record",
        max_concurrent_transforms=4,
    )

    done = env.run("parquet", spec)

    assert done["status"] == "Completed", done["message"]
    written = [json.loads(line) for line in (out / "rows.parquet.out").read_text().splitlines()]
    same_probas(written, env.model, values)


def test_job_resumes_after_the_control_plane_dies_and_writes_each_record_once(env: Env) -> None:
    folder = env.gated("gated-crash", after=5)
    source = write(env.tmp / "crash.jsonl", jsonl_ids(200))
    out = env.tmp / "crash-out"
    spec = job(
        "gated-crash",
        source,
        out,
        input={"content_type": "application/jsonlines"},
        batch_strategy="single_record",
    )
    env.submit("crash", spec)
    # Five records answered and committed; the sixth is held by the model.
    wait_for(lambda: calls(folder) >= 6, 30, what="the job to be held mid-way")
    wait_for(lambda: env.describe("crash")["records_done"] == 5, 10, what="5 records committed")
    (replica,) = env.describe("crash")["replicas"]
    old_replica = replica_pid(replica["address"])
    control_plane = env.server.child("modelyard.controlplane.main")

    control_plane.kill()
    control_plane.wait(10)
    # The SDK's wait goes on through the restart (the job resumes).
    waited: list[dict[str, Any]] = []
    waiter = threading.Thread(
        target=lambda: waited.append(env.server.client.wait_transform("crash", timeout_s=90))
    )
    waiter.start()
    # As if it died after writing the held record's answer but before recording it.
    (spool,) = out.glob(".crash.jsonl.out.*.partial")
    assert spool.read_text().splitlines() == ["0", "1", "2", "3", "4"]
    with spool.open("a") as fh:
        fh.write("5\n")
    wait_for(
        lambda: (
            env.server.child("modelyard.controlplane.main").pid != control_plane.pid
            and env.get("/transform-jobs/crash").status_code == 200
        ),
        30,
        what="the supervisor to restart the control plane",
    )
    # The new control plane takes the job over and sends the sixth record again.
    wait_for(lambda: calls(folder) >= 7, 30, what="the resumed job to send again")
    (folder / "open").write_text("")

    done = env.wait_done("crash")
    assert done["status"] == "Completed", done["message"]
    assert (out / "crash.jsonl.out").read_text().splitlines() == [str(n) for n in range(200)]
    assert done["summary"]["records"] == 200
    assert calls(folder) == 201  # resumed after the 5 committed: only the held one sent twice
    assert gone(old_replica)  # the replica of the dead control plane was not left running
    logs = " ".join(env.get("/transform-jobs/crash/logs").json()["lines"])
    assert "resuming" in logs
    waiter.join(30)
    assert [view["status"] for view in waited] == ["Completed"]


def test_a_job_stopped_as_it_resumes_leaves_no_half_file_and_keeps_its_failures(
    env: Env,
) -> None:
    folder = env.gated("gated-resume-stop", after=5)
    lines = jsonl_ids(50).splitlines(keepends=True)
    lines[1] = '{"no_id": 1}\n'  # the model fails on line 2
    source = write(env.tmp / "resume-stop.jsonl", "".join(lines))
    out = env.tmp / "resume-stop-out"
    spec = job(
        "gated-resume-stop",
        source,
        out,
        input={"content_type": "application/jsonlines"},
        batch_strategy="single_record",
        max_failed_records=10,
        model_client={"max_retries": 0},
    )
    env.submit("resume-stop", spec)
    wait_for(lambda: calls(folder) >= 6, 30, what="the job to be held mid-way")
    wait_for(lambda: env.describe("resume-stop")["records_done"] == 4, 10, what="4 committed")
    (folder / "slow-load").write_text("")  # the resumed run's replica takes a while to load
    control_plane = env.server.child("modelyard.controlplane.main")
    control_plane.kill()
    control_plane.wait(10)
    assert list(out.glob(".*.partial"))
    wait_for(
        lambda: env.post("/transform-jobs/resume-stop/stop").status_code == 202,
        30,
        what="the restarted control plane to take the stop",
    )

    done = env.wait_done("resume-stop")

    assert done["status"] == "Stopped"
    assert done["message"] == "stopped after 4 record(s)"
    assert not list(out.glob(".*.partial"))  # no half file left behind
    assert not (out / "resume-stop.jsonl.out").exists()
    (failure,) = [
        json.loads(x) for x in (out / "resume-stop.failures.jsonl").read_text().splitlines()
    ]
    assert failure["bad_lines"] == [2]


def test_job_survives_a_replica_killed_mid_job_and_writes_each_record_once(env: Env) -> None:
    folder = env.gated("gated-replica", after=3)
    source = write(env.tmp / "replica.jsonl", jsonl_ids(100))
    out = env.tmp / "replica-out"
    spec = job(
        "gated-replica",
        source,
        out,
        input={"content_type": "application/jsonlines"},
        batch_strategy="single_record",
        max_concurrent_transforms=4,
        model_client={"max_retries": 0},  # a record sent to a replica not up yet would fail
    )
    env.submit("replica-kill", spec)
    # 3 records answered; 4 more held by the model, one per concurrent request.
    wait_for(lambda: calls(folder) >= 7, 30, what="the job to be held mid-way")
    (replica,) = env.describe("replica-kill")["replicas"]
    pid = replica_pid(replica["address"])
    (folder / "slow-load").write_text("")  # the replacement takes a while to load

    psutil.Process(pid).kill()

    # Another replica takes its place and, once it is ready, is sent the 4 records the dead
    # one held (not before: they would fail, with no retries left).
    wait_for(lambda: calls(folder) >= 11, 30, what="the held records to be sent again")
    (new,) = env.describe("replica-kill")["replicas"]
    assert new["id"] != replica["id"]
    (folder / "open").write_text("")
    done = env.wait_done("replica-kill")
    assert done["status"] == "Completed", done["message"]
    assert done["summary"]["failures"] == 0
    assert (out / "replica.jsonl.out").read_text().splitlines() == [str(n) for n in range(100)]
    assert calls(folder) == 104  # only the records the dead replica held were sent twice
    logs = " ".join(env.get("/transform-jobs/replica-kill/logs").json()["lines"])
    assert f"replica {replica['id']} exited" in logs


def test_a_bad_record_fails_its_mini_batch_and_names_its_line(env: Env) -> None:
    # ~1 KB lines: about 1000 records a mini-batch; line 1500 (in the second) is not numbers.
    lines = csv_text(rows(2500, seed=7), digits=250).splitlines(keepends=True)
    lines[1499] = "a,b,c,d\n"
    source = write(env.tmp / "bad.csv", "".join(lines))
    out = env.tmp / "bad-out"

    done = env.run("bad-record", job("labels", source, out, max_failed_records=5000))

    assert done["status"] == "CompletedWithFailures", done["message"]
    (failure,) = [
        json.loads(x) for x in (out / "bad-record.failures.jsonl").read_text().splitlines()
    ]
    assert failure["bad_lines"] == [1500]
    assert "input line 1500" in failure["error"]  # the model server's own report, mapped back
    first, last = failure["first_line"], failure["last_line"]
    assert 1 < first <= 1500 <= last < 2500
    assert failure["records"] == last - first + 1
    assert failure["input"] == str(source)
    assert done["summary"]["failures"] == failure["records"]
    assert done["summary"]["records"] == 2500 - failure["records"]
    assert done["failure_file"] == str(out / "bad-record.failures.jsonl")
    # The other mini-batches' outputs are written, in order.
    kept = [line for n, line in enumerate(lines, start=1) if not first <= n <= last]
    expected = [str(label) for label in env.model.predict(parsed("".join(kept)))]
    assert (out / "bad.csv.out").read_text().splitlines() == expected


def test_a_model_error_without_a_line_is_located_by_halving_the_batch(env: Env) -> None:
    folder = env.gated("halving", after=10_000)  # never blocks; a line without "id" fails
    lines = [json.dumps({"id": n}) for n in range(1, 41)]
    lines[22] = json.dumps({"no-id": 23})
    source = write(env.tmp / "halving.jsonl", "\n".join(lines) + "\n")
    out = env.tmp / "halving-out"
    spec = job("halving", source, out, max_failed_records=100, model_client={"max_retries": 0})
    spec["input"]["content_type"] = "application/jsonlines"

    done = env.run("halving", spec)

    assert done["status"] == "CompletedWithFailures", done["message"]
    (failure,) = [json.loads(x) for x in (out / "halving.failures.jsonl").read_text().splitlines()]
    assert failure["bad_lines"] == [23]
    assert failure["records"] == 40  # the whole mini-batch fails; its bad record is named
    calls = len(list(folder.glob("call-*")))
    assert 1 < calls <= 1 + 2 * 6  # the batch, then two halves per level of a 40-record search


def test_more_failed_records_than_allowed_fails_the_job(env: Env) -> None:
    lines = csv_text(rows(20, seed=8)).splitlines(keepends=True)
    lines[9] = "a,b,c,d\n"
    source = write(env.tmp / "bad0.csv", "".join(lines))
    out = env.tmp / "bad0-out"

    done = env.run("bad-strict", job("labels", source, out, model_client={"max_retries": 0}))

    assert done["status"] == "Failed"
    assert "max_failed_records (0)" in done["message"]
    (failure,) = [
        json.loads(x) for x in (out / "bad-strict.failures.jsonl").read_text().splitlines()
    ]
    assert failure["bad_lines"] == [10]
    assert not (out / "bad0.csv.out").exists()
    assert not list(out.glob(".*.partial"))


@pytest.mark.parametrize(
    ("case", "field", "words"),
    [
        ("missing input", "input.uri", "no file or folder"),
        ("empty input folder", "input.uri", "no files under"),
        ("not gzip", "input.uri", "gzip"),
        ("output under a file", "output.uri", "cannot write"),
        ("unknown content type", "input.content_type", "text/csv"),
        ("missing model", "model", "no Model named 'ghost'"),
    ],
)
def test_a_job_that_cannot_work_is_refused_before_it_starts(
    env: Env, case: str, field: str, words: str
) -> None:
    folder = env.tmp / f"refused-{case.replace(' ', '-')}"
    source = write(folder / "in.csv", csv_text(rows(3)))
    out = folder / "out"
    spec = job("labels", source, out)
    if case == "missing input":
        spec["input"]["uri"] = str(folder / "nothing-here")
    elif case == "empty input folder":
        (folder / "empty").mkdir()
        spec["input"]["uri"] = str(folder / "empty")
    elif case == "not gzip":
        spec["input"]["compression"] = "gzip"
    elif case == "output under a file":
        spec["output"]["uri"] = str(source / "out")
    elif case == "unknown content type":
        spec["input"]["content_type"] = "text/plain"
    else:
        spec["model"] = "ghost"
    name = f"refused-{case.replace(' ', '-')}"

    for resp in (
        env.post("/transform-jobs", {"name": name, "spec": spec}),
        env.post("/apply", {"documents": [{"kind": "TransformJob", "name": name, "spec": spec}]}),
    ):
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["field"].endswith(f"spec.{field}"), error
        assert words in error["message"], error
    assert env.get(f"/transform-jobs/{name}").status_code == 404
    assert not out.exists()  # nothing was made, not even the output folder


def test_stop_ends_a_running_job_with_its_replicas_and_spool(env: Env) -> None:
    folder = env.gated("gated-stop", after=3)
    lines = jsonl_ids(50).splitlines(keepends=True)
    lines[1] = '{"no_id": 1}\n'  # the model fails on line 2
    source = write(env.tmp / "stop.jsonl", "".join(lines))
    out = env.tmp / "stop-out"
    spec = job(
        "gated-stop",
        source,
        out,
        input={"content_type": "application/jsonlines"},
        batch_strategy="single_record",
        max_failed_records=10,
        model_client={"max_retries": 0},
    )
    env.submit("stop", spec)
    # Lines 1 and 3 answered, 2 failed, 4 held by the model.
    wait_for(lambda: calls(folder) >= 4, 30, what="the job to be held mid-way")
    wait_for(
        lambda: env.describe("stop")["progress"]["records_done"] == 2,
        10,
        what="the records before the held one to be committed",
    )
    assert env.describe("stop")["progress"]["records_failed"] == 1
    assert list(out.glob(".*.partial"))  # the spool of the records done so far
    (replica,) = env.describe("stop")["replicas"]
    pid = replica_pid(replica["address"])

    resp = env.post("/transform-jobs/stop/stop")

    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "Stopping"
    wait_for(lambda: "stopping, as asked" in str(env.get("/transform-jobs/stop/logs").json()))
    (folder / "open").write_text("")  # the held record ends: the replica need not be killed
    done = env.wait_done("stop")
    assert done["status"] == "Stopped", done["message"]
    assert done["replicas"] == []
    wait_for(lambda: gone(pid), 10, what="the replica to exit")
    assert not list(out.rglob(".*.partial"))
    assert not (out / "stop.jsonl.out").exists()
    # The failures found before the stop are kept where describe says.
    assert done["failure_file"] == str(out / "stop.failures.jsonl")
    (failure,) = [json.loads(x) for x in (out / "stop.failures.jsonl").read_text().splitlines()]
    assert failure["bad_lines"] == [2]
    assert env.post("/transform-jobs/stop/stop").json()["status"] == "Stopped"  # no-op again


SLOW_LOAD_SOURCE = """
import os, time

class Predictor:
    def load(self, model_dir):  # loads only once model_dir/ready exists (up to 60 s)
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(model_dir, "ready")) and time.monotonic() < deadline:
            time.sleep(0.02)

    def predict(self, inputs):
        return inputs
"""


def test_stop_while_the_replicas_start_ends_the_job_at_once(env: Env) -> None:
    folder = env.tmp / "slow-load"
    folder.mkdir()
    (folder / "slow.py").write_text(SLOW_LOAD_SOURCE)
    spec = {"artifact": str(folder), "runtime": "python", "predictor": "slow:Predictor"}
    model = {"kind": "Model", "name": "slow-load", "spec": spec}
    assert env.post("/apply", {"documents": [model]}).status_code == 200
    source = write(env.tmp / "slow.csv", csv_text(rows(5)))
    env.submit("stop-early", job("slow-load", source, env.tmp / "slow-out"))
    wait_for(lambda: env.describe("stop-early")["replicas"], 30, what="the job's replica to start")

    assert env.post("/transform-jobs/stop-early/stop").status_code == 202

    done = env.wait_done("stop-early", timeout_s=20)  # not the 60 s the model would take
    assert done["status"] == "Stopped"
    assert done["message"] == "stopped after 0 record(s)"
    assert done["replicas"] == []
    assert not (env.tmp / "slow-out" / "slow.csv.out").exists()


def test_jobs_may_not_share_an_output_and_the_same_job_again_is_a_no_op(env: Env) -> None:
    folder = env.gated("gated-overlap", after=0)  # holds every record until opened
    source = write(env.tmp / "overlap.jsonl", jsonl_ids(3))
    out = env.tmp / "overlap-out"
    first = job("gated-overlap", source, out, input={"content_type": "application/jsonlines"})
    env.submit("overlap-1", first)

    inside = job("labels", write(env.tmp / "o.csv", csv_text(rows(3))), out / "sub")
    resp = env.post("/transform-jobs", {"name": "overlap-2", "spec": inside})

    assert resp.status_code == 409, resp.text
    assert "overlap-1" in resp.json()["error"]["message"]
    assert "output.uri" in resp.json()["error"]["message"]
    (folder / "open").write_text("")
    assert env.wait_done("overlap-1")["status"] == "Completed"
    # Once it ended, the same job again is a no-op, even with its input gone.
    source.unlink()
    again = env.post("/transform-jobs", {"name": "overlap-1", "spec": first})
    assert again.status_code == 201 and again.json()["action"] == "unchanged", again.text
    # And the folder is free for another job.
    assert env.run("overlap-2", inside)["status"] == "Completed"
