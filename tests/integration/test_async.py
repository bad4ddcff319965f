"""Async endpoints on a real server: the durable queue, results and failures in storage, expiry,
signed webhooks with retries, scale to and from zero on the backlog, and crashes of each process
while work is queued."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.support import ServerProcess, make_sklearn_model, wait_for, write_yaml

from modelyard import webhooks
from modelyard.errors import InvalidInputError, UserError

WORKER_SOURCE = """
import os, time

class Predictor:
    def load(self, model_dir):
        self.seen = os.path.join(model_dir, "seen.log")

    def predict(self, inputs):
        time.sleep(float(inputs.get("sleep", 0)))
        if inputs.get("fail"):
            raise ValueError("the worker refuses this one")
        with open(self.seen, "a") as fh:
            fh.write(f"{inputs.get('n')}\\n")
        return {"n": inputs.get("n"), "pid": os.getpid()}
"""


def _models(tmp: Path) -> dict[str, Any]:
    worker = tmp / "worker"
    worker.mkdir(exist_ok=True)
    (worker / "worker.py").write_text(WORKER_SOURCE)
    return {
        "kind": "Model",
        "name": "worker",
        "spec": {"artifact": str(worker), "runtime": "python", "predictor": "worker:Predictor"},
    }


def _endpoint(name: str, **cfg: Any) -> dict[str, Any]:
    return {
        "kind": "Endpoint",
        "name": name,
        "spec": {"type": "async", "async": cfg, "variants": [{"name": "v", "model": "worker"}]},
    }


class Receiver:
    """A webhook receiver on a free port; answers 500 to the first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 500 if len(receiver.deliveries) < fail_first else 204
                receiver.deliveries.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hooks = Receiver(fail_first=2)
    yield hooks
    hooks.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("async")
    make_sklearn_model(tmp / "model.joblib")
    write_yaml(
        tmp / "endpoints.yaml",
        [
            _models(tmp),
            _endpoint(
                "work",
                max_concurrent_invocations_per_instance=1,
                idle_timeout_s=600,
                input_locations=[str(tmp / "inputs")],
            ),
            _endpoint("zero", idle_timeout_s=1),
            _endpoint("doomed", max_concurrent_invocations_per_instance=1),
            {
                "kind": "Model",
                "name": "m",
                "spec": {"artifact": "model.joblib", "runtime": "sklearn"},
            },
            {
                "kind": "Endpoint",
                "name": "rows",
                "spec": {"type": "async", "variants": [{"name": "v", "model": "m"}]},
            },
            _endpoint(
                "hooked",
                idle_timeout_s=600,
                output_uri=str(tmp / "results"),
                failure_uri=str(tmp / "failures"),
                notifications={
                    "success": [receiver.url],
                    "error": [receiver.url],
                    "include_response_inline_max_kb": 1,
                },
            ),
        ],
    )
    (tmp / "inputs").mkdir()
    proc = ServerProcess(tmp / "state")
    proc.inputs = tmp / "inputs"  # type: ignore[attr-defined]
    try:
        proc.client.apply_file(tmp / "endpoints.yaml")
        for name in ("work", "zero", "hooked", "doomed", "rows"):
            assert proc.client.wait_endpoint(name, timeout_s=120)["status"] == "InService"
        yield proc
    finally:
        proc.stop()


def _read(uri: str) -> bytes:
    assert uri.startswith("file://"), uri
    return Path(uri[len("file://") :]).read_bytes()


def _exists(uri: str) -> bool:
    return Path(uri[len("file://") :]).exists()


