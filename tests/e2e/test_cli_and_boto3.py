"""The CLI and boto3 from the outside, as a user runs them against a running server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
import yaml
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerProcess, make_sklearn_model, write_yaml

ROW = [0.5, -1.0, 2.0, 0.25]


def cli(state: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        input=input.decode() if input else None,
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("e2e")
    model = make_sklearn_model(root / "models" / "churn.joblib")
    spec = write_yaml(
        root / "churn.yaml",
        [
            {
                "kind": "Model",
                "name": "churn",
                "spec": {
                    "artifact": "models/churn.joblib",
                    "runtime": "sklearn",
                    "method": "predict_proba",
                },
            },
            {
                "kind": "Endpoint",
                "name": "churn",
                "spec": {
                    "variants": [
                        {
                            "name": "primary",
                            "model": "churn",
                            "instance_count": 1,
                            "batching": {"max_batch_size": 8, "max_delay_ms": 1},
                        }
                    ]
                },
            },
        ],
    )
    server = ServerProcess(root / "state", "--require-invoke-token")
    try:
        applied = cli(server.state_dir, "apply", "-f", str(spec))
        yield {"server": server, "model": model, "root": root, "spec": spec, "applied": applied}
    finally:
        server.stop()


def test_apply_shows_progress_and_succeeds(deployed: dict[str, Any]) -> None:
    applied = deployed["applied"]
    assert applied.returncode == 0, applied.stderr
    assert "model/churn created" in applied.stdout
    assert "endpoint/churn created (revision 1)" in applied.stdout
    assert "endpoint/churn: InService (revision 1, 1/1 replicas ready)" in applied.stderr
    again = cli(deployed["server"].state_dir, "apply", "-f", str(deployed["spec"]))
    assert "endpoint/churn unchanged" in again.stdout


def test_get_and_describe(deployed: dict[str, Any]) -> None:
    state = deployed["server"].state_dir
    table = cli(state, "get", "endpoints")
    assert table.returncode == 0 and "churn" in table.stdout and "InService" in table.stdout
    as_json = json.loads(cli(state, "get", "endpoints", "-o", "json").stdout)
    assert as_json[0]["name"] == "churn" and as_json[0]["replicas_ready"] == 1
    as_yaml = yaml.safe_load(cli(state, "describe", "endpoint", "churn", "-o", "yaml").stdout)
    assert as_yaml["status"] == "InService" and as_yaml["variants"][0]["model"] == "churn"
    text = cli(state, "describe", "endpoint", "churn").stdout
    assert "Status:     InService" in text and "Events:" in text
    assert "batching up to 8 rows within 1 ms" in text
    models = cli(state, "get", "models")
    assert "sklearn" in models.stdout


def test_invoke_with_the_cli_uses_the_invoke_token(deployed: dict[str, Any]) -> None:
    server = deployed["server"]
    out = cli(server.state_dir, "invoke", "churn", "--body", json.dumps({"instances": [ROW]}))
    assert out.returncode == 0, out.stderr
    expected = deployed["model"].predict_proba(np.array([ROW]))
    assert np.allclose(json.loads(out.stdout)["predictions"], expected)
    # Without the token the gateway refuses.
    assert server.invoke("churn", {"instances": [ROW]}).status_code == 401


def test_cli_errors_are_clear(deployed: dict[str, Any], tmp_path: Path) -> None:
    state = deployed["server"].state_dir
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Endpoint\nname: x\nspec:\n  variants: [\n")
    out = cli(state, "apply", "-f", str(bad))
    assert out.returncode == 1 and "not valid YAML at line" in out.stderr
    bad.write_text(
        "kind: Endpoint\nname: x\nspec:\n  variants:\n    - name: a\n      model: churn\n      instance_count: 0\n"
    )
    out = cli(state, "apply", "-f", str(bad))
    assert out.returncode == 1 and "documents[0].spec.variants[0].instance_count" in out.stderr
    missing = cli(state, "describe", "endpoint", "nope")
    assert missing.returncode == 1 and "no endpoint named 'nope'" in missing.stderr
    no_server = cli(tmp_path / "elsewhere", "get", "endpoints")
    assert no_server.returncode == 1 and "modelyard server" in no_server.stderr


def test_logs(deployed: dict[str, Any]) -> None:
    out = cli(deployed["server"].state_dir, "logs", "churn")
    assert out.returncode == 0 and "ready on" in out.stdout


def test_logs_follow_prints_new_lines_as_they_come(deployed: dict[str, Any]) -> None:
    state = deployed["server"].state_dir
    log_file = next((state / "logs" / "churn").glob("*.log"))
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard.cli.main",
            "logs",
            "churn",
            "--follow",
            "--tail",
            "1",
            "--state-dir",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as follower:
        try:
            assert follower.stdout is not None
            first = follower.stdout.readline()
            assert first.startswith("[r-")
            with open(log_file, "a") as fh:  # what a replica writes later shows up
                fh.write("a line written after --follow started\n")
            line = follower.stdout.readline()
            assert line.strip().endswith("a line written after --follow started")
        finally:
            follower.terminate()


def test_boto3_invoke_endpoint(deployed: dict[str, Any]) -> None:
    server = deployed["server"]
    token = (server.state_dir / "invoke-token").read_text().strip()
    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=server.gateway_url,
        region_name="us-east-1",
        aws_access_key_id=token,  # the gateway reads the invoke token from the SigV4 credential
        aws_secret_access_key="unused",
        config=Config(retries={"max_attempts": 1}),
    )
    resp = runtime.invoke_endpoint(
        EndpointName="churn",
        Body=",".join(str(v) for v in ROW).encode(),
        ContentType="text/csv",
        Accept="application/json",
        CustomAttributes="a=1",
    )
    assert resp["InvokedProductionVariant"] == "primary"
    assert resp["CustomAttributes"] == "a=1"
    expected = deployed["model"].predict_proba(np.array([ROW]))
    assert np.allclose(json.loads(resp["Body"].read())["predictions"], expected)
    with pytest.raises(runtime.exceptions.ModelError) as exc:
        runtime.invoke_endpoint(EndpointName="churn", Body=b"1,2", ContentType="text/csv")
    assert "expected 4 features" in str(exc.value)
    with pytest.raises(runtime.exceptions.ValidationError):
        runtime.invoke_endpoint(EndpointName="missing", Body=b"1,2", ContentType="text/csv")


def test_concurrent_invocations_are_batched_and_each_gets_its_own_answer(
    deployed: dict[str, Any],
) -> None:
    server = deployed["server"]
    token = (server.state_dir / "invoke-token").read_text().strip()
    url = f"{server.gateway_url}/endpoints/churn/invocations"
    rows = np.random.default_rng(0).normal(size=(24, 4))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def invoke(row: np.ndarray) -> Any:
        body = json.dumps({"instances": [row.tolist()]})
        with httpx.Client(trust_env=False, timeout=30) as http:
            resp = http.post(url, content=body, headers=headers)
        assert resp.status_code == 200, resp.text
        return resp.json()["predictions"]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(invoke, rows))
    np.testing.assert_allclose(np.vstack(answers), deployed["model"].predict_proba(rows))
    # Every row went through a model call of at most 8 rows, as the replica's metrics show.
    (replica,) = server.client.describe_endpoint("churn")["variants"][0]["replicas"]
    metrics = httpx.get(f"{replica['address']}/metrics", trust_env=False).text
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    calls = samples[("modelyard_replica_batch_size_count", None)]
    assert samples[("modelyard_replica_batch_size_bucket", "8.0")] == calls
    assert samples[("modelyard_replica_batch_size_sum", None)] >= len(rows)


def test_delete_with_the_cli(deployed: dict[str, Any]) -> None:
    state = deployed["server"].state_dir
    out = cli(state, "delete", "endpoint", "churn")
    assert out.returncode == 0 and "endpoint/churn deleted" in out.stdout
    assert json.loads(cli(state, "get", "endpoints", "-o", "json").stdout) == []
