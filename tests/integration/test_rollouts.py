"""Deployments under constant load on a real server: all at once, canary, linear, rolling, an
alarm rolling a canary back, a control-plane restart in the middle of a rollout, and an abort.

Each test updates an endpoint from variant ``blue`` (model ``v1``) to variant ``green`` (model
``v2``) while threads invoke it without pause, and checks that not one request failed, the share
of traffic each step sent to green (from the ``X-Amzn-Invoked-Production-Variant`` header of the
answers between the step's start and the next one, as the deployment's log dates them), and the
final state. Waits are seconds here; the spec's ranges allow that (wait_s is 0..3600).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support import ServerProcess, wait_for

PREDICTOR = """
import time

class Predictor:
    def load(self, model_dir):
        pass

    def predict(self, inputs):
        time.sleep({delay})
        return {{"version": "{version}"}}
"""
#: route changes reach the gateway within a sync or two (0.25 s each; more on a loaded machine):
#: answers this close to a step's start or end are not counted toward its share
MARGIN_S = 1.5


class Load:
    """Threads that invoke an endpoint one request after another until stopped, recording when
    each answer came, its status and the variant that answered."""

    def __init__(self, url: str, threads: int = 2) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    resp = http.post(self.url, json={"instances": [[1.0]]})
                    status = resp.status_code
                    variant = resp.headers.get("x-amzn-invoked-production-variant", "")
                    detail = resp.text[:200]
                except httpx.HTTPError as exc:
                    status, variant, detail = 0, "", repr(exc)
                with self._lock:
                    self.answers.append((time.time(), status, variant))
                    if status != 200:
                        self.errors.append(f"{status}: {detail}")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.answers) > 10, 10, what="the first answers")
        first = self.answers[0][0]
        # answers from before the change, outside its margin
        wait_for(lambda: self.answers[-1][0] - first > 2 * MARGIN_S, 10, what="more answers")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def count(self) -> int:
        return len(self.answers)

    def wait_past(self, moment: float) -> None:
        """Until answers have come for a while after ``moment`` (past its margin)."""
        wait_for(lambda: self.answers[-1][0] > moment + 3 * MARGIN_S, 15, what="answers after it")

    def share(self, variant: str, start: float, end: float) -> tuple[float, int]:
        """The share of answers from ``variant`` between ``start`` and ``end`` (with margins)."""
        with self._lock:
            seen = [v for t, _, v in self.answers if start + MARGIN_S <= t <= end - MARGIN_S]
        if not seen:
            return 0.0, 0
        return sum(v == variant for v in seen) / len(seen), len(seen)

    def variants_after(self, start: float) -> set[str]:
        with self._lock:
            return {v for t, _, v in self.answers if t >= start + MARGIN_S}

    def variants_before(self, end: float) -> set[str]:
        with self._lock:
            return {v for t, _, v in self.answers if t <= end - MARGIN_S}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("rollouts")
    for version, delay in (("v1", 0.0), ("v2", 0.0), ("slow", 0.04)):
        folder = root / version
        folder.mkdir()
        (folder / "model.py").write_text(PREDICTOR.format(version=version, delay=delay))
    server = ServerProcess(root / "state")
    spec = {"runtime": "python", "predictor": "model:Predictor"}
    server.client.apply(
        [
            {"kind": "Model", "name": name, "spec": {**spec, "artifact": str(root / name)}}
            for name in ("v1", "v2", "slow")
        ]
    )
    try:
        yield server
    finally:
        server.stop()


def endpoint(name: str, variant: str, model: str, count: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Endpoint",
        "name": name,
        "spec": {
            "variants": [{"name": variant, "model": model, "instance_count": count}],
            **extra,
        },
    }


def create(server: ServerProcess, name: str, count: int = 1) -> None:
    server.client.apply([endpoint(name, "blue", "v1", count)])
    server.client.wait_endpoint(name, timeout_s=60)


def api(server: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.client.token}"}
    return server.http.request(method, f"{server.api_url}/api/v1{path}", headers=headers, **kwargs)


def rollout_status(server: ServerProcess, name: str) -> dict[str, Any]:
    resp = api(server, "GET", f"/endpoints/{name}/rollout")
    assert resp.status_code == 200, resp.text
    view: dict[str, Any] = resp.json()
    return view


def finished(server: ServerProcess, name: str, timeout_s: float = 90) -> dict[str, Any]:
    """The endpoint's latest deployment once it has ended."""

    def ended() -> dict[str, Any] | None:
        view = rollout_status(server, name)["rollout"]
        return view if view["status"] != "InProgress" else None

    result: dict[str, Any] = wait_for(ended, timeout_s, 0.2, "the rollout to end")
    return result


def log_times(rollout: dict[str, Any], text: str) -> list[float]:
    """When the deployment's log says ``text`` (in order)."""
    return [entry["at"] for entry in rollout["log"] if text in entry["message"]]


