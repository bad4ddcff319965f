"""Bundles: several invocations in one gateway-to-replica round trip, each answered as its own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from tests.support import load_python_predictor, serving

from modelyard.dataplane import bundle, codecs
from modelyard.dataplane.gateway import Gateway
from modelyard.dataplane.http import Answer, HttpServer, Request
from modelyard.dataplane.modelserver import ReplicaApp
from modelyard.dataplane.routing import build_routes
from modelyard.dataplane.upstream import Pool, UpstreamDisconnected
from modelyard.errors import InvalidInputError
from modelyard.runtimes.sklearn import SklearnRuntime
from modelyard.spec import ModelSpec

X, Y = make_classification(n_samples=100, n_features=4, random_state=0)


@pytest.fixture
def sklearn_runtime(tmp_path: Path) -> SklearnRuntime:
    path = tmp_path / "lr.joblib"
    joblib.dump(LogisticRegression().fit(X, Y), path)
    runtime = SklearnRuntime(
        ModelSpec(runtime="sklearn", artifact=str(path), method="predict_proba")
    )
    runtime.load(path)
    return runtime


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def post_bundle(app: ReplicaApp, items: list[bytes]) -> httpx.Response:
    """``POST /bundle`` of ``items`` to ``app`` on a real socket."""

    async def scenario() -> httpx.Response:
        async with serving(app) as client:
            headers = {"Content-Type": bundle.CONTENT_TYPE.decode()}
            return await client.post("/bundle", content=b"".join(items), headers=headers)

    return run(scenario())


def rows(i: int, n: int = 1) -> bytes:
    return json.dumps({"instances": X[i : i + n].tolist()}).encode()


def test_items_and_answers_survive_the_wire_format() -> None:
    items = [
        bundle.encode_item(b"application/json", b"", b"", b"[1]"),
        bundle.encode_item(b"text/csv", b"text/csv", b"trace=7", b"1,2\n3,4\n"),
        bundle.encode_item(b"", b"", b"", b""),
    ]
    decoded = bundle.decode_items(b"".join(items))
    assert [(i.content_type, i.accept, i.attrs, i.body) for i in decoded] == [
        (b"application/json", b"", b"", b"[1]"),
        (b"text/csv", b"text/csv", b"trace=7", b"1,2\n3,4\n"),
        (b"", b"", b"", b""),
    ]
    answers = bundle.encode_answer(200, b"text/csv", b"a=1", b"0.5\n") + bundle.encode_answer(
        424, b"application/json", b"", b'{"error": {}}'
    )
    back = bundle.decode_answers(answers)
    assert [(a.status, a.content_type, a.attrs, a.body) for a in back] == [
        (200, b"text/csv", b"a=1", b"0.5\n"),
        (424, b"application/json", b"", b'{"error": {}}'),
    ]


@pytest.mark.parametrize("cut", [3, 12, 14])
def test_a_truncated_bundle_is_invalid_input(cut: int) -> None:
    whole = bundle.encode_item(b"application/json", b"", b"", b"[1, 2, 3]")
    with pytest.raises(InvalidInputError):
        bundle.decode_items(whole[:cut])
    with pytest.raises(ValueError):
        bundle.decode_answers(bundle.encode_answer(200, b"t", b"", b"body")[:cut])


@pytest.mark.parametrize("batching", [None, {"max_batch_size": 16, "max_delay_ms": 1}])
def test_the_replica_answers_each_item_as_if_it_came_alone(
    sklearn_runtime: SklearnRuntime, batching: dict[str, Any] | None
) -> None:
    app = ReplicaApp(sklearn_runtime, batching)
    csv_body = ",".join(map(str, X[2].tolist())).encode()
    items = [
        bundle.encode_item(b"application/json", b"", b"", rows(0, 2)),
        bundle.encode_item(b"text/csv", b"text/csv", b"trace=7", csv_body),
        bundle.encode_item(b"application/json", b"", b"", b'{"instances": [[1, 2]]}'),
        bundle.encode_item(b"application/json", b"application/xml", b"", rows(3)),
        bundle.encode_item(b"application/json", b"", b"", rows(4)),
    ]

    response = post_bundle(app, items)
    assert response.status_code == 200
    answers = bundle.decode_answers(response.content)
    proba = sklearn_runtime.estimator.predict_proba
    assert [a.status for a in answers] == [200, 200, 400, 415, 200]
    np.testing.assert_allclose(json.loads(answers[0].body)["predictions"], proba(X[0:2]))
    assert (answers[1].content_type, answers[1].attrs) == (b"text/csv", b"trace=7")
    np.testing.assert_allclose([float(v) for v in answers[1].body.split(b",")], proba(X[2:3])[0])
    assert b"expected 4 features" in answers[2].body
    assert b"application/xml" in answers[3].body
    np.testing.assert_allclose(json.loads(answers[4].body)["predictions"], proba(X[4:5]))


def test_a_malformed_bundle_is_refused_with_400(sklearn_runtime: SklearnRuntime) -> None:
    response = post_bundle(ReplicaApp(sklearn_runtime), [b"\x00\x00\x00\x09xx"])
    assert response.status_code == 400
    assert "bundle" in response.json()["error"]["message"]


def test_invocations_made_together_travel_in_one_bundle_and_share_a_model_call(
    sklearn_runtime: SklearnRuntime,
) -> None:
    sizes: list[int] = []
    app = ReplicaApp(sklearn_runtime, {"max_batch_size": 64, "max_delay_ms": 1})
    assert app.batcher is not None
    app.batcher.observe = sizes.append
    seen: list[str] = []

    async def counting(request: Request) -> Answer:
        seen.append(request.path)
        return await app(request)

    async def scenario() -> list[bundle.ItemAnswer]:
        server = HttpServer(counting)
        (address,) = await server.listen(host="127.0.0.1", port=0)
        pool = Pool(address)
        try:
            calls = [
                pool.invoke(bundle.encode_item(b"application/json", b"", b"", rows(i)), 10)
                for i in range(6)
            ]
            return list(await asyncio.gather(*calls))
        finally:
            pool.close()
            await server.shutdown(grace_s=2)

    answers = run(scenario())
    assert seen == ["/bundle"]  # six invocations, one round trip
    assert sizes == [6]  # and one model call
    proba = sklearn_runtime.estimator.predict_proba
    for i, answer in enumerate(answers):
        assert answer.status == 200
        np.testing.assert_allclose(json.loads(answer.body)["predictions"], proba(X[i : i + 1]))


def test_every_invocation_of_a_lost_bundle_fails_as_a_disconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def vanish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the replica dies with the bundle in hand
        writer.close()

    async def scenario() -> list[Any]:
        server = await asyncio.start_server(vanish, "127.0.0.1", 0)
        pool = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        try:
            calls = [pool.invoke(bundle.encode_item(b"", b"", b"", b"[1]"), 10) for _ in range(3)]
            return list(await asyncio.gather(*calls, return_exceptions=True))
        finally:
            server.close()

    results = run(scenario())
    assert all(isinstance(r, UpstreamDisconnected) for r in results)


def test_a_python_predictor_gets_bundled_items_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "class Predictor:\n"
        "    def load(self, d): pass\n"
        "    def predict(self, inputs): return inputs.upper()\n"
    )
    runtime = load_python_predictor(tmp_path, monkeypatch, "shout", source)
    items = [
        bundle.encode_item(b"application/json", b"", b"", json.dumps(w).encode())
        for w in ("a", "b")
    ]

    answers = bundle.decode_answers(post_bundle(ReplicaApp(runtime), items).content)
    assert [json.loads(a.body) for a in answers] == [{"predictions": "A"}, {"predictions": "B"}]


def test_a_replica_that_does_not_take_bundles_gets_plain_requests(tmp_path: Path) -> None:
    """A model server of an older version, re-adopted after an upgrade, answers 404 to
    /bundle: the gateway falls back to /invocations for it and stops trying bundles."""
    seen: list[str] = []

    async def old_replica(request: Request) -> Answer:
        seen.append(request.path)
        if request.path != "/invocations":
            return 404, [], b"no such route"
        return 200, [(b"content-type", b"application/json")], b'{"predictions": [1]}'

    async def scenario() -> list[Answer]:
        server = HttpServer(old_replica)
        (address,) = await server.listen(host="127.0.0.1", port=0)
        gateway = _gateway(tmp_path, [address])
        try:
            return [await gateway(_invocation()) for _ in range(2)]
        finally:
            gateway.upstreams.close()
            await server.shutdown(grace_s=2)

    answers = run(scenario())
    assert [status for status, _, _ in answers] == [200, 200]
    assert answers[0][2] == b'{"predictions": [1]}'
    assert seen == ["/bundle", "/invocations", "/invocations"]


@pytest.mark.parametrize("batching", [None, {"max_batch_size": 16, "max_delay_ms": 1}])
def test_an_item_that_breaks_the_replica_fails_alone(
    sklearn_runtime: SklearnRuntime,
    batching: dict[str, Any] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_decode = codecs.decode

    def decode(body: bytes, content_type: str | None, *, to_array: bool) -> Any:
        if body == b"defect":  # stands in for a bug or a library failing on odd input
            raise RuntimeError("an unexpected failure")
        return real_decode(body, content_type, to_array=to_array)

    monkeypatch.setattr(codecs, "decode", decode)
    items = [
        bundle.encode_item(b"application/json", b"", b"", rows(0)),
        bundle.encode_item(b"application/json", b"", b"", b"defect"),
        bundle.encode_item(b"application/json", b"", b"", rows(1)),
    ]

    response = post_bundle(ReplicaApp(sklearn_runtime, batching), items)
    assert response.status_code == 200
    answers = bundle.decode_answers(response.content)
    assert [a.status for a in answers] == [200, 500, 200]
    assert b"an unexpected failure" in answers[1].body


def test_a_bundle_the_replica_answers_as_a_whole_is_not_retried(tmp_path: Path) -> None:
    seen: list[str] = []

    async def failing_replica(request: Request) -> Answer:
        seen.append(request.path)
        return 500, [(b"content-type", b"application/json")], b'{"error": {"message": "boom"}}'

    async def scenario() -> Answer:
        server = HttpServer(failing_replica)
        (address,) = await server.listen(host="127.0.0.1", port=0)
        gateway = _gateway(tmp_path, [address])
        try:
            return await gateway(_invocation())
        finally:
            gateway.upstreams.close()
            await server.shutdown(grace_s=2)

    status, _, body = run(scenario())
    assert status == 424  # the replica's answer, as for a plain request: a ModelError
    assert b"boom" in body
    assert seen == ["/bundle"]  # answered, so not sent again


def _gateway(tmp_path: Path, replicas: list[str]) -> Gateway:
    gateway = Gateway(
        control_url="http://127.0.0.1:9",
        token="t",
        invoke_token=None,
        routes_file=tmp_path / "routes.json",
        max_payload_bytes=1024,
        timeout_s=5,
        sync_interval_s=60,
    )
    variant = {"name": "v", "weight": 1, "bundles": True, "replicas": replicas}
    gateway.routes = build_routes({"e": {"revision": 1, "variants": [variant]}}, {})
    return gateway


def _invocation() -> Request:
    headers = {b"content-type": b"application/json"}
    return Request("POST", "/endpoints/e/invocations", b"", headers, b"[1]")


def test_a_python_predictors_bundled_items_run_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A predictor may wait on I/O: bundled items must not queue behind each other. Each
    call waits at a barrier for the other; run one after the other, both would break it."""
    source = (
        "import threading\n"
        "class Predictor:\n"
        "    def load(self, d): self.barrier = threading.Barrier(2, timeout=10)\n"
        "    def predict(self, inputs):\n"
        "        self.barrier.wait()\n"
        "        return inputs\n"
    )
    runtime = load_python_predictor(tmp_path, monkeypatch, "meet", source)
    items = [
        bundle.encode_item(b"application/json", b"", b"", json.dumps(w).encode())
        for w in ("a", "b")
    ]

    answers = bundle.decode_answers(post_bundle(ReplicaApp(runtime), items).content)
    assert [a.status for a in answers] == [200, 200]
