"""Helpers for tests: polling, tiny models, and a real `modelyard server` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import joblib
import numpy as np
import psutil
import yaml

from modelyard.client import Client
from modelyard.dataplane.http import Handler, HttpServer
from modelyard.runtimes.python import PythonRuntime
from modelyard.spec import ModelSpec

T = TypeVar("T")
N_FEATURES = 4


def wait_for(
    check: Callable[[], T | bool | None],
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value  # type: ignore[return-value]
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(
        f"timed out after {timeout_s:g} s waiting for {what} (last error: {last_exc})"
    )


def training_data(n_samples: int = 200) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    return make_classification(n_samples=n_samples, n_features=N_FEATURES, random_state=0)


def make_sklearn_model(path: Path) -> Any:
    from sklearn.linear_model import LogisticRegression

    x, y = training_data()
    model = LogisticRegression(max_iter=1000).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return model


def make_onnx_model(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A linear model y = x @ W + b as a hand-built ONNX graph; returns (W, b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(N_FEATURES, 2)).astype(np.float32)
    b = rng.normal(size=(2,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, N_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return w, b


PREDICTOR_SOURCE = """
class Predictor:
    def load(self, model_dir):
        self.prefix = open(model_dir + "/prefix.txt").read().strip()

    def predict(self, inputs):
        if inputs == "sleep":
            import time
            time.sleep(5)
        if inputs == "raise":
            raise ValueError("the predictor refuses 'raise'")
        return {"echo": inputs, "prefix": self.prefix}
"""


HOLDER_SOURCE = """
import os, time, uuid

class Predictor:
    def load(self, model_dir):
        self.folder = model_dir
        self.release = os.path.join(model_dir, "release")

    def predict(self, inputs):
        if inputs == "hold":  # one file per request held, so a test knows when they arrived
            open(os.path.join(self.folder, "held-" + uuid.uuid4().hex), "w").close()
        deadline = time.monotonic() + 60
        while inputs == "hold" and not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return inputs
"""


def make_holder(folder: Path) -> Path:
    """A Python predictor that answers "hold" only once ``folder/release`` exists (up to 60 s):
    a test decides how long requests stay in progress."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "holder.py").write_text(HOLDER_SOURCE)
    return folder


def wait_held(folder: Path, count: int, timeout_s: float = 30.0) -> None:
    """Wait until a holder made by ``make_holder`` is holding ``count`` requests (in total)."""
    wait_for(
        lambda: len(list(folder.glob("held-*"))) >= count,
        timeout_s,
        interval_s=0.02,
        what=f"{count} requests to be held by the model",
    )


def make_python_predictor(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "echo_predictor.py").write_text(PREDICTOR_SOURCE)
    (folder / "prefix.txt").write_text("hello")
    return folder


BYOC_SOURCE = '''
"""A bring-your-own-container replica: a tiny HTTP server on $PORT (stdlib only)."""
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HELD = []

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200 if self.path == "/ping" else 404, {"ok": self.path == "/ping"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if body == b"grow":  # hold 300 MB of written (so resident) memory
            HELD.append(b"x" * (300 * 1024 * 1024))
        self._send(200, {"byoc": True, "length": len(body), "pid": os.getpid()})

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def write_byoc_server(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "byoc_server.py"
    path.write_text(BYOC_SOURCE)
    return path


def write_yaml(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


class ServerProcess:
    """`modelyard server` as a user runs it, on free ports, in its own state directory."""

    def __init__(self, state_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"{state_dir.name}-server.log"
        cmd = [
            sys.executable,
            "-m",
            "modelyard.cli.main",
            "server",
            "--state-dir",
            str(state_dir),
            "--port",
            "0",
            "--gateway-port",
            "0",
            *extra,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        info = wait_for(self._server_info, 30, what="server.json")
        self.api_url: str = info["api_url"]
        self.gateway_url: str = info["gateway_url"]
        wait_for(self._healthy, 30, what="the control plane to answer /healthz")
        self.client = Client(state_dir=state_dir)
        self.http = httpx.Client(trust_env=False, timeout=70)

    def _server_info(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.output()}")
        path = self.state_dir / "server.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _healthy(self) -> bool:
        return httpx.get(f"{self.api_url}/healthz", timeout=1, trust_env=False).status_code == 200

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child(self, module: str) -> psutil.Process:
        for proc in psutil.Process(self.proc.pid).children():
            if module in " ".join(proc.cmdline()):
                return proc
        raise AssertionError(f"no child process running {module}")

    def invoke(self, endpoint: str, body: Any, **headers: str) -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **headers}
        return self.http.post(
            f"{self.gateway_url}/endpoints/{endpoint}/invocations", content=data, headers=hdrs
        )

    def stop(self, timeout_s: float = 60) -> int:
        self.client.close()
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def replica_pids(state_dir: Path) -> set[int]:
    """Pids of live model-server/BYOC processes started for this state directory."""
    pids = set()
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(state_dir) in cmd and "modelyard.dataplane.modelserver" in cmd:
            pids.add(proc.info["pid"])
    return pids


@contextlib.asynccontextmanager
async def serving(handler: Handler, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``handler`` on the data plane's HTTP server on a free port; an httpx client for it."""
    server = HttpServer(handler, **options)
    (address,) = await server.listen(host="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(base_url=address, trust_env=False, timeout=30) as client:
            yield client
    finally:
        await server.shutdown(grace_s=5)


def load_python_predictor(
    folder: Path, monkeypatch: Any, module: str, source: str
) -> PythonRuntime:
    """A loaded python runtime for ``module.py`` holding ``source`` with a ``Predictor`` class.
    ``monkeypatch`` (pytest's) restores ``sys.path`` and forgets the module afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    (folder / f"{module}.py").write_text(source)
    runtime = PythonRuntime(
        ModelSpec(runtime="python", artifact=str(folder), predictor=f"{module}:Predictor")
    )
    runtime.load(folder)
    return runtime
