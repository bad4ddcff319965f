"""A shadow variant on a real server: it gets a copy of its share of the requests, its answers
are never returned, a slow shadow does not slow production, `shadow report` measures both sides
and their agreement, and `shadow promote` rolls the shadow out as the production variant."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.support import ServerProcess, wait_for

PRODUCTION = """
import time

class Predictor:
    def load(self, model_dir):
        pass

    def predict(self, inputs):
        time.sleep(0.01)
        x = float(inputs[0][0])
        return {"y": x * 2}
"""
#: agrees with production below 5, answers differently above; takes 40 ms a request
CANDIDATE = """
import time

class Predictor:
    def load(self, model_dir):
        pass

    def predict(self, inputs):
        time.sleep(0.04)
        x = float(inputs[0][0])
        return {"y": x * 2 if x < 5 else x * 2 + 1}
"""


class Load:
    """One thread invoking the endpoint with x = 0..9 in turn until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.variants: Counter[str] = Counter()
        self.errors: list[str] = []
        self.answers: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with httpx.Client(trust_env=False, timeout=30) as http:
            while not self._stop.is_set():
                x = float(i % 10)
                i += 1
                try:
                    resp = http.post(self.url, json={"instances": [[x]]})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                if resp.status_code != 200:
                    self.errors.append(f"{resp.status_code}: {resp.text[:200]}")
                    continue
                self.variants[resp.headers["x-amzn-invoked-production-variant"]] += 1
                self.answers.append((x, resp.json()["predictions"]["y"]))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("shadow")
    models = []
    for name, source in (("prod", PRODUCTION), ("cand", CANDIDATE)):
        (root / name).mkdir()
        (root / name / "model.py").write_text(source)
        spec = {"runtime": "python", "predictor": "model:Predictor", "artifact": str(root / name)}
        models.append({"kind": "Model", "name": name, "spec": spec})
    server = ServerProcess(root / "state")
    endpoint = {
        "kind": "Endpoint",
        "name": "shadowed",
        "spec": {
            "variants": [
                {"name": "current", "model": "prod"},
                {"name": "candidate", "model": "cand"},
            ],
            "shadow": {"variant": "candidate", "sampling_percent": 20},
        },
    }
    server.client.apply([*models, endpoint])
    server.client.wait_endpoint("shadowed", timeout_s=60)
    try:
        yield server
    finally:
        server.stop()


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", *args, "--state-dir", str(server.state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_shadow_gets_copies_that_are_measured_and_never_returned(
    server: ServerProcess,
) -> None:
    url = f"{server.gateway_url}/endpoints/shadowed/invocations"

    def compared_enough() -> dict[str, Any] | None:
        view = server.client.shadow_report("shadowed", since_s=300)
        return view if view["agreement"]["compared"] >= 80 else None

    with Load(url) as load:
        report = wait_for(compared_enough, 90, 0.5, "shadow copies in the report")
    assert load.errors == []
    assert set(load.variants) == {"current"}  # production answers every request
    assert all(y == x * 2 for x, y in load.answers)  # with production's prediction

    prod, shadow = report["production"], report["shadow"]
    # Copies of about a fifth of the requests (a copy shed when too many were in flight is a
    # copy too), compared once the shadow answered.
    share = (shadow["invocations"] + report["copies_shed"]) / prod["invocations"]
    assert 0.1 <= share <= 0.3, (shadow["invocations"], report["copies_shed"], prod)
    assert report["agreement"]["compared"] <= shadow["invocations"]
    assert 0.25 <= report["agreement"]["rate"] <= 0.75  # it agrees for x < 5 only
    # The shadow's 40 ms are its own: production's latency does not include them.
    assert shadow["model_latency_ms"]["avg"] >= 38
    assert prod["latency_ms"]["avg"] < shadow["model_latency_ms"]["avg"] - 10
    assert report["latency_delta_ms"]["model_latency_ms"]["avg"] > 10
    assert shadow["errors_4xx"] == shadow["errors_5xx"] == 0

    shown = cli(server, "shadow", "report", "shadowed", "--since", "5m")
    assert shown.returncode == 0, shown.stderr
    assert "shadow candidate gets 20 % of the requests of current" in shown.stdout
    assert "agreement:" in shown.stdout
    as_json = json.loads(cli(server, "shadow", "report", "shadowed", "-o", "json").stdout)
    assert as_json["shadow_variant"] == "candidate"


def test_the_gateway_exposes_shadow_copies_to_prometheus(server: ServerProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"{server.gateway_url}/endpoints/shadowed/invocations"
    with Load(url):

        def scraped() -> dict[str, float] | None:
            text = httpx.get(f"{server.gateway_url}/metrics", trust_env=False).text
            found: dict[str, float] = {}
            for family in text_string_to_metric_families(text):
                if family.name == "modelyard_gateway_shadow_copies":
                    for sample in family.samples:
                        found[sample.labels["result"]] = found.get(sample.labels["result"], 0) + (
                            sample.value
                        )
            return found if found.get("agreed", 0) > 0 and found.get("disagreed", 0) > 0 else None

        results = wait_for(scraped, 30, 0.5, "shadow copies in the scrape")
    assert set(results) == {"agreed", "disagreed", "shed"}


def test_promoting_the_shadow_rolls_it_out_as_the_production_variant(
    server: ServerProcess,
) -> None:
    url = f"{server.gateway_url}/endpoints/shadowed/invocations"
    with Load(url) as load:
        ran = cli(server, "shadow", "promote", "shadowed")
        assert ran.returncode == 0, ran.stderr + ran.stdout
        assert "candidate serves all traffic" in ran.stdout
        before = load.variants["candidate"]
        wait_for(lambda: load.variants["candidate"] > before + 5, 30, what="the new variant")
    assert load.errors == []
    view = server.client.describe_endpoint("shadowed")
    assert [v["name"] for v in view["variants"]] == ["candidate"]
    assert view["spec"]["shadow"] is None
    latest = server.client.deployments("shadowed")[0]
    assert latest["status"] == "Succeeded" and latest["changes"][0] == "shadow candidate promoted"
    refused = cli(server, "shadow", "report", "shadowed")
    assert refused.returncode != 0 and "has no shadow variant" in refused.stderr
