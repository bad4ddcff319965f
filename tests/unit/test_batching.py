"""Adaptive batching: concurrent requests share model calls, and each still gets its own answer."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from tests.support import N_FEATURES, load_python_predictor, make_onnx_model, serving

from modelyard.dataplane.batching import Batcher
from modelyard.dataplane.modelserver import ReplicaApp
from modelyard.errors import InvalidInputError, ModelInvocationError
from modelyard.runtimes.python import PythonRuntime
from modelyard.runtimes.sklearn import SklearnRuntime
from modelyard.spec import ModelSpec

X, Y = make_classification(n_samples=200, n_features=6, random_state=0)

# A predictor that records the size of every call, fails on a row holding -999, and can be held
# (so requests pile up deterministically while it is busy).
RECORDING_PREDICTOR = """
import threading

class Predictor:
    can_batch = True

    def load(self, model_dir):
        self.calls = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def predict(self, inputs):
        self.entered.set()
        self.gate.wait(30)
        self.calls.append(len(inputs))
        if isinstance(inputs, dict):
            return {"alone": inputs}
        if any(row == -999 for row in inputs):
            raise ValueError("row -999 is poison")
        if inputs == ["scalar"]:
            return 42
        return [row * 10 for row in inputs]
"""


@pytest.fixture
def sklearn_runtime(tmp_path: Path) -> SklearnRuntime:
    path = tmp_path / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(X, Y), path)
    runtime = SklearnRuntime(
        ModelSpec(runtime="sklearn", artifact=str(path), method="predict_proba")
    )
    runtime.load(path)
    return runtime


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PythonRuntime]:
    runtime = load_python_predictor(tmp_path, monkeypatch, "recorder", RECORDING_PREDICTOR)
    assert runtime.can_batch
    yield runtime
    runtime.predictor.gate.set()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def held_batch(
    batcher: Batcher, runtime: PythonRuntime, first: Any, rest: list[Any]
) -> list[Any]:
    """Send ``first`` alone and hold the model inside its call; then send ``rest`` so they queue
    together; release the model. Results (or exceptions) in the order sent."""
    predictor = runtime.predictor
    predictor.gate.clear()
    predictor.entered.clear()
    loop = asyncio.get_running_loop()
    head = asyncio.ensure_future(batcher.predict(first))
    await loop.run_in_executor(None, predictor.entered.wait, 10)
    tail = [asyncio.ensure_future(batcher.predict(inputs)) for inputs in rest]
    await asyncio.sleep(0)  # let them queue (no timing involved: the model is held)
    predictor.gate.set()
    return list(await asyncio.gather(head, *tail, return_exceptions=True))


def test_concurrent_requests_share_a_call_and_get_their_own_rows_in_order(
    recorder: PythonRuntime,
) -> None:
    async def scenario() -> list[Any]:
        batcher = Batcher(recorder, max_batch_size=16, max_delay_ms=0)
        try:
            return await held_batch(batcher, recorder, [0], [[1, 2], [3], [4, 5, 6], [7]])
        finally:
            await batcher.close()

    results = run(scenario())
    assert results == [[0], [10, 20], [30], [40, 50, 60], [70]]
    assert recorder.predictor.calls == [1, 7]  # the four queued requests made one call


def test_a_call_never_exceeds_max_batch_size(recorder: PythonRuntime) -> None:
    sizes: list[int] = []

    async def scenario() -> list[Any]:
        batcher = Batcher(recorder, max_batch_size=4, max_delay_ms=0, observe=sizes.append)
        try:
            rest = [[i, i + 100, i + 200] for i in range(1, 6)] + [list(range(1000, 1010))]
            return await held_batch(batcher, recorder, [0], rest)
        finally:
            await batcher.close()

    results = run(scenario())
    assert results[0] == [0]
    for i in range(1, 6):
        assert results[i] == [i * 10, (i + 100) * 10, (i + 200) * 10]
    # A request of 10 rows is split across calls and joined back in order.
    assert results[6] == [v * 10 for v in range(1000, 1010)]
    assert max(recorder.predictor.calls) <= 4
    assert sum(recorder.predictor.calls) == 1 + 15 + 10
    assert sizes == recorder.predictor.calls  # the metric sees every call's size


def test_one_bad_row_fails_only_its_own_request(recorder: PythonRuntime) -> None:
    async def scenario() -> list[Any]:
        batcher = Batcher(recorder, max_batch_size=16, max_delay_ms=0)
        try:
            return await held_batch(batcher, recorder, [0], [[1], [2, -999], [3]])
        finally:
            await batcher.close()

    results = run(scenario())
    assert results[0] == [0]
    assert results[1] == [10]
    assert isinstance(results[2], ModelInvocationError)
    assert "poison" in results[2].message
    assert results[3] == [30]
    # The shared call failed, then each request ran alone.
    assert recorder.predictor.calls[:2] == [1, 4]
    assert sorted(recorder.predictor.calls[2:]) == [1, 1, 2]


def test_a_model_answer_without_a_row_per_input_row_is_a_clear_error(
    recorder: PythonRuntime,
) -> None:
    async def scenario() -> Any:
        batcher = Batcher(recorder, max_batch_size=8, max_delay_ms=0)
        try:
            return await batcher.predict(["scalar"])
        finally:
            await batcher.close()

    with pytest.raises(ModelInvocationError, match="one output row per input row"):
        run(scenario())


def test_a_lone_client_is_never_held_for_the_window(sklearn_runtime: SklearnRuntime) -> None:
    sizes: list[int] = []

    async def scenario() -> list[Any]:
        # A 10 s window that no request may wait for: one client, one request at a time. The
        # wait_for bounds a hang (five waits would take 50 s), it does not time anything.
        batcher = Batcher(
            sklearn_runtime, max_batch_size=64, max_delay_ms=10_000, observe=sizes.append
        )
        try:
            return [await asyncio.wait_for(batcher.predict(X[i : i + 1]), 5) for i in range(5)]
        finally:
            await batcher.close()

    outs = run(scenario())
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out, sklearn_runtime.estimator.predict_proba(X[i : i + 1]))
    assert sizes == [1] * 5


def test_with_overlapping_requests_a_partial_batch_waits_out_the_window(
    sklearn_runtime: SklearnRuntime,
) -> None:
    sizes: list[int] = []

    async def scenario() -> Any:
        batcher = Batcher(
            sklearn_runtime, max_batch_size=64, max_delay_ms=300, observe=sizes.append
        )
        try:
            # Overlapping traffic first (8 at once), then a 3-request burst that cannot fill the
            # batch: the batcher waits for company, then the window closes and they run together.
            await asyncio.gather(*(batcher.predict(X[i : i + 1]) for i in range(8)))
            loop = asyncio.get_running_loop()
            started = loop.time()
            burst = [batcher.predict(X[i : i + 1]) for i in range(3)]
            outs = await asyncio.wait_for(asyncio.gather(*burst), 10)
            return outs, loop.time() - started
        finally:
            await batcher.close()

    outs, waited = run(scenario())
    np.testing.assert_allclose(np.vstack(outs), sklearn_runtime.estimator.predict_proba(X[:3]))
    assert sizes[-1] == 3
    assert waited >= 0.29  # held for the window (a lower bound: no speed is measured)


def test_requests_gathered_in_the_delay_window_share_a_call(
    sklearn_runtime: SklearnRuntime,
) -> None:
    sizes: list[int] = []

    async def scenario() -> list[Any]:
        # Sent together, well inside a long window: one call; the window is cut short once the
        # batch is full, so wait_for bounds a hang, not a duration.
        batcher = Batcher(
            sklearn_runtime, max_batch_size=5, max_delay_ms=10_000, observe=sizes.append
        )
        try:
            calls = [batcher.predict(X[i : i + 1]) for i in range(5)]
            return list(await asyncio.wait_for(asyncio.gather(*calls), timeout=10))
        finally:
            await batcher.close()

    outs = run(scenario())
    expected = sklearn_runtime.estimator.predict_proba(X[:5])
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out, expected[i : i + 1])
    assert sizes == [5]


def test_rows_of_different_shapes_never_share_a_call(sklearn_runtime: SklearnRuntime) -> None:
    sizes: list[int] = []

    async def scenario() -> list[Any]:
        # 7 rows fill the batch, so the long window is cut short.
        batcher = Batcher(
            sklearn_runtime, max_batch_size=7, max_delay_ms=10_000, observe=sizes.append
        )
        try:
            calls = [
                batcher.predict(X[0:2]),
                batcher.predict(X[2:3, :5]),  # one feature short: its own call, its own error
                batcher.predict(X[3:4]),
                batcher.predict(X[4:7]),
            ]
            return list(await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10))
        finally:
            await batcher.close()

    outs = run(scenario())
    proba = sklearn_runtime.estimator.predict_proba
    np.testing.assert_allclose(outs[0], proba(X[0:2]))
    assert isinstance(outs[1], InvalidInputError)
    assert "expected 6 features" in outs[1].message
    np.testing.assert_allclose(outs[2], proba(X[3:4]))
    np.testing.assert_allclose(outs[3], proba(X[4:7]))
    assert sorted(sizes) == [1, 6]


def test_inputs_that_are_not_rows_get_a_call_of_their_own(recorder: PythonRuntime) -> None:
    async def scenario() -> Any:
        batcher = Batcher(recorder, max_batch_size=8, max_delay_ms=0)
        try:
            return await batcher.predict({"not": "rows"})
        finally:
            await batcher.close()

    assert run(scenario()) == {"alone": {"not": "rows"}}
    assert recorder.predictor.calls == [1]  # called once, alone, with the dict as is


# -- through the replica app: content types, Accept, metrics ------------------------------------


def test_the_replica_batches_requests_of_mixed_content_types(
    sklearn_runtime: SklearnRuntime,
) -> None:
    app = ReplicaApp(sklearn_runtime, {"max_batch_size": 16, "max_delay_ms": 10_000})
    assert app.batcher is not None
    proba = sklearn_runtime.estimator.predict_proba

    def npy(array: np.ndarray[Any, Any]) -> bytes:
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()

    csv_rows = "\n".join(",".join(map(str, row.tolist())) for row in X[3:5]).encode()
    requests = [
        ({"Content-Type": "application/json"}, f'{{"instances": {X[0:2].tolist()}}}'.encode()),
        ({"Content-Type": "text/csv", "Accept": "text/csv"}, csv_rows),
        ({"Content-Type": "application/x-npy", "Accept": "application/x-npy"}, npy(X[5:6])),
        (
            {"Content-Type": "application/json", "Accept": "text/csv"},
            json.dumps([X[6].tolist()]).encode(),
        ),
    ]
    total_rows = 2 + 2 + 1 + 1

    async def scenario() -> list[httpx.Response]:
        # The window outlasts the test; the batch is released by reaching max_batch_size, so
        # the last request is the one that fills it: 16 rows = 6 + 10.
        async with serving(app) as client:
            calls = [client.post("/invocations", content=b, headers=h) for h, b in requests]
            filler = client.post("/invocations", json={"instances": X[10:20].tolist()})
            out = await asyncio.wait_for(asyncio.gather(*calls, filler), 20)
            metrics = await client.get("/metrics")
            return [*out, metrics]

    *answers, filler, metrics = run(scenario())
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert filler.status_code == 200
    np.testing.assert_allclose(answers[0].json()["predictions"], proba(X[0:2]))
    assert answers[1].headers["content-type"] == "text/csv"
    csv_back = np.array([[float(v) for v in line.split(",")] for line in answers[1].text.split()])
    np.testing.assert_allclose(csv_back, proba(X[3:5]))
    np.testing.assert_allclose(np.load(io.BytesIO(answers[2].content)), proba(X[5:6]))
    np.testing.assert_allclose(
        [float(v) for v in answers[3].text.strip().split(",")], proba(X[6:7])[0]
    )
    np.testing.assert_allclose(filler.json()["predictions"], proba(X[10:20]))
    # One call of 16 rows shows in the batch-size histogram.
    text = metrics.text
    assert "modelyard_replica_batch_size_count 1.0" in text
    assert f"modelyard_replica_batch_size_sum {float(total_rows + 10)}" in text
    assert 'modelyard_replica_requests_total{status="2xx"} 5.0' in text


def test_a_runtime_that_cannot_batch_serves_unbatched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = (
        "class Predictor:\n"
        "    def load(self, d): pass\n"
        "    def predict(self, inputs): return [len(inputs)]\n"
    )
    runtime = load_python_predictor(tmp_path, monkeypatch, "plain", source)
    app = ReplicaApp(runtime, {"max_batch_size": 8, "max_delay_ms": 1})
    assert app.batcher is None
    assert "batching is off" in capsys.readouterr().err

    async def call() -> httpx.Response:
        async with serving(app) as client:
            return await client.post("/invocations", json={"instances": [1, 2, 3]})

    assert run(call()).json() == {"predictions": [3]}


def test_an_input_of_no_rows_gets_a_call_of_its_own(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from modelyard.runtimes.onnx import OnnxRuntime

    path = tmp_path / "linear.onnx"
    make_onnx_model(path)
    runtime = OnnxRuntime(ModelSpec(runtime="onnx", artifact=str(path)))
    runtime.load(path)
    sizes: list[int] = []

    async def scenario() -> Any:
        batcher = Batcher(runtime, max_batch_size=8, max_delay_ms=0, observe=sizes.append)
        try:
            return await asyncio.wait_for(batcher.predict(np.zeros((0, N_FEATURES))), 10)
        finally:
            await batcher.close()

    out = run(scenario())
    assert out.shape == (0, 2)  # the model's own answer for no rows
    assert sizes == []  # not a shared call


def test_a_split_request_whose_outputs_cannot_be_joined_fails_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "import numpy as np\n"
        "class Predictor:\n"
        "    can_batch = True\n"
        "    def load(self, d): pass\n"
        "    def predict(self, rows):\n"
        "        width = max(len(r) for r in rows)  # pads each call to its longest row\n"
        "        return np.zeros((len(rows), width))\n"
    )
    runtime = load_python_predictor(tmp_path, monkeypatch, "ragged", source)

    async def scenario() -> Any:
        batcher = Batcher(runtime, max_batch_size=2, max_delay_ms=0)
        try:
            rows = [[1], [1, 2], [1, 2, 3], [1]]  # split into calls of widths 2 and 3
            return await asyncio.wait_for(batcher.predict(rows), 10)
        finally:
            await batcher.close()

    with pytest.raises(ModelInvocationError, match="cannot be joined"):
        run(scenario())