def replica_revisions(server: ServerProcess, name: str) -> list[tuple[int, str]]:
    view = server.client.describe_endpoint(name)
    replicas = [r for v in view["variants"] for r in v["replicas"]] + view["other_replicas"]
    return sorted((r["revision"], r["state"]) for r in replicas)


def assert_no_failures(load: Load) -> None:
    assert load.errors == [], f"{len(load.errors)} requests failed: {load.errors[:5]}"


def test_default_is_all_at_once_once_the_new_fleet_is_ready(server: ServerProcess) -> None:
    create(server, "all")
    url = f"{server.gateway_url}/endpoints/all/invocations"
    with Load(url) as load:
        server.client.apply([endpoint("all", "green", "v2")])
        rollout = finished(server, "all")
        wait_for(lambda: replica_revisions(server, "all") == [(2, "ready")], 30, what="drained")
        load.wait_past(rollout["finished_at"])
    assert_no_failures(load)
    assert rollout["status"] == "Succeeded" and rollout["mode"] == "blue_green"
    (served_at,) = log_times(rollout, "serves all traffic")
    assert load.variants_before(served_at) == {"blue"}
    assert load.variants_after(served_at) == {"green"}


def test_canary_sends_the_canary_share_then_everything_and_keeps_blue_for_the_wait(
    server: ServerProcess,
) -> None:
    create(server, "canary")
    policy = {
        "blue_green": {
            "traffic": {
                "type": "canary",
                "wait_s": 7,
                "canary_size": {"type": "capacity_percent", "value": 25},
            },
            "termination_wait_s": 3,
        }
    }
    url = f"{server.gateway_url}/endpoints/canary/invocations"
    with Load(url) as load:
        server.client.apply([endpoint("canary", "green", "v2", deployment=policy)])
        # While green bakes at 100 % the old fleet still runs.
        wait_for(
            lambda: rollout_status(server, "canary")["rollout"]["phase"] == "terminating",
            60,
            0.2,
            "the termination wait",
        )
        assert (1, "ready") in replica_revisions(server, "canary")
        rollout = finished(server, "canary")
        load.wait_past(rollout["finished_at"])
        wait_for(lambda: replica_revisions(server, "canary") == [(2, "ready")], 30, what="drain")
    assert_no_failures(load)
    assert rollout["status"] == "Succeeded"
    assert [s["share"] for s in rollout["steps"]] == [0.25, 1.0]
    (canary_at,) = log_times(rollout, "step 1 of 2: 25 %")
    (promoted_at,) = log_times(rollout, "step 2 of 2: 100 %")
    share, seen = load.share("green", canary_at, promoted_at)
    assert seen > 100 and 0.12 <= share <= 0.38, (share, seen)
    (served_at,) = log_times(rollout, "serves all traffic")
    assert load.variants_after(served_at) == {"green"}
    assert promoted_at - canary_at >= 7  # the canary baked its wait_s


def test_linear_moves_traffic_in_equal_steps(server: ServerProcess) -> None:
    create(server, "linear")
    policy = {
        "blue_green": {
            "traffic": {
                "type": "linear",
                "wait_s": 6,
                "linear_step_size": {"type": "capacity_percent", "value": 34},
            }
        }
    }
    url = f"{server.gateway_url}/endpoints/linear/invocations"
    with Load(url) as load:
        server.client.apply([endpoint("linear", "green", "v2", deployment=policy)])
        rollout = finished(server, "linear")
        load.wait_past(rollout["finished_at"])
    assert_no_failures(load)
    assert rollout["status"] == "Succeeded"
    assert [s["share"] for s in rollout["steps"]] == [0.34, 0.68, 1.0]
    (first,) = log_times(rollout, "step 1 of 3")
    (second,) = log_times(rollout, "step 2 of 3")
    (third,) = log_times(rollout, "step 3 of 3")
    for start, end, expected in ((first, second, 0.34), (second, third, 0.68)):
        share, seen = load.share("green", start, end)
        assert seen > 80 and abs(share - expected) <= 0.18, (expected, share, seen)
    (served_at,) = log_times(rollout, "serves all traffic")
    assert load.variants_after(served_at) == {"green"}


