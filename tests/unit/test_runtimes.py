"""The built-in runtimes, on tiny models built here."""

from __future__ import annotations

import pickle
import sys
import uuid
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LinearRegression, LogisticRegression

from modelyard.errors import InvalidInputError, MissingDependencyError, RuntimeLoadError, SpecError
from modelyard.runtimes import get_runtime_class, runtime_names
from modelyard.runtimes.python import PythonRuntime
from modelyard.runtimes.sklearn import SklearnRuntime
from modelyard.spec import ModelSpec

X, Y = make_classification(n_samples=50, n_features=4, random_state=0)


def _spec(runtime: str, **fields: Any) -> ModelSpec:
    return ModelSpec(runtime=runtime, artifact="file:///unused", **fields)  # type: ignore[arg-type]


# -- registry ----------------------------------------------------------------------------------


def test_registry_names_the_built_in_runtimes() -> None:
    assert get_runtime_class("sklearn") is SklearnRuntime
    assert get_runtime_class("python") is PythonRuntime
    assert set(runtime_names()) == {"sklearn", "onnx", "python"}


@pytest.mark.parametrize(("name", "match"), [("tensorflow", "known: onnx"), ("container", "own")])
def test_registry_refuses_runtimes_it_cannot_serve(name: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as caught:
        get_runtime_class(name)
    assert caught.value.field == "spec.runtime"


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "modelyard.runtimes.onnx", raising=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError) as caught:
        get_runtime_class("onnx")
    assert caught.value.extra == "onnx"
    assert "pip install 'modelyard[onnx]'" in caught.value.message


# -- sklearn -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier() -> LogisticRegression:
    return LogisticRegression().fit(X, Y)


@pytest.fixture(scope="module")
def classifier_file(
    classifier: LogisticRegression, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("sklearn") / "model.joblib"
    joblib.dump(classifier, path)
    return path


def _sklearn(artifact: Path, method: str | None = None) -> SklearnRuntime:
    runtime = SklearnRuntime(_spec("sklearn", method=method))
    runtime.load(artifact)
    return runtime


def test_sklearn_predicts_like_the_estimator(
    classifier: LogisticRegression, classifier_file: Path
) -> None:
    runtime = _sklearn(classifier_file)
    assert runtime.can_batch
    np.testing.assert_array_equal(runtime.predict(X[:10]), classifier.predict(X[:10]))
    # One row may come as a flat list.
    np.testing.assert_array_equal(runtime.predict(X[3].tolist()), classifier.predict(X[3:4]))


def test_sklearn_predict_proba_when_the_spec_asks(
    classifier: LogisticRegression, classifier_file: Path
) -> None:
    runtime = _sklearn(classifier_file, method="predict_proba")
    np.testing.assert_allclose(runtime.predict(X[:5]), classifier.predict_proba(X[:5]))


def test_sklearn_method_the_estimator_lacks_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "regressor.joblib"
    joblib.dump(LinearRegression().fit(X, Y), path)
    with pytest.raises(RuntimeLoadError, match=r"LinearRegression .* no method 'predict_proba'"):
        _sklearn(path, method="predict_proba")


def test_sklearn_wrong_feature_count_is_invalid_input(classifier_file: Path) -> None:
    runtime = _sklearn(classifier_file)
    with pytest.raises(InvalidInputError, match="expected 4 features per row, got 3"):
        runtime.predict(np.ones((2, 3)))


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ([["a", 1, 2, 3]], "rows of numbers"),
        ([[1, 2, 3, 4], [1]], "rows of numbers"),
        (np.ones((1, 2, 4)), "1 or 2 dimensions"),
    ],
)
def test_sklearn_non_numeric_or_misshapen_input_is_invalid(
    classifier_file: Path, inputs: Any, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        _sklearn(classifier_file).predict(inputs)


def test_sklearn_loads_a_pickle_or_the_one_model_file_in_a_directory(
    classifier: LogisticRegression, tmp_path: Path
) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(classifier))
    (tmp_path / "README.md").write_text("not a model")
    runtime = _sklearn(tmp_path)
    np.testing.assert_array_equal(runtime.predict(X[:5]), classifier.predict(X[:5]))


def test_sklearn_directory_with_two_models_is_ambiguous(
    classifier_file: Path, tmp_path: Path
) -> None:
    for name in ("a.joblib", "b.joblib"):
        (tmp_path / name).write_bytes(classifier_file.read_bytes())
    with pytest.raises(RuntimeLoadError, match=r"exactly one .*found a.joblib, b.joblib"):
        _sklearn(tmp_path)


def test_sklearn_corrupt_file_fails_at_load_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.joblib"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(RuntimeLoadError, match=r"broken.joblib"):
        _sklearn(path)


def test_sklearn_missing_artifact_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(RuntimeLoadError, match="not found"):
        _sklearn(tmp_path / "nope.joblib")


# -- onnx --------------------------------------------------------------------------------------

W = np.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0], [-1.5, 0.25]], dtype=np.float32)
B = np.array([0.1, -0.2], dtype=np.float32)


