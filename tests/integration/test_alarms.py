"""Alarms on a real server: traffic puts an alarm in ALARM and its end back in OK, each change
told to a webhook receiver (signed with the alarm's secret), shown by `modelyard alarms`; bad
specs are refused with 400 naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tests.support import ServerProcess, make_python_predictor, wait_for

from modelyard import webhooks
from modelyard.alarms.evaluator import AlarmEvaluator
from modelyard.controlplane.services import alarms
from modelyard.controlplane.services.apply import apply_documents
from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.controlplane.store.repo import Store
from modelyard.metrics.series import Point
from modelyard.spec import parse_documents


class Receiver:
    """A webhook receiver on 127.0.0.1: keeps each request's signature header and raw body."""

    def __init__(self) -> None:
        self.received: list[tuple[str | None, bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.headers.get(webhooks.SIGNATURE_HEADER), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def states(self) -> list[str]:
        return [json.loads(body)["new_state"] for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("alarms")
    make_python_predictor(root / "py")
    server = ServerProcess(root / "state")
    try:
        server.client.apply(
            [
                {
                    "kind": "Model",
                    "name": "echo",
                    "spec": {
                        "artifact": str(root / "py"),
                        "runtime": "python",
                        "predictor": "echo_predictor:Predictor",
                    },
                },
                {
                    "kind": "Endpoint",
                    "name": "echo",
                    "spec": {"variants": [{"name": "primary", "model": "echo"}]},
                },
            ]
        )
        server.client.wait_endpoint("echo", timeout_s=60)
        yield server
    finally:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def cli(server: ServerProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", *args, "--state-dir", str(server.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def alarm_view(server: ServerProcess) -> dict[str, Any]:
    view: dict[str, Any] = server.client._call("GET", "/api/v1/alarms/busy")
    return view


def test_traffic_raises_the_alarm_and_its_end_clears_it(
    server: ServerProcess, receiver: Receiver
) -> None:
    hooks = {"alarm": [f"{receiver.url}/alarm"], "ok": [f"{receiver.url}/ok"]}
    spec = {
        "metric": "invocations",
        "dimensions": {"endpoint": "echo"},
        "statistic": "sum",
        "period_s": 10,
        "evaluation_periods": 1,
        "comparison": "greater_than",
        "threshold": 20,
        "treat_missing_data": "not_breaching",
        "actions": hooks,
        "description": "more than 2 requests a second",
    }
    (applied,) = server.client.apply([{"kind": "Alarm", "name": "busy", "spec": spec}])
    assert applied == {"kind": "Alarm", "name": "busy", "action": "created"}
    # No traffic yet: no data, which counts as not breaching; evaluated at once on apply.
    wait_for(lambda: alarm_view(server)["state"] == "OK", 10, 0.2, "the new alarm to be OK")

    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(trust_env=False, timeout=10) as http:
            while not stop.is_set():
                http.post(
                    f"{server.gateway_url}/endpoints/echo/invocations",
                    json="ping",
                )
                stop.wait(0.02)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        raised = wait_for(
            lambda: (view := alarm_view(server))["state"] == "ALARM" and view,
            30,
            0.2,
            "the alarm to go off under traffic",
        )
    finally:
        stop.set()
        sender.join()
    assert raised["reason"].startswith("1 of the last 1 period (10 s) had sum invocations > 20.0")
    cleared = wait_for(
        lambda: (view := alarm_view(server))["state"] == "OK" and view,
        30,
        0.2,
        "the alarm to clear once traffic stopped",
    )
    assert cleared["reason"] == (
        "0 of the last 1 period (10 s) had sum invocations > 20.0: no data "
        "(1 needed for ALARM; no data counts as not breaching)"
    )

    # The receiver heard every change (INSUFFICIENT_DATA → OK, → ALARM, → OK), signed.
    wait_for(lambda: len(receiver.received) == 3, 10, 0.1, "three webhooks")
    assert receiver.states() == ["OK", "ALARM", "OK"]
    secret = cleared["webhook_secret"]
    for header, body in receiver.received:
        assert webhooks.verify(secret, header, body)
        assert not webhooks.verify("not the secret", header, body)
    went_off = json.loads(receiver.received[1][1])
    assert went_off["alarm"] == "busy" and went_off["endpoint"] == "echo"
    assert (went_off["old_state"], went_off["reason"]) == ("OK", raised["reason"])
    history = server.client._call("GET", "/api/v1/alarms/busy/history")["items"]
    assert [(t["old_state"], t["new_state"]) for t in history] == [
        ("ALARM", "OK"),
        ("OK", "ALARM"),
        ("INSUFFICIENT_DATA", "OK"),
    ]

    # The CLI shows the same.
    listed = cli(server, "alarms", "list")
    assert "busy" in listed and "OK" in listed and "sum invocations > 20.0" in listed
    described = cli(server, "alarms", "describe", "busy")
    assert secret in described and "ALARM -> OK" in described
    assert f"{receiver.url}/alarm" in described and "delivered" in described
    rows = json.loads(cli(server, "alarms", "history", "busy", "-o", "json"))
    assert [t["new_state"] for t in rows] == ["OK", "ALARM", "OK"]
    assert "INSUFFICIENT_DATA" in cli(server, "alarms", "history", "busy")

    # A changed spec keeps the state and the history.
    (changed,) = server.client.apply(
        [{"kind": "Alarm", "name": "busy", "spec": {**spec, "threshold": 1000}}]
    )
    assert changed["action"] == "updated"
    assert alarm_view(server)["state"] == "OK" and len(alarm_view(server)["history"]) == 3
    assert cli(server, "alarms", "delete", "busy").strip() == "alarm/busy deleted"
    assert server.client._call("GET", "/api/v1/alarms")["items"] == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "qps"}, "documents[0].spec.metric"),
        ({"statistic": "p99"}, "documents[0].spec.statistic"),
        ({"period_s": 25}, "documents[0].spec.period_s"),
        ({"datapoints_to_alarm": 2}, "documents[0].spec.datapoints_to_alarm"),
        ({"actions": {"alarm": ["nope"]}}, "documents[0].spec.actions.alarm[0]"),
    ],
)
def test_a_bad_alarm_is_refused_with_400_naming_the_field(
    server: ServerProcess, change: dict[str, Any], field: str
) -> None:
    spec = {
        "metric": "invocations",
        "dimensions": {"endpoint": "echo"},
        "statistic": "sum",
        "comparison": "greater_than",
        "threshold": 1,
        **change,
    }
    token = (server.state_dir / "token").read_text().strip()
    resp = server.http.post(
        f"{server.api_url}/api/v1/apply",
        json={"documents": [{"kind": "Alarm", "name": "bad", "spec": spec}]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["field"] == field
    missing = server.http.get(
        f"{server.api_url}/api/v1/alarms/bad", headers={"Authorization": f"Bearer {token}"}
    )
    assert missing.status_code == 404


def test_the_cli_says_which_alarm_is_unknown(server: ServerProcess) -> None:
    command = [sys.executable, "-m", "modelyard.cli.main", "alarms", "describe", "nope"]
    done = subprocess.run(
        [*command, "--state-dir", str(server.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no alarm named 'nope'" in done.stderr


@pytest.mark.postgres
def test_transitions_and_history_on_postgresql(fresh_postgres_url: str) -> None:
    """The evaluator's conditional write and the history queries on PostgreSQL."""
    end = 1_800_000_000.0
    store = Store(fresh_postgres_url)
    try:
        store.migrate()
        spec = {
            "metric": "invocations",
            "dimensions": {"endpoint": "ep"},
            "statistic": "sum",
            "period_s": 10,
            "comparison": "greater_than",
            "threshold": 5,
            "treat_missing_data": "not_breaching",
            "actions": {"alarm": ["http://hooks.test/a"]},
        }
        apply_documents(store, parse_documents([{"kind": "Alarm", "name": "a", "spec": spec}]), end)
        point = Point(end - 10)
        point.add_events(9)
        with store.tx() as repo:
            repo.add_metric_points([(SeriesKey("invocations", "ep", "v", ""), 10, point)])
            seen = repo.get_alarm("a")
        evaluator = AlarmEvaluator(store)
        assert evaluator.tick(end + 5) == 1
        assert evaluator.tick(end + 15) == 1
        with store.tx() as repo:
            assert seen is not None
            assert repo.record_evaluation(seen, "ALARM", "stale", end + 16) is False
        history = alarms.alarm_history(store, "a", 10)["items"]
        assert [t["new_state"] for t in history] == ["OK", "ALARM"]
        assert [d["url"] for d in alarms.describe_alarm(store, "a")["deliveries"]] == [
            "http://hooks.test/a"
        ]
        alarms.delete_alarm(store, "a")
        assert alarms.list_alarms(store) == []
    finally:
        store.close()
