"""Serverless and async endpoints from the outside: boto3's invoke_endpoint_async and throttling,
and the CLI's `invoke --async` and `async get|list`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import httpx
import numpy as np
import pytest
from botocore.config import Config

from tests.support import (
    ServerProcess,
    make_holder,
    make_sklearn_model,
    wait_for,
    wait_held,
    write_yaml,
)


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("e2e-async")
    model = make_sklearn_model(root / "model.joblib")
    make_holder(root / "holder")
    (root / "inputs").mkdir()
    spec = write_yaml(
        root / "endpoints.yaml",
        [
            {
                "kind": "Model",
                "name": "m",
                "spec": {"artifact": "model.joblib", "runtime": "sklearn"},
            },
            {
                "kind": "Model",
                "name": "holder",
                "spec": {
                    "artifact": "holder",
                    "runtime": "python",
                    "predictor": "holder:Predictor",
                },
            },
            {
                "kind": "Endpoint",
                "name": "jobs",
                "spec": {
                    "type": "async",
                    "async": {"input_locations": [str(root / "inputs")]},
                    "variants": [{"name": "v", "model": "m"}],
                },
            },
            {
                "kind": "Endpoint",
                "name": "one-at-a-time",
                "spec": {
                    "type": "serverless",
                    "serverless": {"max_concurrency": 1},
                    "variants": [{"name": "v", "model": "holder"}],
                },
            },
        ],
    )
    server = ServerProcess(root / "state")
    try:
        applied = cli(server.state_dir, "apply", "-f", str(spec))
        assert applied.returncode == 0, applied.stderr
        yield {"server": server, "model": model, "root": root}
    finally:
        server.stop()


def _runtime(server: ServerProcess) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=server.gateway_url,
        region_name="us-east-1",
        aws_access_key_id="unused",
        aws_secret_access_key="unused",
        config=Config(retries={"max_attempts": 1}),
    )


def test_boto3_invoke_endpoint_async_with_an_input_location(deployed: dict[str, Any]) -> None:
    server, root = deployed["server"], deployed["root"]
    rows = np.random.default_rng(0).normal(size=(5, 4))
    stored = root / "inputs" / "rows.csv"
    stored.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    resp = _runtime(server).invoke_endpoint_async(
        EndpointName="jobs",
        InputLocation=f"file://{stored}",
        ContentType="text/csv",
        Accept="application/json",
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 202
    inference_id = resp["InferenceId"]
    assert resp["OutputLocation"].endswith(f"{inference_id}.out")
    assert resp["FailureLocation"].endswith(f"{inference_id}.error")

    shown = cli(server.state_dir, "async", "get", "jobs", inference_id, "--wait", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "Completed"
    result = json.loads(Path(resp["OutputLocation"][len("file://") :]).read_text())
    assert result["predictions"] == deployed["model"].predict(rows).tolist()

    listed = cli(server.state_dir, "async", "list", "jobs")
    assert inference_id in listed.stdout and "Completed" in listed.stdout


def test_cli_invoke_async_streams_a_file_and_waits(deployed: dict[str, Any]) -> None:
    server, root = deployed["server"], deployed["root"]
    body = root / "request.json"
    body.write_text(json.dumps({"instances": [[0.5, -1.0, 2.0, 0.25]]}))
    done = cli(server.state_dir, "invoke", "jobs", "--async", "--file", str(body), "--wait")
    assert done.returncode == 0, done.stderr
    assert "inference id:" in done.stdout and "Completed: file://" in done.stdout
    refused = cli(server.state_dir, "invoke", "jobs", "--async", "--input-location", "/etc/hosts")
    assert refused.returncode == 1
    assert "not under the endpoint's async.input_locations" in refused.stderr
    nothing = str(root / "inputs" / "nothing.json")
    missing = cli(
        server.state_dir, "invoke", "jobs", "--async", "--input-location", nothing, "--wait"
    )
    assert missing.returncode == 1
    assert f"cannot read the input at file://{nothing}" in missing.stderr
    described = cli(server.state_dir, "describe", "endpoint", "jobs")
    assert "Type:       async" in described.stdout and "Webhook secret:" in described.stdout


def test_boto3_sees_throttling_over_max_concurrency(deployed: dict[str, Any]) -> None:
    server, root = deployed["server"], deployed["root"]
    url = f"{server.gateway_url}/endpoints/one-at-a-time/invocations"
    held: list[int] = []

    def hold() -> None:
        held.append(httpx.post(url, json="hold", timeout=60, trust_env=False).status_code)

    holder = threading.Thread(target=hold)
    holder.start()
    runtime = _runtime(server)

    def throttled() -> str | None:
        try:
            runtime.invoke_endpoint(EndpointName="one-at-a-time", Body=b'"hi"')
        except botocore.exceptions.ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return None

    try:
        wait_held(root / "holder", 1)  # in progress: the next request is over the cap
        code = wait_for(throttled, 30, interval_s=0.02, what="boto3 to be throttled")
    finally:
        (root / "holder" / "release").write_text("go")
    holder.join(30)
    assert code == "ThrottlingException"
    assert held == [200]
