"""`modelyard server` with real processes and real HTTP: every runtime behind one gateway, errors
with the right status, updates, deletes, and the control-plane API's rules."""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from tests.support import (
    ServerProcess,
    make_onnx_model,
    make_python_predictor,
    make_sklearn_model,
    training_data,
    wait_for,
    write_byoc_server,
    write_yaml,
)

from modelyard.errors import NotFoundError, SpecError

ROW = [0.5, -1.0, 2.0, 0.25]


def _docs(root: Path) -> list[dict[str, Any]]:
    byoc = write_byoc_server(root / "byoc")
    return [
        {
            "kind": "Model",
            "name": "sk",
            "spec": {
                "artifact": "sk/model.joblib",
                "runtime": "sklearn",
                "method": "predict_proba",
            },
        },
        {
            "kind": "Model",
            "name": "onnx-linear",
            "spec": {"artifact": "onnx/linear.onnx", "runtime": "onnx"},
        },
        {
            "kind": "Model",
            "name": "echo",
            "spec": {
                "artifact": "py",
                "runtime": "python",
                "predictor": "echo_predictor:Predictor",
            },
        },
        {
            "kind": "Model",
            "name": "byoc",
            "spec": {"runtime": "container", "container": {"command": [sys.executable, str(byoc)]}},
        },
        {
            "kind": "Endpoint",
            "name": "sk",
            "spec": {"variants": [{"name": "primary", "model": "sk", "instance_count": 2}]},
        },
        {
            "kind": "Endpoint",
            "name": "onnx",
            "spec": {"variants": [{"name": "primary", "model": "onnx-linear"}]},
        },
        {
            "kind": "Endpoint",
            "name": "echo",
            "spec": {"variants": [{"name": "primary", "model": "echo"}]},
        },
        {
            "kind": "Endpoint",
            "name": "byoc",
            "spec": {"variants": [{"name": "primary", "model": "byoc"}]},
        },
        {
            "kind": "Endpoint",
            "name": "hog",
            "spec": {"variants": [{"name": "a", "model": "byoc", "resources": {"memory_mb": 128}}]},
        },
        {
            "kind": "Endpoint",
            "name": "ab",
            "spec": {
                "variants": [
                    {"name": "a", "model": "byoc", "weight": 3},
                    {"name": "b", "model": "byoc", "weight": 1},
                ]
            },
        },
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("server")
    sk = make_sklearn_model(root / "sk" / "model.joblib")
    w, b = make_onnx_model(root / "onnx" / "linear.onnx")
    make_python_predictor(root / "py")
    spec_file = write_yaml(root / "stack.yaml", _docs(root))
    server = ServerProcess(root / "state", "--invocation-timeout", "3")
    try:
        results = server.client.apply_file(spec_file)
        for name in ("sk", "onnx", "echo", "byoc", "ab", "hog"):
            view = server.client.wait_endpoint(name, timeout_s=120)
            assert view["status"] == "InService", view
        yield {
            "server": server,
            "sk": sk,
            "w": w,
            "b": b,
            "root": root,
            "results": results,
            "spec_file": spec_file,
        }
    finally:
        server.stop()


def test_apply_reports_what_it_created(world: dict[str, Any]) -> None:
    actions = {(r["kind"], r["name"]): r["action"] for r in world["results"]}
    assert actions[("Model", "sk")] == "created"
    assert actions[("Endpoint", "byoc")] == "created"
    again = world["server"].client.apply_file(world["spec_file"])
    assert {r["action"] for r in again} == {"unchanged"}


def test_sklearn_endpoint_answers_like_the_model(world: dict[str, Any]) -> None:
    server = world["server"]
    resp = server.invoke("sk", {"instances": [ROW]})
    assert resp.status_code == 200
    assert resp.headers["x-amzn-invoked-production-variant"] == "primary"
    expected = world["sk"].predict_proba(np.array([ROW]))
    assert np.allclose(resp.json()["predictions"], expected)


def test_content_types_and_accept(world: dict[str, Any]) -> None:
    server = world["server"]
    x, _ = training_data(5)
    expected = world["sk"].predict_proba(x)
    csv_body = "\n".join(",".join(str(v) for v in row) for row in x).encode()
    resp = server.invoke("sk", csv_body, **{"Content-Type": "text/csv", "Accept": "text/csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    got = np.loadtxt(io.StringIO(resp.text), delimiter=",")
    assert np.allclose(got, expected)
    buf = io.BytesIO()
    np.save(buf, x)
    resp = server.invoke(
        "sk", buf.getvalue(), **{"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
    )
    assert resp.status_code == 200
    assert np.allclose(np.load(io.BytesIO(resp.content)), expected)


def test_onnx_python_and_byoc_behind_the_same_gateway(world: dict[str, Any]) -> None:
    server = world["server"]
    onnx = server.invoke("onnx", {"instances": [ROW]})
    assert onnx.status_code == 200
    expected = np.array([ROW], dtype=np.float32) @ world["w"] + world["b"]
    assert np.allclose(onnx.json()["predictions"], expected, atol=1e-5)
    echo = server.invoke("echo", {"instances": ["a", "b"]})
    assert echo.status_code == 200
    assert echo.json()["predictions"] == {"echo": ["a", "b"], "prefix": "hello"}
    byoc = server.invoke("byoc", b"12345", **{"Content-Type": "application/octet-stream"})
    assert byoc.status_code == 200
    assert byoc.json()["byoc"] is True and byoc.json()["length"] == 5


def test_traffic_splits_by_variant_weight(world: dict[str, Any]) -> None:
    server = world["server"]
    seen = Counter(
        server.invoke("ab", b"x", **{"Content-Type": "application/octet-stream"}).headers[
            "x-amzn-invoked-production-variant"
        ]
        for _ in range(400)
    )
    assert set(seen) == {"a", "b"}
    assert 2.0 < seen["a"] / seen["b"] < 4.5, seen  # weights 3:1
    pinned = {
        server.invoke("ab", b"x", **{"X-Amzn-SageMaker-Target-Variant": "b"}).headers[
            "x-amzn-invoked-production-variant"
        ]
        for _ in range(20)
    }
    assert pinned == {"b"}


def test_a_model_that_does_not_answer_in_time_gets_504(world: dict[str, Any]) -> None:
    resp = world["server"].invoke("echo", "sleep")
    assert resp.status_code == 504
    assert "did not answer within 3 s" in resp.json()["message"]
    assert world["server"].invoke("echo", "fine").status_code == 200


def test_replica_over_its_memory_limit_is_killed_and_restarted(world: dict[str, Any]) -> None:
    server = world["server"]
    before = server.client.describe_endpoint("hog")["variants"][0]["replicas"][0]
    grow = server.invoke("hog", b"grow", **{"Content-Type": "application/octet-stream"})
    # The replica may be killed while it answers the very request that made it grow: that
    # request is lost with it (503), like any in-flight request of a crashed replica.
    assert grow.status_code in (200, 503)

    def restarted() -> dict[str, Any] | None:
        view = server.client.describe_endpoint("hog")
        rep = view["variants"][0]["replicas"][0]
        return view if rep["restarts"] == 1 and rep["state"] == "ready" else None

    view = wait_for(restarted, 60, what="the replica to be killed and restarted")
    rep = view["variants"][0]["replicas"][0]
    assert rep["pid"] != before["pid"]
    assert "over its memory limit" in rep["message"] and "> 128 MB" in rep["message"]
    events = " ".join(e["message"] for e in view["events"])
    assert "went over its memory limit" in events
    assert (
        server.invoke("hog", b"small", **{"Content-Type": "application/octet-stream"}).status_code
        == 200
    )


def test_custom_attributes_pass_through(world: dict[str, Any]) -> None:
    resp = world["server"].invoke(
        "sk", {"instances": [ROW]}, **{"X-Amzn-SageMaker-Custom-Attributes": "trace=1"}
    )
    assert resp.headers["x-amzn-sagemaker-custom-attributes"] == "trace=1"


def test_model_errors_come_back_as_model_error_with_the_message(world: dict[str, Any]) -> None:
    server = world["server"]
    raised = server.invoke("echo", "raise")
    assert raised.status_code == 424
    assert raised.headers["x-amzn-errortype"] == "ModelError"
    assert "the predictor refuses 'raise'" in raised.json()["message"]
    wrong = server.invoke("sk", {"instances": [[1.0, 2.0]]})
    assert wrong.status_code == 424 and "expected 4 features" in wrong.json()["message"]
    assert wrong.json()["OriginalStatusCode"] == 400
    malformed = server.invoke("sk", b"{not json")
    assert malformed.status_code == 424 and "malformed JSON" in malformed.json()["message"]
    media = server.invoke("sk", b"x", **{"Content-Type": "image/png"})
    assert media.status_code == 424 and media.json()["OriginalStatusCode"] == 415


def test_gateway_validation_errors(world: dict[str, Any]) -> None:
    server = world["server"]
    missing = server.invoke("no-such-endpoint", {"instances": [ROW]})
    assert missing.status_code == 404 and missing.headers["x-amzn-errortype"] == "ValidationError"
    assert "no-such-endpoint" in missing.json()["message"]
    variant = server.invoke(
        "sk", {"instances": [ROW]}, **{"X-Amzn-SageMaker-Target-Variant": "nope"}
    )
    assert variant.status_code == 400 and "Variant nope not found" in variant.json()["message"]
    chosen = server.invoke(
        "sk", {"instances": [ROW]}, **{"X-Amzn-SageMaker-Target-Variant": "primary"}
    )
    assert chosen.status_code == 200
    big = server.invoke("sk", b"0" * (25 * 1024 * 1024 + 1))
    assert big.status_code == 413 and "25 MB" in big.json()["message"]


def test_counts_reach_the_control_plane(world: dict[str, Any]) -> None:
    server = world["server"]
    before = server.client.describe_endpoint("echo")
    assert server.invoke("echo", "x").status_code == 200
    assert server.invoke("echo", "raise").status_code == 424

    def counted() -> dict[str, Any] | None:
        view = server.client.describe_endpoint("echo")
        return view if view["invocations"] >= before["invocations"] + 2 else None

    view = wait_for(counted, 10, what="invocation counts")
    assert view["errors_4xx"] >= before["errors_4xx"] + 1


def test_api_requires_the_token(world: dict[str, Any]) -> None:
    server = world["server"]
    resp = httpx.get(f"{server.api_url}/api/v1/endpoints", trust_env=False)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    assert (server.state_dir / "token").stat().st_mode & 0o777 == 0o600
    docs = httpx.get(f"{server.api_url}/openapi.json", trust_env=False)
    assert docs.status_code == 200 and "/api/v1/apply" in docs.json()["paths"]
    human = httpx.get(f"{server.api_url}/docs", trust_env=False)
    assert human.status_code == 200 and "openapi.json" in human.text


def test_invalid_apply_changes_nothing(world: dict[str, Any]) -> None:
    client = world["server"].client
    before = client.list_endpoints()
    bad = [
        {
            "kind": "Model",
            "name": "new-model",
            "spec": {"artifact": "/nonexistent/m.joblib", "runtime": "sklearn"},
        },
        {
            "kind": "Endpoint",
            "name": "new-ep",
            "spec": {"variants": [{"name": "a", "model": "new-model"}]},
        },
    ]
    with pytest.raises(SpecError) as exc:
        client.apply(bad)
    assert exc.value.field == "documents[0].spec.artifact"
    with pytest.raises(SpecError) as exc:
        client.apply(
            [
                {
                    "kind": "Endpoint",
                    "name": "new-ep",
                    "spec": {"variants": [{"name": "a", "model": "ghost"}]},
                }
            ]
        )
    assert exc.value.field == "documents[0].spec.variants[0].model"
    with pytest.raises(SpecError) as exc:
        client.apply(
            [{"kind": "Model", "name": "m", "spec": {"artifact": "x", "runtime": "tensorflow"}}]
        )
    assert exc.value.field == "documents[0].spec.runtime"
    assert client.list_endpoints() == before
    with pytest.raises(NotFoundError):
        client.get_model("new-model")


def test_weight_change_keeps_replicas_and_model_change_replaces_them(world: dict[str, Any]) -> None:
    server = world["server"]
    client = server.client
    view = client.describe_endpoint("sk")
    pids = {r["pid"] for v in view["variants"] for r in v["replicas"]}
    docs = [
        {
            "kind": "Endpoint",
            "name": "sk",
            "spec": {
                "variants": [{"name": "primary", "model": "sk", "instance_count": 2, "weight": 3}]
            },
        }
    ]
    [result] = client.apply(docs)
    assert result["action"] == "updated" and result["revision"] == view["revision"] + 1
    view = client.wait_endpoint("sk", revision=result["revision"], timeout_s=60)
    assert view["active_revision"] == result["revision"]
    assert {
        r["pid"] for v in view["variants"] for r in v["replicas"] if r["state"] == "ready"
    } == pids

    make_sklearn_model(world["root"] / "sk2" / "model.joblib")
    docs = [
        {
            "kind": "Model",
            "name": "sk",
            "spec": {"artifact": str(world["root"] / "sk2" / "model.joblib"), "runtime": "sklearn"},
        }
    ]
    [model_result, endpoint_result] = client.apply(docs)
    assert model_result["action"] == "updated" and endpoint_result["name"] == "sk"
    view = client.wait_endpoint("sk", revision=endpoint_result["revision"], timeout_s=120)
    assert view["active_revision"] == endpoint_result["revision"]
    resp = server.invoke("sk", {"instances": [ROW]})
    assert resp.json()["predictions"] == [
        int(world["sk"].predict(np.array([ROW]))[0])
    ]  # predict now

    def old_gone() -> bool:
        return not any(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            for p in pids
        )

    wait_for(old_gone, 60, what="the old replicas to stop")

    rolled = client.rollback_endpoint("sk", view["revision"] - 1)
    assert rolled["action"] == "updated" and rolled["revision"] == view["revision"] + 1
    view = client.wait_endpoint("sk", revision=rolled["revision"], timeout_s=120)
    assert view["active_revision"] == rolled["revision"]
    again = server.invoke("sk", {"instances": [ROW]})
    assert np.allclose(again.json()["predictions"], world["sk"].predict_proba(np.array([ROW])))


def test_failures_are_reported_with_the_reason(world: dict[str, Any]) -> None:
    client = world["server"].client
    root: Path = world["root"]
    (root / "corrupt.joblib").write_bytes(b"not a pickle at all")
    never = root / "never_ready.py"
    never.write_text("import time\nwhile True:\n    time.sleep(1)\n")
    docs = [
        {
            "kind": "Model",
            "name": "corrupt",
            "spec": {"artifact": str(root / "corrupt.joblib"), "runtime": "sklearn"},
        },
        {
            "kind": "Model",
            "name": "exits",
            "spec": {
                "runtime": "container",
                "container": {
                    "command": [sys.executable, "-c", "import sys; print('bye'); sys.exit(7)"]
                },
            },
        },
        {
            "kind": "Model",
            "name": "silent",
            "spec": {
                "runtime": "container",
                "container": {"command": [sys.executable, str(never)]},
            },
        },
        {
            "kind": "Endpoint",
            "name": "corrupt",
            "spec": {"variants": [{"name": "a", "model": "corrupt"}]},
        },
        {
            "kind": "Endpoint",
            "name": "exits",
            "spec": {"variants": [{"name": "a", "model": "exits"}]},
        },
        {
            "kind": "Endpoint",
            "name": "silent",
            "spec": {"variants": [{"name": "a", "model": "silent", "startup_timeout_s": 3}]},
        },
    ]
    client.apply(docs)
    corrupt = client.wait_endpoint("corrupt", timeout_s=60)
    assert corrupt["status"] == "Failed"
    assert "status 3" in corrupt["message"]
    assert any("load failed" in line for line in corrupt["last_log_lines"])
    exits = client.wait_endpoint("exits", timeout_s=60)
    assert exits["status"] == "Failed" and "status 7" in exits["message"]
    assert any("bye" in line for line in exits["last_log_lines"])
    silent = client.wait_endpoint("silent", timeout_s=60)
    assert (
        silent["status"] == "Failed" and "did not answer GET /ping within 3 s" in silent["message"]
    )
    for name in ("corrupt", "exits", "silent"):
        client.delete_endpoint(name, timeout_s=60)
    names = {e["name"] for e in client.list_endpoints()}
    assert not names & {"corrupt", "exits", "silent"}


def test_delete_stops_replicas_and_model_in_use_is_protected(world: dict[str, Any]) -> None:
    server = world["server"]
    client = server.client
    from modelyard.errors import ConflictError

    with pytest.raises(ConflictError):
        client.delete_model("echo")
    view = client.describe_endpoint("echo")
    pids = [r["pid"] for v in view["variants"] for r in v["replicas"]]
    client.delete_endpoint("echo", timeout_s=60)
    assert server.invoke("echo", "x").status_code == 404 or wait_for(
        lambda: server.invoke("echo", "x").status_code == 404, 5, what="the route to go"
    )
    assert not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids
    )
    client.delete_model("echo")
    with pytest.raises(NotFoundError):
        client.get_model("echo")


def test_logs_show_replica_output(world: dict[str, Any]) -> None:
    page = world["server"].client.logs("sk", tail=20)
    assert any("ready on" in line for line in page["lines"])
    again = world["server"].client.logs("sk", cursor=page["cursor"])
    assert again["lines"] == [] or all(line.startswith("[r-") for line in again["lines"])
    assert json.dumps(page["cursor"])