def test_rolling_replaces_the_fleet_in_batches(server: ServerProcess) -> None:
    create(server, "rolling", count=2)
    policy = {"rolling": {"max_batch": {"type": "capacity_percent", "value": 50}, "wait_s": 6}}
    url = f"{server.gateway_url}/endpoints/rolling/invocations"
    with Load(url) as load:
        server.client.apply([endpoint("rolling", "green", "v2", count=2, deployment=policy)])
        rollout = finished(server, "rolling")
        load.wait_past(rollout["finished_at"])
        wait_for(
            lambda: replica_revisions(server, "rolling") == [(2, "ready"), (2, "ready")],
            30,
            what="the old replicas drained",
        )
    assert_no_failures(load)
    assert rollout["status"] == "Succeeded" and rollout["mode"] == "rolling"
    (half_at,) = log_times(rollout, "batch 1 of 2 ready")
    (second_at,) = log_times(rollout, "batch 2 of 2: starting")
    share, seen = load.share("green", half_at, second_at)  # one replica of each
    assert seen > 80 and 0.3 <= share <= 0.7, (share, seen)
    (done_at,) = log_times(rollout, "batch 2 of 2 ready")
    assert load.variants_after(done_at) == {"green"}


def test_an_alarm_in_the_middle_of_a_canary_rolls_it_back(server: ServerProcess) -> None:
    create(server, "guarded")
    alarm = {
        "kind": "Alarm",
        "name": "green-slow",
        "spec": {
            "metric": "latency_ms",
            "dimensions": {"endpoint": "guarded", "variant": "green"},
            "statistic": "avg",
            "period_s": 10,
            "evaluation_periods": 1,
            "comparison": "greater_than",
            "threshold": 20,
            "treat_missing_data": "not_breaching",
        },
    }
    policy = {
        "blue_green": {
            "traffic": {
                "type": "canary",
                "wait_s": 120,
                "canary_size": {"type": "capacity_percent", "value": 50},
            }
        },
        "auto_rollback": {"alarms": ["green-slow"]},
    }
    url = f"{server.gateway_url}/endpoints/guarded/invocations"
    with Load(url) as load:
        server.client.apply([alarm, endpoint("guarded", "green", "slow", deployment=policy)])
        rollout = finished(server, "guarded", timeout_s=120)
        wait_for(lambda: replica_revisions(server, "guarded") == [(1, "ready")], 30, what="drain")
        load.wait_past(rollout["finished_at"])
    assert_no_failures(load)
    assert rollout["status"] == "RolledBack"
    assert rollout["alarm"] == "green-slow"
    assert "alarm green-slow is in ALARM" in rollout["reason"]
    (canary_at,) = log_times(rollout, "step 1 of 2: 50 %")
    assert rollout["finished_at"] - canary_at < 120  # in the middle of the canary's bake
    share, seen = load.share("green", canary_at, rollout["finished_at"])
    assert seen > 50 and 0.3 <= share <= 0.7, (share, seen)
    assert load.variants_after(rollout["finished_at"]) == {"blue"}
    view = server.client.describe_endpoint("guarded")
    assert view["status"] == "InService" and view["active_revision"] == 1
    assert "rolled back" in view["message"]
    states = {r["number"]: r["state"] for r in view["revisions"]}
    assert states[2] == "rolled_back"


def test_a_rollout_goes_on_after_a_control_plane_restart(server: ServerProcess) -> None:
    create(server, "restart")
    policy = {
        "blue_green": {
            "traffic": {
                "type": "canary",
                "wait_s": 8,
                "canary_size": {"type": "capacity_percent", "value": 50},
            }
        }
    }
    url = f"{server.gateway_url}/endpoints/restart/invocations"
    with Load(url) as load:
        server.client.apply([endpoint("restart", "green", "v2", deployment=policy)])
        wait_for(
            lambda: rollout_status(server, "restart")["rollout"]["phase"] == "shifting",
            60,
            0.2,
            "the canary step",
        )
        control = server.child("modelyard.controlplane.main")
        control.kill()
        control.wait(10)
        wait_for(
            lambda: server.child("modelyard.controlplane.main").pid != control.pid,
            30,
            what="the control plane to be restarted",
        )
        rollout = wait_for(lambda: finished(server, "restart"), 90, what="the rollout to end")
        load.wait_past(rollout["finished_at"])
    assert_no_failures(load)
    assert rollout["status"] == "Succeeded"
    (canary_at,) = log_times(rollout, "step 1 of 2: 50 %")
    (promoted_at,) = log_times(rollout, "step 2 of 2: 100 %")
    assert promoted_at - canary_at >= 8  # the bake counted across the restart, not reset
    share, seen = load.share("green", canary_at, promoted_at)
    assert seen > 50 and 0.3 <= share <= 0.7, (share, seen)
    (served_at,) = log_times(rollout, "serves all traffic")
    assert load.variants_after(served_at) == {"green"}


