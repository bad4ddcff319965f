"""The whole server on PostgreSQL: deploy, invoke, a control-plane restart that re-adopts, the
async queue and a transform job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support import ServerProcess, make_sklearn_model, wait_for, write_yaml

pytestmark = pytest.mark.postgres


def test_server_on_postgres(tmp_path: Path, fresh_postgres_url: str) -> None:
    make_sklearn_model(tmp_path / "model.joblib")
    spec = write_yaml(
        tmp_path / "ep.yaml",
        [
            {
                "kind": "Model",
                "name": "m",
                "spec": {"artifact": "model.joblib", "runtime": "sklearn"},
            },
            {
                "kind": "Endpoint",
                "name": "ep",
                "spec": {"variants": [{"name": "primary", "model": "m"}]},
            },
            {
                "kind": "Endpoint",
                "name": "queue",
                "spec": {"type": "async", "variants": [{"name": "primary", "model": "m"}]},
            },
        ],
    )
    server = ServerProcess(tmp_path / "state", "--store-url", fresh_postgres_url)
    try:
        server.client.apply_file(spec)
        view = server.client.wait_endpoint("ep", timeout_s=120)
        assert view["status"] == "InService"
        assert server.invoke("ep", {"instances": [[0.1, 0.2, 0.3, 0.4]]}).status_code == 200
        assert not (tmp_path / "state" / "modelyard.db").exists()  # the state is in PostgreSQL

        pids = {r["pid"] for v in view["variants"] for r in v["replicas"]}
        control = server.child("modelyard.controlplane.main")
        control.kill()
        control.wait(10)
        again = wait_for(lambda: server.client.describe_endpoint("ep"), 30, what="restart")
        assert again["status"] == "InService"
        assert {r["pid"] for v in again["variants"] for r in v["replicas"]} == pids
        assert server.invoke("ep", {"instances": [[0.1, 0.2, 0.3, 0.4]]}).status_code == 200

        # The async queue's claims and conditional finishes on PostgreSQL.
        assert server.client.wait_endpoint("queue", timeout_s=120)["status"] == "InService"
        queued = [
            server.client.invoke_async("queue", json.dumps({"instances": [[0.1, 0.2, 0.3, n]]}))
            for n in range(5)
        ]
        for item in queued:
            view = server.client.wait_async("queue", item["inference_id"], timeout_s=60)
            assert view["status"] == "Completed" and view["attempts"] == 1

        # A transform job: its claim, fenced progress writes and summary on PostgreSQL.
        rows = "".join(f"{n / 10},0.2,0.3,0.4\n" for n in range(300))
        (tmp_path / "rows.csv").write_text(rows)
        job = {
            "model": "m",
            "input": {"uri": str(tmp_path / "rows.csv")},
            "output": {"uri": str(tmp_path / "out")},
            "batch_strategy": "single_record",
            "max_concurrent_transforms": 4,
        }
        assert server.client.run_transform("score", job)["action"] == "created"
        done = server.client.wait_transform("score", timeout_s=60)
        assert done["status"] == "Completed", done["message"]
        assert done["summary"]["records"] == 300
        assert len((tmp_path / "out" / "rows.csv.out").read_text().splitlines()) == 300
    finally:
        server.stop()
