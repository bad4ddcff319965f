"""The model server as a real process on a real port: the replica contract end to end."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from tests.support import serving

from modelyard.dataplane.modelserver import build_app, fetch_artifact
from modelyard.runtimes.python import PythonRuntime
from modelyard.spec import ModelSpec

X, Y = make_classification(n_samples=50, n_features=4, random_state=0)
START_TIMEOUT_S = 30.0

PREDICTOR = """
import os, threading

class Predictor:
    def load(self, model_dir):
        self.greeting = os.environ["GREETING"]

    def predict(self, inputs):
        if inputs == "fail":
            raise ValueError("boom: the model cannot take 'fail'")
        return {"greeting": self.greeting, "inputs": inputs,
                "thread": threading.current_thread().name}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Replica:
    """A model server subprocess for one spec."""

    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        spec_file = workdir / "model.json"
        spec_file.write_text(json.dumps({"name": "m", "spec": spec}))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelyard.dataplane.modelserver",
                "--model-spec-file",
                str(spec_file),
                "--port",
                str(self.port),
                "--cache-dir",
                str(workdir / "cache"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> httpx.Client:
        """A client for the replica once it answers /ping; fails if it exits or is too slow."""
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=10) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"replica exited {self.proc.returncode}: {self.stderr()}")
                try:
                    if probe.get("/ping").status_code == 200:
                        return httpx.Client(base_url=self.url, timeout=10)
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # poll interval, not synchronisation: the deadline bounds it
        raise AssertionError("replica did not answer /ping in time")

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def classifier() -> LogisticRegression:
    return LogisticRegression().fit(X, Y)