def test_queued_request_ends_with_its_result(server: ServerProcess) -> None:
    queued = server.client.invoke_async("work", json.dumps({"n": 1}), inference_id="mine-1")
    assert queued["output_location"].endswith(f"{queued['inference_id']}.out")
    view = server.client.wait_async("work", queued["inference_id"], timeout_s=60)
    assert view["status"] == "Completed", view
    assert view["client_inference_id"] == "mine-1"
    assert json.loads(_read(queued["output_location"]))["predictions"]["n"] == 1
    assert not _exists(queued["failure_location"])
    listed = server.client.list_async_invocations("work", status="Completed")
    assert queued["inference_id"] in [item["inference_id"] for item in listed]
    # Its replicas drain for as long as a request may run (900 s by default), not 25 s.
    (rep,) = server.client.describe_endpoint("work")["variants"][0]["replicas"]
    command = psutil.Process(rep["pid"]).cmdline()
    assert command[command.index("--drain-grace-s") + 1] == "900"


def test_payload_named_by_input_location_is_read_from_storage(server: ServerProcess) -> None:
    stored = server.inputs / "input.json"  # type: ignore[attr-defined]
    stored.write_text(json.dumps({"n": 2}))
    queued = server.client.invoke_async("work", input_location=f"file://{stored}")
    view = server.client.wait_async("work", queued["inference_id"], timeout_s=60)
    assert view["status"] == "Completed", view
    assert view["input_location"] == f"file://{stored}"
    assert json.loads(_read(queued["output_location"]))["predictions"]["n"] == 2
    assert stored.exists()  # the user's input is theirs: not removed


def test_model_error_and_unreadable_input_end_as_failures_with_reasons(
    server: ServerProcess,
) -> None:
    refused = server.client.invoke_async("work", json.dumps({"n": 3, "fail": True}))
    nothing = f"file://{server.inputs}/nothing.json"  # type: ignore[attr-defined]
    missing = server.client.invoke_async("work", input_location=nothing)
    for queued, reason in (
        (refused, "the worker refuses this one"),
        (missing, "cannot read the input"),
    ):
        view = server.client.wait_async("work", queued["inference_id"], timeout_s=60)
        assert view["status"] == "Failed"
        assert reason in view["failure_reason"]
        failure = json.loads(_read(queued["failure_location"]))
        assert reason in failure["failureReason"]
        assert not _exists(queued["output_location"])


@pytest.mark.parametrize(
    "location",
    ["/etc/hostname", "{inputs}/../elsewhere.json", "{inputs}-sibling/x.json", "s3://bucket/x"],
)
def test_input_locations_outside_the_allowed_prefixes_are_refused(
    server: ServerProcess, location: str
) -> None:
    location = location.format(inputs=server.inputs)  # type: ignore[attr-defined]
    with pytest.raises(InvalidInputError, match=r"not under the endpoint's async\.input_locations"):
        server.client.invoke_async("work", input_location=location)
    with pytest.raises(InvalidInputError, match="none are set"):  # "zero" allows none
        server.client.invoke_async("zero", b"{}", input_location=location)


def test_a_model_failing_part_way_through_a_big_payload_fails_the_request_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.csv"
    good = b"0.5,-1.0,2.0,0.25\n" * 50_000  # ~900 KB: the first run of the stream answers
    rows.write_bytes(good + good + b"1.0,2.0\n" + good)  # a bad row in a later run
    queued = server.client.invoke_async("rows", rows, content_type="text/csv")
    view = server.client.wait_async("rows", queued["inference_id"], timeout_s=60)
    assert view["status"] == "Failed"
    assert "failed part-way" in view["failure_reason"]
    assert view["attempts"] == 1  # the replica was alive: not mistaken for a crash and re-run
    assert not _exists(queued["output_location"])  # no partial result left behind
    logs = "\n".join(server.client.logs("rows", tail=50)["lines"])
    assert "line 100001" in logs


def test_request_still_queued_after_its_ttl_expires(server: ServerProcess) -> None:
    # One invocation at a time: the second waits behind the first's 3 s, longer than its TTL.
    busy = server.client.invoke_async("work", json.dumps({"n": 4, "sleep": 3}))
    late = server.client.invoke_async("work", json.dumps({"n": 5}), request_ttl_s=1)
    view = server.client.wait_async("work", late["inference_id"], timeout_s=60)
    assert view["status"] == "Failed"
    assert "expired" in view["failure_reason"]
    assert server.client.wait_async("work", busy["inference_id"])["status"] == "Completed"