def test_an_abort_sends_everything_back_and_an_update_meanwhile_is_refused(
    server: ServerProcess,
) -> None:
    create(server, "abort")
    policy = {
        "blue_green": {
            "traffic": {
                "type": "canary",
                "wait_s": 300,
                "canary_size": {"type": "capacity_percent", "value": 50},
            }
        }
    }
    url = f"{server.gateway_url}/endpoints/abort/invocations"
    with Load(url) as load:
        server.client.apply([endpoint("abort", "green", "v2", deployment=policy)])
        running = wait_for(
            lambda: (r := rollout_status(server, "abort")["rollout"])["phase"] == "shifting" and r,
            60,
            0.2,
            "the canary step",
        )
        update = [endpoint("abort", "green", "v1", deployment=policy)]
        resp = api(server, "POST", "/apply", json={"documents": update})
        assert resp.status_code == 409
        assert resp.json()["error"]["rollout"] == running["id"]
        assert f"rollout {running['id']}" in resp.json()["error"]["message"]
        abort = api(server, "POST", "/endpoints/abort/rollout/abort")
        assert abort.status_code == 200, abort.text
        rollout = finished(server, "abort")
        load.wait_past(rollout["finished_at"])
        wait_for(lambda: replica_revisions(server, "abort") == [(1, "ready")], 30, what="drain")
    assert_no_failures(load)
    assert rollout["status"] == "Aborted" and rollout["reason"].startswith("aborted by")
    assert load.variants_after(rollout["finished_at"]) == {"blue"}
    assert server.client.describe_endpoint("abort")["active_revision"] == 1


def test_a_new_revision_that_never_gets_ready_fails_before_any_traffic_moves(
    server: ServerProcess, tmp_path: Path
) -> None:
    create(server, "broken")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.py").write_text("class Predictor:\n    def load(self, d):\n        1 / 0\n")
    model = {
        "kind": "Model",
        "name": "bad",
        "spec": {"runtime": "python", "predictor": "model:Predictor", "artifact": str(bad)},
    }
    policy = {
        "blue_green": {
            "traffic": {
                "type": "canary",
                "wait_s": 5,
                "canary_size": {"type": "capacity_percent", "value": 50},
            }
        }
    }
    url = f"{server.gateway_url}/endpoints/broken/invocations"
    with Load(url) as load:
        server.client.apply([model, endpoint("broken", "green", "bad", deployment=policy)])
        rollout = finished(server, "broken")
        load.wait_past(rollout["finished_at"])
    assert_no_failures(load)
    assert rollout["status"] == "Failed" and rollout["steps"] == []
    assert load.variants_after(rollout["started_at"] - 2 * MARGIN_S) == {"blue"}
    view = server.client.describe_endpoint("broken")
    assert view["active_revision"] == 1 and view["status"] == "InService"


def test_an_aborted_rolling_update_restores_the_old_fleet_in_batches(
    server: ServerProcess,
) -> None:
    create(server, "unroll", count=2)
    policy = {
        "rolling": {
            "max_batch": {"type": "capacity_percent", "value": 50},
            "wait_s": 300,
            "rollback_max_batch": {"type": "instance_count", "value": 1},
        }
    }
    url = f"{server.gateway_url}/endpoints/unroll/invocations"
    with Load(url) as load:
        server.client.apply([endpoint("unroll", "green", "v2", count=2, deployment=policy)])
        wait_for(
            lambda: rollout_status(server, "unroll")["rollout"]["phase"] == "baking",
            60,
            0.2,
            "the first batch to bake",
        )
        # one replica of each (the other old one drains): traffic is split between them
        wait_for(
            lambda: replica_revisions(server, "unroll") == [(1, "ready"), (2, "ready")],
            30,
            what="one replica of each",
        )
        abort = api(server, "POST", "/endpoints/unroll/rollout/abort")
        assert abort.status_code == 200, abort.text
        statuses = set()

        def ended() -> dict[str, Any] | None:
            statuses.add(server.client.describe_endpoint("unroll")["status"])
            view = rollout_status(server, "unroll")["rollout"]
            return view if view["status"] != "InProgress" else None

        rollout = wait_for(ended, 60, 0.1, "the rollback to end")
        wait_for(
            lambda: replica_revisions(server, "unroll") == [(1, "ready"), (1, "ready")],
            30,
            what="the old fleet restored",
        )
        load.wait_past(rollout["finished_at"])
    assert_no_failures(load)
    assert rollout["status"] == "Aborted"
    assert log_times(rollout, "rolling back: aborted by")
    assert "RollingBack" in statuses  # the endpoint said so while the old fleet came back
    assert server.client.describe_endpoint("unroll")["status"] == "InService"
    assert load.variants_after(rollout["finished_at"]) == {"blue"}


def test_who_asked_is_recorded_whatever_the_login_name(server: ServerProcess) -> None:
    from modelyard.client import Client

    with Client(state_dir=server.state_dir, user="José Ñúñez") as client:
        client.apply([endpoint("who", "blue", "v1")])
        client.wait_endpoint("who", timeout_s=60)
        (created,) = client.deployments("who")
    assert created["by"] == "José Ñúñez" and created["status"] == "Succeeded"
