"""Autoscaling an async endpoint on its backlog, on a real server: from zero replicas, a queue of
requests the model holds scales the variant out to its max of 2 (target tracking
``async_backlog_per_instance``); once the requests are released and the queue is empty, every
request has succeeded, the variant is back at zero replicas and the autoscaler's capacity back
at 0, each decision a recorded scaling activity.

The server decides every 2 s over a 10 s window (hidden `server` options); the backlog is
sampled every 10 s, so each decision follows the queue by 15 to 25 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import ServerProcess, make_holder, wait_for, wait_held

HELD = 4


def variant(server: ServerProcess) -> dict[str, Any]:
    found: dict[str, Any] = server.client.describe_endpoint("queue")["variants"][0]
    return found


def ready(server: ServerProcess) -> int:
    return sum(r["state"] == "ready" for r in variant(server)["replicas"])


def test_an_async_endpoint_scales_on_its_backlog_from_and_to_zero(tmp_path: Path) -> None:
    folder = make_holder(tmp_path / "holder")
    server = ServerProcess(
        tmp_path / "state", "--autoscale-interval", "2", "--autoscale-window", "10"
    )
    try:
        autoscaling = {
            "min": 0,
            "max": 2,
            "policies": [
                {"target_tracking": {"metric": "async_backlog_per_instance", "target": 1}}
            ],
            "scale_in_cooldown_s": 2,
            "scale_out_cooldown_s": 2,
        }
        server.client.apply(
            [
                {
                    "kind": "Model",
                    "name": "holder",
                    "spec": {
                        "artifact": str(folder),
                        "runtime": "python",
                        "predictor": "holder:Predictor",
                    },
                },
                {
                    "kind": "Endpoint",
                    "name": "queue",
                    "spec": {
                        "type": "async",
                        "async": {
                            "max_concurrent_invocations_per_instance": 1,
                            "idle_timeout_s": 1,
                        },
                        "variants": [{"name": "v", "model": "holder", "autoscaling": autoscaling}],
                    },
                },
            ]
        )
        assert server.client.wait_endpoint("queue", timeout_s=60)["status"] == "InService"
        wait_for(lambda: not variant(server)["replicas"], 30, 0.2, "zero replicas (idle)")

        # From zero: the queue gets a replica, and its backlog (4 per replica) a second one.
        queued = [server.client.invoke_async("queue", json.dumps("hold")) for _ in range(HELD)]
        wait_for(lambda: ready(server) == 2, 45, 0.2, "2 ready replicas for the backlog")
        wait_held(folder, 2)  # each replica works on one request
        out = [a for a in server.client.scaling_activities("queue") if a["to"] == 2]
        assert out and "target_tracking async_backlog_per_instance" in out[-1]["cause"]
        assert out[-1]["from"] < 2

        (folder / "release").touch()
        for request in queued:
            view = server.client.wait_async("queue", request["inference_id"], timeout_s=60)
            assert view["status"] == "Completed", view
        assert server.client.describe_endpoint("queue")["async_status"]["succeeded"] == HELD

        # To zero: no replica once the queue is empty, and the capacity follows the backlog to 0.
        def at_zero() -> bool:
            v = variant(server)
            return not v["replicas"] and v["autoscaling_status"]["capacity"] == 0

        wait_for(at_zero, 40, 0.2, "zero replicas and capacity 0 after the backlog")
        activities = server.client.scaling_activities("queue")  # newest first
        assert activities[0]["to"] == 0 and activities[0]["from"] > 0
        assert "target_tracking async_backlog_per_instance" in activities[0]["cause"]
        assert max(a["to"] for a in activities) == 2
        assert len(list(folder.glob("held-*"))) == HELD
    finally:
        server.stop()
