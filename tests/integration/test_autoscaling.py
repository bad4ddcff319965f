"""Autoscaling on a real server: under continuous load a variant tracking concurrency scales out
to its max and no further, records why, scales back in to its min once the burst stops while one
client goes on — and not one request fails on the way, scale-in included (replicas leave the
routing table, then drain).

The server decides every 2 s over a 10 s window (hidden `server` options) so the test fits in
about a minute; the defaults are 10 s and 60 s.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from tests.support import ServerProcess, wait_for

SLEEPY_SOURCE = """
import time

class Predictor:
    def load(self, model_dir):
        pass

    def predict(self, inputs):
        time.sleep(0.05)  # ~50 ms a request: requests pile up at the gateway
        return {"ok": True}
"""


class Load:
    """Threads that each send one request after another to an endpoint until stopped, counting
    every answer by status (a transport error counts as status 0)."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]

    def _send(self) -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    resp = http.post(self.url, json={"instances": [[1.0]]})
                    status, detail = resp.status_code, resp.text[:200]
                except httpx.HTTPError as exc:
                    status, detail = 0, repr(exc)
                with self._lock:
                    self.statuses[status] += 1
                    if status != 200:
                        self.errors.append(f"{status}: {detail}")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def variant(server: ServerProcess) -> dict[str, Any]:
    view = server.client.describe_endpoint("auto")
    found: dict[str, Any] = view["variants"][0]
    return found


def serving(server: ServerProcess) -> int:
    """Replicas of the variant that are ready (routed) or starting — none that is stopping."""
    return sum(r["state"] in ("ready", "starting") for r in variant(server)["replicas"])


def test_scales_out_to_max_and_back_in_to_min_without_failing_a_request(tmp_path: Path) -> None:
    folder = tmp_path / "sleepy"
    folder.mkdir()
    (folder / "sleepy.py").write_text(SLEEPY_SOURCE)
    server = ServerProcess(
        tmp_path / "state", "--autoscale-interval", "2", "--autoscale-window", "10"
    )
    url = f"{server.gateway_url}/endpoints/auto/invocations"
    # Five threads stop once the variant is at max; one goes on through the scale-in (it keeps
    # at most one request in progress: the target, so it wants one replica).
    burst, steady = Load(url, threads=5), Load(url, threads=1)
    seen: list[int] = []
    try:
        autoscaling = {
            "min": 1,
            "max": 3,
            "policies": [
                {"target_tracking": {"metric": "concurrent_requests_per_replica", "target": 1}}
            ],
            "scale_in_cooldown_s": 2,
            "scale_out_cooldown_s": 2,
        }
        server.client.apply(
            [
                {
                    "kind": "Model",
                    "name": "sleepy",
                    "spec": {
                        "artifact": str(folder),
                        "runtime": "python",
                        "predictor": "sleepy:Predictor",
                    },
                },
                {
                    "kind": "Endpoint",
                    "name": "auto",
                    "spec": {
                        "variants": [{"name": "v", "model": "sleepy", "autoscaling": autoscaling}]
                    },
                },
            ]
        )
        server.client.wait_endpoint("auto", timeout_s=60)
        assert serving(server) == 1
        burst.start()
        steady.start()

        def watch(check: Any) -> Any:
            def poll() -> Any:
                seen.append(serving(server))
                return check()

            return poll

        # Scale out: more replicas, each ready before it takes traffic, and an activity says why.
        wait_for(watch(lambda: serving(server) > 1), 45, 0.2, "a scale-out")
        first = server.client.scaling_activities("auto")[::-1][:2]  # the oldest two
        assert first[0]["cause"].startswith("autoscaling applied: initial capacity 1")
        assert first[1]["from"] == 1 and first[1]["to"] > 1
        assert "target_tracking concurrent_requests_per_replica" in first[1]["cause"]

        # Max: the load wants more than 3 replicas; it gets 3.
        def at_max() -> bool:
            v = variant(server)
            ready = sum(r["state"] == "ready" for r in v["replicas"])
            return v["autoscaling_status"]["capacity"] == 3 and ready == 3

        wait_for(watch(at_max), 45, 0.2, "3 ready replicas")
        wait_for(
            watch(
                lambda: any(
                    (a["details"].get("wanted") or 0) > 3 and a["to"] == 3
                    for a in server.client.scaling_activities("auto")
                )
            ),
            30,
            0.2,
            "a decision clamped to max 3",
        )
        burst.stop()

        # Scale in to min once the burst is gone; the replicas removed drain while requests
        # still come.
        def at_min() -> bool:
            v = variant(server)
            return v["autoscaling_status"]["capacity"] == 1 and len(v["replicas"]) == 1

        wait_for(watch(at_min), 60, 0.2, "a scale-in to 1 replica")
        steady.stop()
        assert variant(server)["replicas"][0]["state"] == "ready"

        activities = server.client.scaling_activities("auto")
        assert max(a["to"] for a in activities) == 3
        assert activities[0]["to"] == 1 and activities[0]["from"] > 1
        assert max(seen) <= 3
        statuses = burst.statuses + steady.statuses
        assert statuses[200] > 100 and steady.statuses[200] > 20
        assert burst.errors + steady.errors == [], (burst.errors + steady.errors)[:5]
        assert set(statuses) == {200}
    finally:
        burst.stop()
        steady.stop()
        server.stop()