@pytest.fixture(scope="module")
def sklearn_replica(
    classifier: LogisticRegression, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    workdir = tmp_path_factory.mktemp("sklearn-replica")
    joblib.dump(classifier, workdir / "model.joblib")
    replica = Replica(
        {
            "runtime": "sklearn",
            "artifact": (workdir / "model.joblib").as_uri(),
            "method": "predict_proba",
        },
        workdir,
    )
    try:
        with replica.wait_ready() as client:
            yield client
    finally:
        replica.stop()


@pytest.fixture
def python_replica(tmp_path: Path) -> Iterator[tuple[Replica, httpx.Client]]:
    (tmp_path / "greeter.py").write_text(PREDICTOR)
    replica = Replica(
        {
            "runtime": "python",
            "artifact": str(tmp_path),
            "predictor": "greeter:Predictor",
            "environment": {"GREETING": "hello"},
        },
        tmp_path,
    )
    try:
        with replica.wait_ready() as client:
            yield replica, client
    finally:
        replica.stop()


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def test_ping_and_health_answer_once_loaded(sklearn_replica: httpx.Client) -> None:
    for path in ("/ping", "/health"):
        response = sklearn_replica.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_json_answers_equal_the_in_process_model(
    sklearn_replica: httpx.Client, classifier: LogisticRegression
) -> None:
    response = sklearn_replica.post("/invocations", json={"instances": X[:8].tolist()})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    np.testing.assert_allclose(response.json()["predictions"], classifier.predict_proba(X[:8]))


def test_csv_in_csv_out(sklearn_replica: httpx.Client, classifier: LogisticRegression) -> None:
    body = "\n".join(",".join(repr(v) for v in row) for row in X[:5].tolist())
    response = sklearn_replica.post(
        "/invocations",
        content=body,
        headers={"content-type": "text/csv; charset=utf-8", "accept": "text/csv"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv"
    answer = np.loadtxt(io.StringIO(response.text), delimiter=",", ndmin=2)
    np.testing.assert_allclose(answer, classifier.predict_proba(X[:5]))


def test_npy_in_npy_out(sklearn_replica: httpx.Client, classifier: LogisticRegression) -> None:
    response = sklearn_replica.post(
        "/invocations",
        content=_npy(X[:5]),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert response.status_code == 200
    answer = np.load(io.BytesIO(response.content), allow_pickle=False)
    np.testing.assert_array_equal(answer, classifier.predict_proba(X[:5]))


def test_custom_attributes_are_echoed(sklearn_replica: httpx.Client) -> None:
    response = sklearn_replica.post(
        "/invocations",
        json=[X[0].tolist()],
        headers={"X-Amzn-SageMaker-Custom-Attributes": "trace=abc"},
    )
    assert response.headers["x-amzn-sagemaker-custom-attributes"] == "trace=abc"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "message"),
    [
        (
            "POST",
            "/invocations",
            {"json": [[1, 2, 3]]},
            400,
            "invalid_input",
            "expected 4 features per row, got 3",
        ),
        (
            "POST",
            "/invocations",
            {"content": b"[[1, 2", "headers": {"content-type": "application/json"}},
            400,
            "invalid_input",
            "malformed JSON",
        ),
        (
            "POST",
            "/invocations",
            {"content": b"<x/>", "headers": {"content-type": "text/xml"}},
            415,
            "unsupported_media",
            "text/csv",
        ),
        (
            "POST",
            "/invocations",
            {"json": [[1, 2, 3, 4]], "headers": {"accept": "text/html"}},
            415,
            "unsupported_media",
            "text/html",
        ),
        ("GET", "/invocations", {}, 405, "method_not_allowed", "POST"),
        ("GET", "/nowhere", {}, 404, "not_found", "/nowhere"),
    ],
)
def test_errors_have_the_right_status_and_shape(
    sklearn_replica: httpx.Client,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    message: str,
) -> None:
    response = sklearn_replica.request(method, path, **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]


def test_python_predictor_gets_json_as_is_and_its_environment(
    python_replica: tuple[Replica, httpx.Client],
) -> None:
    _, client = python_replica
    response = client.post("/invocations", json={"inputs": {"text": "hi", "n": [1, 2]}})
    assert response.status_code == 200
    answer = response.json()["predictions"]
    assert answer["greeting"] == "hello"
    assert answer["inputs"] == {"text": "hi", "n": [1, 2]}


def test_a_model_that_raises_is_424_with_its_message(
    python_replica: tuple[Replica, httpx.Client],
) -> None:
    _, client = python_replica
    response = client.post("/invocations", json={"inputs": "fail"})
    assert response.status_code == 424
    assert response.json() == {
        "error": {
            "code": "model_error",
            "message": "ValueError: boom: the model cannot take 'fail'",
        }
    }


def test_sigterm_stops_the_replica_promptly_with_status_0(
    python_replica: tuple[Replica, httpx.Client],
) -> None:
    replica, _ = python_replica
    replica.proc.send_signal(signal.SIGTERM)
    assert replica.proc.wait(timeout=10) == 0
    assert "ready on http://127.0.0.1:" in replica.stderr()


def _run_replica(spec: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    spec_file = workdir / "model.json"
    spec_file.write_text(json.dumps({"name": "m", "spec": spec}))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "modelyard.dataplane.modelserver",
            "--model-spec-file",
            str(spec_file),
            "--port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


def test_corrupt_artifact_exits_3_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.joblib").write_bytes(b"not a pickle")
    done = _run_replica(
        {"runtime": "sklearn", "artifact": str(tmp_path / "broken.joblib")}, tmp_path
    )
    assert done.returncode == 3
    lines = [line for line in done.stderr.splitlines() if line.startswith("modelyard-replica:")]
    assert len(lines) == 1
    assert lines[0].startswith("modelyard-replica: load failed: cannot load scikit-learn model")
    assert "broken.joblib" in lines[0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"runtime": "sklearn", "artifact": "/no/such/model.joblib"}, "artifact not found"),
        (
            {"runtime": "python", "artifact": "/tmp", "predictor": "no_such_mod_q:P"},
            "cannot import predictor module",
        ),
        ({"runtime": "sklearn"}, "needs an artifact"),
    ],
)
def test_other_load_failures_exit_3(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    done = _run_replica(spec, tmp_path)
    assert done.returncode == 3, done.stderr
    assert "modelyard-replica: load failed:" in done.stderr
    assert message in done.stderr


def test_importing_the_model_server_imports_no_optional_framework() -> None:
    code = (
        "import sys, modelyard.dataplane.modelserver, modelyard.runtimes\n"
        "print(sorted(m for m in ('onnxruntime', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_non_local_artifacts_are_copied_into_the_cache_once(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/modelyard-test-{os.getpid()}"
    fs.pipe(f"{root}/model/predictor.py", b"x = 1\n")
    fs.pipe(f"{root}/model/weights/w.bin", b"\x01\x02")
    try:
        local = fetch_artifact(f"memory://{root}/model", tmp_path)
        assert local.parent.parent == tmp_path
        assert (local / "predictor.py").read_bytes() == b"x = 1\n"
        assert (local / "weights" / "w.bin").read_bytes() == b"\x01\x02"
        fs.rm(root, recursive=True)  # a second fetch is served from the cache
        assert fetch_artifact(f"memory://{root}/model", tmp_path) == local
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_predict_runs_off_the_event_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("GREETING", "hi")
    (tmp_path / "greeter_inproc.py").write_text(PREDICTOR)
    runtime = PythonRuntime(
        ModelSpec(runtime="python", artifact=str(tmp_path), predictor="greeter_inproc:Predictor")
    )
    runtime.load(tmp_path)

    async def call() -> httpx.Response:
        async with serving(build_app(runtime)) as client:
            return await client.post("/invocations", json={"inputs": [1]})

    response = asyncio.run(call())
    assert response.status_code == 200
    assert response.json()["predictions"]["thread"] != threading.main_thread().name