def _onnx_model(path: Path, *, second_output: bool = False, two_inputs: bool = False) -> Path:
    from onnx import TensorProto, helper, numpy_helper, save

    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["XW"]),
        helper.make_node("Add", ["XW", "B"], ["Y"]),
    ]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2])]
    if second_output:
        nodes.append(helper.make_node("ArgMax", ["Y"], ["label"], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", 2]))
        nodes.append(helper.make_node("Add", ["Y", "Z"], ["YZ"]))
        outputs.append(helper.make_tensor_value_info("YZ", TensorProto.FLOAT, ["N", 2]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    return _onnx_model(tmp_path_factory.mktemp("onnx") / "model.onnx")


def _onnx(artifact: Path) -> Any:
    runtime = get_runtime_class("onnx")(_spec("onnx"))
    runtime.load(artifact)
    return runtime


def test_onnx_casts_to_float32_and_answers_like_the_graph(onnx_file: Path) -> None:
    runtime = _onnx(onnx_file)
    assert runtime.can_batch
    rows = X[:6]  # float64
    out = runtime.predict(rows)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, rows.astype(np.float32) @ W + B, rtol=1e-6)
    np.testing.assert_allclose(
        runtime.predict(X[0].tolist()), X[:1].astype(np.float32) @ W + B, rtol=1e-6
    )


def test_onnx_wrong_feature_count_is_invalid_input(onnx_file: Path) -> None:
    with pytest.raises(InvalidInputError, match="expected 4 features per row, got 3"):
        _onnx(onnx_file).predict(np.ones((2, 3)))
    with pytest.raises(InvalidInputError, match="shape"):
        _onnx(onnx_file).predict(np.ones((2, 2, 4)))


def test_onnx_several_outputs_come_back_by_name(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    runtime = _onnx(_onnx_model(tmp_path / "two.onnx", second_output=True))
    out = runtime.predict(X[:3])
    assert set(out) == {"Y", "label"}
    np.testing.assert_array_equal(out["label"], np.argmax(out["Y"], axis=1))


def test_onnx_bad_models_fail_at_load(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeLoadError, match=r"corrupt.onnx"):
        _onnx(tmp_path / "corrupt.onnx")
    (tmp_path / "multi").mkdir()
    _onnx_model(tmp_path / "multi" / "m.onnx", two_inputs=True)
    with pytest.raises(RuntimeLoadError, match="single-input"):
        _onnx(tmp_path / "multi")  # a directory with one .onnx file is a fine artifact


# -- python predictor --------------------------------------------------------------------------

PREDICTOR = """
class Predictor:
    can_batch = True

    def load(self, model_dir):
        with open(model_dir + "/scale.txt") as f:
            self.scale = float(f.read())

    def predict(self, inputs):
        return {"echo": inputs, "scaled": [x * self.scale for x in inputs["values"]]}
"""


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the sys.path entry a python runtime adds."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _predictor_dir(tmp_path: Path, source: str) -> tuple[Path, str]:
    module = f"predictor_{uuid.uuid4().hex}"  # a fresh name: sys.modules caches by name
    (tmp_path / f"{module}.py").write_text(source)
    (tmp_path / "scale.txt").write_text("2.5")
    return tmp_path, module


def _python(artifact: Path, predictor: str) -> PythonRuntime:
    runtime = PythonRuntime(_spec("python", predictor=predictor))
    runtime.load(artifact)
    return runtime


@pytest.mark.usefixtures("clean_imports")
def test_python_predictor_loads_from_the_artifact_and_gets_inputs_as_is(tmp_path: Path) -> None:
    model_dir, module = _predictor_dir(tmp_path, PREDICTOR)
    runtime = _python(model_dir / f"{module}.py", f"{module}:Predictor")  # a file: its directory
    assert runtime.can_batch
    inputs = {"values": [1, 2], "tag": "x"}
    assert runtime.predict(inputs) == {"echo": inputs, "scaled": [2.5, 5.0]}


@pytest.mark.usefixtures("clean_imports")
@pytest.mark.parametrize(
    ("source", "predictor", "match"),
    [
        ("import not_a_real_module_xyz\n", "Predictor", "ModuleNotFoundError.*not_a_real_module"),
        ("class Other: pass\n", "Predictor", "has no class 'Predictor'"),
        ("class Predictor:\n    def load(self, d): pass\n", "Predictor", "lacks method.*predict"),
        (
            "class Predictor:\n    def load(self, d): raise OSError('weights missing')\n"
            "    def predict(self, x): return x\n",
            "Predictor",
            "failed to load: OSError: weights missing",
        ),
    ],
)
def test_python_predictor_problems_fail_at_load(
    tmp_path: Path, source: str, predictor: str, match: str
) -> None:
    model_dir, module = _predictor_dir(tmp_path, source)
    with pytest.raises(RuntimeLoadError, match=match):
        _python(model_dir, f"{module}:{predictor}")


def test_check_installed_names_the_extra_for_a_missing_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelyard.errors import MissingDependencyError
    from modelyard.runtimes import registry

    plugin = registry._Plugin("nowhere:Nothing", package="no_such_pkg_xyz", extra="xyz")
    monkeypatch.setitem(registry._PLUGINS, "xyz", plugin)
    with pytest.raises(MissingDependencyError) as exc:
        registry.check_installed("xyz")
    assert "pip install 'modelyard[xyz]'" in exc.value.message
    registry.check_installed("sklearn")  # needs nothing optional