def test_bad_async_requests_are_refused_before_anything_is_stored(server: ServerProcess) -> None:
    url = f"{server.gateway_url}/endpoints/work/async-invocations"
    assert server.http.post(url).status_code == 400  # no body, no input location
    resp = server.http.post(url, content=b"{}", headers={"X-Amzn-SageMaker-RequestTTLSeconds": "0"})
    assert resp.status_code == 400
    assert "requestttlseconds" in resp.json()["message"].lower()
    sync = server.invoke("work", {"n": 1})  # an async endpoint has no synchronous invocations
    assert sync.status_code == 400 and "async-invocations" in sync.json()["message"]
    with pytest.raises(UserError):
        server.client.invoke_async("work")


def test_deleting_an_endpoint_fails_its_queued_requests(server: ServerProcess) -> None:
    busy = server.client.invoke_async("doomed", json.dumps({"n": 9, "sleep": 2}))
    waiting = [server.client.invoke_async("doomed", json.dumps({"n": n})) for n in (10, 11)]
    wait_for(
        lambda: (
            server.client.async_invocation("doomed", busy["inference_id"])["status"] == "Running"
        ),
        30,
        what="the first request to run",
    )
    server.client.delete_endpoint("doomed", wait=True)
    for item in waiting:  # each still ends with exactly one outcome: a failure that says why
        failure = json.loads(_read(item["failure_location"]))
        assert failure["failureReason"] == "the endpoint was deleted before it ran"
        assert not _exists(item["output_location"])
    assert _exists(busy["output_location"]) != _exists(busy["failure_location"])


def test_a_request_can_shorten_its_own_invocation_timeout(server: ServerProcess) -> None:
    queued = server.client.invoke_async(
        "work", json.dumps({"n": 12, "sleep": 3}), invocation_timeout_s=1
    )
    view = server.client.wait_async("work", queued["inference_id"], timeout_s=60)
    assert view["status"] == "Failed"
    assert view["failure_reason"] == "the model did not answer within 1 s"


def test_unsupported_async_options_and_filters_are_refused(server: ServerProcess) -> None:
    url = f"{server.gateway_url}/endpoints/work/async-invocations"
    resp = server.http.post(
        url, content=b"{}", headers={"X-Amzn-SageMaker-S3OutputPathExtension": "x"}
    )
    assert resp.status_code == 400 and "not supported" in resp.json()["message"]
    with pytest.raises(InvalidInputError, match="status: one of Queued"):
        server.client.list_async_invocations("work", status="Lost")


def test_scales_to_zero_when_idle_and_from_zero_on_a_request(server: ServerProcess) -> None:
    def replicas() -> list[dict[str, Any]]:
        return server.client.describe_endpoint("zero")["variants"][0]["replicas"]

    wait_for(lambda: not replicas(), 30, what="the async endpoint to scale to zero")
    queued = server.client.invoke_async("zero", json.dumps({"n": 6}))
    view = server.client.wait_async("zero", queued["inference_id"], timeout_s=60)
    assert view["status"] == "Completed", view
    status = server.client.describe_endpoint("zero")["async_status"]
    assert status["queued"] == 0 and status["succeeded"] == 1
    wait_for(lambda: not replicas(), 30, what="the endpoint to scale to zero again")


