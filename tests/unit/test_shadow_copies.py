"""Shadow copies at the gateway (dataplane/shadow.py), with replicas faked at the pool: what is
copied, what is counted, and that production's answer never waits for or shows the shadow's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelyard.dataplane import gateway_metrics as gm
from modelyard.dataplane.bundle import ItemAnswer
from modelyard.dataplane.gateway import Gateway
from modelyard.dataplane.http import Request
from modelyard.dataplane.routing import build_routes
from modelyard.dataplane.shadow import MAX_IN_FLIGHT, agree
from modelyard.metrics.series import SLOT_SHADOW

COMPARED = SLOT_SHADOW["shadow_compared"]


class Replica:
    """A replica's pool: answers ``body`` with ``status``; the shadow's waits for ``gate``."""

    takes_bundles = True

    def __init__(self, body: bytes, status: int = 200, gate: asyncio.Event | None = None):
        self.body, self.status, self.gate = body, status, gate
        self.calls = 0

    async def invoke(self, item: bytes, timeout: float) -> ItemAnswer:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return ItemAnswer(self.status, b"application/json", b"", self.body)


def gateway(tmp_path: Path, percent: float, pools: dict[str, Replica]) -> Gateway:
    gw = Gateway(
        control_url="http://127.0.0.1:9",
        token="t",
        invoke_token=None,
        routes_file=tmp_path / "routes.json",
        max_payload_bytes=1024,
        timeout_s=5,
        sync_interval_s=60,
    )
    variants = [
        {"name": "prod", "weight": 1, "replicas": ["http://prod"], "bundles": True},
        {"name": "shadow", "weight": 0, "replicas": ["http://shadow"], "bundles": True},
    ]
    table = {"e": {"revision": 1, "variants": variants}}
    table["e"]["shadow"] = {"variant": "shadow", "percent": percent}
    gw.routes = build_routes(table, {})
    setattr(gw.upstreams, "pool", lambda address: pools[address.removeprefix("http://")])  # noqa: B010
    return gw


async def invoke(gw: Gateway, n: int, yields: bool = False) -> list[Any]:
    answers = []
    for i in range(n):
        request = Request("POST", "/endpoints/e/invocations", b"", {}, b"[%d]" % i)
        answers.append(await gw(request))
        if yields:  # as a server's loop would between requests: copies run meanwhile
            await asyncio.sleep(0)
    return answers


def test_every_sampled_request_is_copied_and_compared(tmp_path: Path) -> None:
    pools = {"prod": Replica(b'{"y": [1.0]}'), "shadow": Replica(b'{"y": [1.0000000001]}')}
    gw = gateway(tmp_path, 100, pools)

    async def run() -> list[Any]:
        answers = await invoke(gw, 5)
        await asyncio.gather(*gw._copies)
        return answers

    answers = asyncio.run(run())
    assert [a[0] for a in answers] == [200] * 5
    assert all(dict(a[1])[b"x-amzn-invoked-production-variant"] == b"prod" for a in answers)
    assert all(a[2] == b'{"y": [1.0]}' for a in answers)  # production's answer, never the shadow's
    shadow = gw.counts["e"]["shadow"]
    assert shadow[0] == 5 and shadow[COMPARED] == 5 and shadow[COMPARED + 1] == 5
    assert gw.counts["e"]["prod"][0] == 5


def test_production_does_not_wait_for_the_shadow_and_copies_are_bounded(tmp_path: Path) -> None:
    async def run() -> tuple[list[Any], Gateway, Replica]:
        gate = asyncio.Event()
        pools = {"prod": Replica(b"[1]"), "shadow": Replica(b"[2]", gate=gate)}
        gw = gateway(tmp_path, 100, pools)
        answers = await invoke(gw, MAX_IN_FLIGHT + 3)  # every shadow answer is held meanwhile
        shed = gw.counts["e"]["shadow"][COMPARED + 2]
        gate.set()
        await asyncio.gather(*gw._copies)
        assert shed == 3
        return answers, gw, pools["shadow"]

    answers, gw, shadow_replica = asyncio.run(run())
    assert [a[0] for a in answers] == [200] * (MAX_IN_FLIGHT + 3)
    assert shadow_replica.calls == MAX_IN_FLIGHT
    shadow = gw.counts["e"]["shadow"]
    assert shadow[COMPARED] == MAX_IN_FLIGHT and shadow[COMPARED + 1] == 0  # [2] is not [1]


def test_a_failing_shadow_is_counted_as_its_errors_only(tmp_path: Path) -> None:
    pools = {"prod": Replica(b"[1]"), "shadow": Replica(b"boom", status=500)}
    gw = gateway(tmp_path, 100, pools)

    async def run() -> list[Any]:
        answers = await invoke(gw, 3)
        await asyncio.gather(*gw._copies)
        return answers

    assert [a[0] for a in asyncio.run(run())] == [200] * 3
    shadow = gw.counts["e"]["shadow"]
    assert shadow[0] == 3 and shadow[1] == 3  # 424s, in the shadow's own counts
    assert shadow[COMPARED] == 0


def test_sampling_copies_about_the_share_asked(tmp_path: Path) -> None:
    pools = {"prod": Replica(b"[1]"), "shadow": Replica(b"[1]")}
    gw = gateway(tmp_path, 20, pools)

    async def run() -> None:
        await invoke(gw, 1000, yields=True)
        await asyncio.gather(*gw._copies)

    asyncio.run(run())
    assert 140 <= gw.counts["e"]["shadow"][0] <= 260


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (b"[1, 2]", b"[1, 2]", True),
        (b'{"y": [0.30000000000000004]}', b'{"y": [0.3]}', True),
        (b'{"y": [0.3]}', b'{"y": [0.31]}', False),
        (b'{"label": "cat"}', b'{"label": "dog"}', False),
        (b'{"a": 1, "b": 2}', b'{"b": 2, "a": 1}', True),
        (b"[true]", b"[1]", False),
        (b"[1, 2]", b"[1, 2, 3]", False),
        (b"not json", b"not json either", False),
    ],
)
def test_answers_agree_when_equal_or_numerically_close(a: bytes, b: bytes, same: bool) -> None:
    assert agree(a, b) is same


def test_shed_and_compared_reach_prometheus(tmp_path: Path) -> None:
    totals = gm.GatewayTotals()
    counts: gm.Counts = {}
    gm.count(counts, "e", "shadow", 200)
    gm.shadow_copy(counts, "e", "shadow", True)
    gm.shadow_copy(counts, "e", "shadow", None)
    totals.add(counts)
    text = totals.scrape({}).decode()
    assert 'modelyard_gateway_shadow_copies_total{endpoint="e",result="agreed"' in text
    assert 'result="shed"' in text


def test_a_table_refresh_keeps_copies_in_flight_and_the_canarys_upstreams() -> None:
    table: dict[str, Any] = {
        "e": {
            "revision": 1,
            "variants": [{"name": "prod", "weight": 1, "replicas": ["http://p"]}],
            "shadow": {"variant": "prod", "percent": 10},
            "canary": {
                "revision": 2,
                "share": 0.1,
                "variants": [{"name": "new", "weight": 1, "replicas": ["http://n"]}],
            },
        }
    }
    first = build_routes(table, {})
    assert first["e"].shadow is not None and first["e"].canary is not None
    first["e"].shadow.in_flight = 5
    first["e"].canary.variants["new"].replicas[0].outstanding = 3
    table["e"]["shadow"]["percent"] = 30
    again = build_routes(table, first)
    assert again["e"].shadow is first["e"].shadow  # still counting its copies in flight
    assert again["e"].shadow.percent == 30
    assert again["e"].canary is not None
    assert again["e"].canary.variants["new"].replicas[0].outstanding == 3