def test_webhooks_are_signed_and_retried_until_delivered(
    server: ServerProcess, receiver: Receiver
) -> None:
    secret = server.client.describe_endpoint("hooked")["async_status"]["webhook_secret"]
    done = server.client.invoke_async("hooked", json.dumps({"n": 7}))
    failed = server.client.invoke_async("hooked", json.dumps({"n": 8, "fail": True}))
    assert "/results/" in done["output_location"] and "/failures/" in failed["failure_location"]

    def delivered() -> list[dict[str, Any]]:
        ok = [json.loads(body) for _, body, status in receiver.deliveries if status == 204]
        return ok if len(ok) >= 2 else []

    messages = {m["inferenceId"]: m for m in wait_for(delivered, 60, what="both webhooks")}
    # The receiver failed the first two tries: they were retried (and never stopped the queue).
    assert len(receiver.deliveries) >= 4
    for headers, body, _ in receiver.deliveries:
        signature = headers[webhooks.SIGNATURE_HEADER]
        assert webhooks.verify(secret, signature, body)
        assert not webhooks.verify("wrong-secret", signature, body)
    success = messages[done["inference_id"]]
    assert success["invocationStatus"] == "Completed"
    assert success["responseParameters"]["outputLocation"] == done["output_location"]
    assert success["responseBody"]["encoding"] == "BASE64"  # small: carried inline
    error = messages[failed["inference_id"]]
    assert error["invocationStatus"] == "Failed"
    assert "refuses" in error["failureReason"]
    assert error["failureLocation"] == failed["failure_location"]


# -- crashes while work is queued ---------------------------------------------------------------


@pytest.fixture()
def crash_server(tmp_path: Path) -> Iterator[ServerProcess]:
    write_yaml(
        tmp_path / "endpoints.yaml",
        [_models(tmp_path), _endpoint("q", max_concurrent_invocations_per_instance=2)],
    )
    proc = ServerProcess(tmp_path / "state")
    try:
        proc.client.apply_file(tmp_path / "endpoints.yaml")
        assert proc.client.wait_endpoint("q", timeout_s=120)["status"] == "InService"
        yield proc
    finally:
        proc.stop()


def _kill(server: ServerProcess, what: str) -> None:
    if what == "replica":
        (rep,) = server.client.describe_endpoint("q")["variants"][0]["replicas"]
        os.kill(rep["pid"], signal.SIGKILL)
        return
    module = {"gateway": "modelyard.dataplane.main", "control plane": "modelyard.controlplane.main"}
    child: psutil.Process = server.child(module[what])
    child.kill()
    child.wait(10)


@pytest.mark.parametrize("what", ["replica", "gateway", "control plane"])
def test_every_accepted_request_ends_once_when_a_process_dies(
    crash_server: ServerProcess, what: str
) -> None:
    server = crash_server
    accepted = [
        server.client.invoke_async("q", json.dumps({"n": n, "sleep": 0.3})) for n in range(12)
    ]

    def running() -> bool:
        return server.client.describe_endpoint("q")["async_status"]["running"] > 0

    wait_for(running, 30, what="requests running")
    _kill(server, what)

    def finished(item: dict[str, str]) -> dict[str, Any] | None:
        view = server.client.async_invocation("q", item["inference_id"])
        return view if view["status"] in ("Completed", "Failed") else None

    views = [
        wait_for(lambda i=item: finished(i), 120, what="every request to end") for item in accepted
    ]
    reasons = [v.get("failure_reason") for v in views if v["status"] != "Completed"]
    assert reasons == [], reasons
    for item in accepted:  # exactly one outcome each: a result, and no failure file
        assert _exists(item["output_location"]) and not _exists(item["failure_location"])
        assert json.loads(_read(item["output_location"]))["predictions"]["n"] is not None
    outputs = Path(accepted[0]["output_location"][len("file://") :]).parent
    assert len([p for p in outputs.iterdir() if not p.name.startswith(".")]) == len(accepted)
    if what == "replica":
        events = " ".join(e["message"] for e in server.client.describe_endpoint("q")["events"])
        assert "exited with status -9" in events


# -- a payload far bigger than what any process may hold --------------------------------------


class PeakRss:
    """Polls the resident memory of some processes from a thread; keeps each one's peak."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.base = {name: p.memory_info().rss for name, p in procs.items()}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for name, proc in self.procs.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)

    def growth_mb(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        return {name: (self.peak[name] - self.base[name]) / 2**20 for name in self.procs}


def test_a_payload_of_hundreds_of_mb_streams_through_with_flat_memory(tmp_path: Path) -> None:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 100))
    model = LogisticRegression(max_iter=200).fit(features, (features[:, 0] > 0).astype(int))
    joblib.dump(model, tmp_path / "wide.joblib")
    block = features[:1000]
    text = "\n".join(",".join(f"{v:.3f}" for v in row) for row in block).encode() + b"\n"
    repeats = (256 * 2**20) // len(text) + 1
    payload = tmp_path / "big.csv"
    with open(payload, "wb") as fh:
        for _ in range(repeats):
            fh.write(text)
    size_mb = payload.stat().st_size / 2**20
    assert size_mb > 250
    write_yaml(
        tmp_path / "endpoints.yaml",
        [
            {
                "kind": "Model",
                "name": "wide",
                "spec": {"artifact": "wide.joblib", "runtime": "sklearn"},
            },
            {
                "kind": "Endpoint",
                "name": "big",
                "spec": {"type": "async", "variants": [{"name": "v", "model": "wide"}]},
            },
        ],
    )
    server = ServerProcess(tmp_path / "state")
    try:
        server.client.apply_file(tmp_path / "endpoints.yaml")
        assert server.client.wait_endpoint("big", timeout_s=120)["status"] == "InService"
        (rep,) = server.client.describe_endpoint("big")["variants"][0]["replicas"]
        watch = PeakRss(
            {
                "gateway": server.child("modelyard.dataplane.main"),
                "replica": psutil.Process(rep["pid"]),
                "control plane": server.child("modelyard.controlplane.main"),
            }
        )
        queued = server.client.invoke_async("big", payload, content_type="text/csv")
        view = server.client.wait_async("big", queued["inference_id"], timeout_s=110)
        growth = watch.growth_mb()
        print(f"peak RSS growth (MB) while {size_mb:.0f} MB went through: {growth}")
        assert view["status"] == "Completed", view
        assert view["input_bytes"] == payload.stat().st_size
        with open(queued["output_location"][len("file://") :], "rb") as fh:
            first = [next(fh) for _ in range(len(block))]
            count = len(first) + sum(1 for _ in fh)
        assert count == repeats * len(block)  # one answer per row, none lost or doubled
        expected = model.predict(block)
        assert [float(line) for line in first] == [float(v) for v in expected]
        # Memory stays flat: nowhere near the payload's size in any process on the way.
        assert all(mb < 100 for mb in growth.values()), (size_mb, growth)
        # The uploaded input is removed once the request has ended.
        assert not Path(view["input_location"][len("file://") :]).exists()
    finally:
        server.stop()


def test_gateway_dying_during_an_upload_accepts_nothing(crash_server: ServerProcess) -> None:
    server = crash_server
    url = f"{server.gateway_url}/endpoints/q/async-invocations"
    release = threading.Event()
    outcome: list[str] = []

    def body() -> Iterator[bytes]:
        for i in range(64):
            if i == 4:
                release.wait(30)  # stall half-way until the gateway is dead
            yield b" " * 2**20

    def upload() -> None:
        try:
            resp = httpx.post(url, content=body(), timeout=30, trust_env=False)
            outcome.append(str(resp.status_code))
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    uploader = threading.Thread(target=upload)
    uploader.start()
    inputs = server.state_dir / "async" / "q" / "input"
    wait_for(lambda: list(inputs.glob(".*.part")), 30, what="the upload to be under way")
    _kill(server, "gateway")
    release.set()
    uploader.join(30)
    assert outcome and outcome[0] != "202"  # the client knows it was not accepted

    # Nothing was accepted: no inbox entry, no queued request, no input in place.
    assert not list((server.state_dir / "run" / "async-inbox").glob("*.json"))
    assert server.client.list_async_invocations("q") == []
    assert [p.name for p in inputs.iterdir() if not p.name.startswith(".")] == []
    # The restarted gateway accepts the next one, which runs.
    queued = wait_for(
        lambda: server.client.invoke_async("q", json.dumps({"n": 1})), 30, what="gateway back"
    )
    assert server.client.wait_async("q", queued["inference_id"])["status"] == "Completed"
