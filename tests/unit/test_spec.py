"""Resource specs: what a user may write, and errors that point at the offending field."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from modelyard import storage
from modelyard.errors import SpecError
from modelyard.spec import (
    RUNTIMES,
    EndpointDocument,
    ModelDocument,
    load_documents,
    parse_document,
    parse_documents,
)

VALID = textwrap.dedent(
    """\
    kind: Model
    name: iris
    spec:
      runtime: sklearn
      artifact: file:///models/iris.joblib
      method: predict_proba
    ---
    kind: Endpoint
    name: iris-prod
    spec:
      variants:
        - name: blue
          model: iris
          instance_count: 2
          weight: 3
        - name: green
          model: iris
          weight: 1
          resources: {cpus: 0.5, memory_mb: 256}
          startup_timeout_s: 30
    """
)


def _model(**spec: Any) -> dict[str, Any]:
    return {"kind": "Model", "name": "m", "spec": spec}


def _endpoint(*variants: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"kind": "Endpoint", "name": "e", "spec": {"variants": list(variants), **extra}}


def _spec_error(raws: list[Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_documents(raws)
    return info.value


# -- valid documents --------------------------------------------------------------------------


def test_valid_model_and_endpoint_parse_with_defaults() -> None:
    model, endpoint = load_documents(VALID)
    assert isinstance(model, ModelDocument)
    assert model.spec.runtime == "sklearn"
    assert model.spec.method == "predict_proba"
    assert isinstance(endpoint, EndpointDocument)
    blue, green = endpoint.spec.variants
    assert (blue.instance_count, blue.weight, blue.startup_timeout_s) == (2, 3.0, 240)
    assert (green.instance_count, green.resources.cpus, green.resources.memory_mb) == (1, 0.5, 256)
    assert endpoint.spec.variant("green") is green
    assert endpoint.spec.variant("red") is None


@pytest.mark.parametrize(
    "spec",
    [
        {"runtime": "onnx", "artifact": "s3://bucket/m.onnx"},
        {"runtime": "python", "artifact": "/srv/m", "predictor": "pred:Predictor"},
        {"runtime": "container", "container": {"command": ["python", "serve.py"]}},
        {"runtime": "container", "artifact": "/srv/m", "container": {"command": ["x"]}},
    ],
    ids=["onnx", "python", "container", "container-with-artifact"],
)
def test_each_runtime_accepts_its_fields(spec: dict[str, Any]) -> None:
    (doc,) = parse_documents([_model(**spec)])
    assert doc.spec.runtime == spec["runtime"]


def test_schema_knows_the_four_runtimes() -> None:
    assert set(RUNTIMES) == {"sklearn", "onnx", "python", "container"}


# -- errors name the field and the rule ------------------------------------------------------


def test_unknown_runtime_lists_the_allowed_values() -> None:
    err = _spec_error([_model(runtime="tensorflow", artifact="x")])
    assert err.field == "documents[0].spec.runtime"
    for runtime in RUNTIMES:
        assert runtime in err.rule
    assert "tensorflow" in err.rule
    assert str(err).startswith("documents[0].spec.runtime: ")


def test_unknown_field_is_reported_with_its_path() -> None:
    err = _spec_error([_model(runtime="sklearn", artefact="x.joblib")])
    assert err.field == "documents[0].spec.artefact"
    assert err.rule == "unknown field"


def test_unknown_field_inside_a_variant_is_reported_with_its_index() -> None:
    raw = _endpoint({"name": "a", "model": "m"}, {"name": "b", "model": "m", "replicas": 2})
    err = _spec_error([raw])
    assert err.field == "documents[0].spec.variants[1].replicas"
    assert err.rule == "unknown field"


def test_unknown_top_level_field_is_reported() -> None:
    err = _spec_error([{**_model(runtime="sklearn", artifact="x"), "metadata": {}}])
    assert err.field == "documents[0].metadata"
    assert err.rule == "unknown field"


def test_instance_count_zero_names_the_variant_field() -> None:
    err = _spec_error([_endpoint({"name": "a", "model": "m", "instance_count": 0})])
    assert err.field == "documents[0].spec.variants[0].instance_count"
    assert "greater than or equal to 1" in err.rule


def test_duplicate_variant_names_are_rejected() -> None:
    err = _spec_error([_endpoint({"name": "a", "model": "m"}, {"name": "a", "model": "n"})])
    assert err.field == "documents[0].spec.variants"
    assert "unique" in err.rule
    assert "a" in err.rule


def test_all_weights_zero_is_rejected() -> None:
    raw = _endpoint(
        {"name": "a", "model": "m", "weight": 0}, {"name": "b", "model": "m", "weight": 0}
    )
    err = _spec_error([raw])
    assert err.field == "documents[0].spec.variants"
    assert "weight above 0" in err.rule


def test_one_weight_zero_is_allowed() -> None:
    raw = _endpoint({"name": "a", "model": "m", "weight": 0}, {"name": "b", "model": "m"})
    (doc,) = parse_documents([raw])
    assert [v.weight for v in doc.spec.variants] == [0.0, 1.0]


def test_negative_weight_is_rejected() -> None:
    err = _spec_error([_endpoint({"name": "a", "model": "m", "weight": -1})])
    assert err.field == "documents[0].spec.variants[0].weight"


def test_no_variants_is_rejected() -> None:
    err = _spec_error([_endpoint()])
    assert err.field == "documents[0].spec.variants"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"runtime": "sklearn"}, "needs an artifact"),
        ({"runtime": "onnx"}, "needs an artifact"),
        ({"runtime": "python", "artifact": "/srv/m"}, "needs predictor"),
        ({"runtime": "python", "artifact": "/srv/m", "predictor": "no_colon"}, "needs predictor"),
        ({"runtime": "container"}, "needs container"),
        ({"runtime": "sklearn", "artifact": "x", "container": {"command": ["a"]}}, "only allowed"),
        ({"runtime": "sklearn", "artifact": "x", "predictor": "a:B"}, "only allowed"),
        ({"runtime": "onnx", "artifact": "x", "method": "predict"}, "only allowed"),
    ],
    ids=[
        "sklearn-no-artifact",
        "onnx-no-artifact",
        "python-no-predictor",
        "python-bad-predictor",
        "container-no-container",
        "container-on-sklearn",
        "predictor-on-sklearn",
        "method-on-onnx",
    ],
)
def test_runtime_specific_rules(spec: dict[str, Any], needle: str) -> None:
    err = _spec_error([_model(**spec)])
    assert err.field == "documents[0].spec"
    assert needle in err.rule


def test_container_needs_a_command() -> None:
    err = _spec_error([_model(runtime="container", container={"command": []})])
    assert err.field == "documents[0].spec.container.command"


def test_duplicate_documents_in_one_file_name_the_second() -> None:
    doc = _model(runtime="sklearn", artifact="x")
    err = _spec_error([_model(runtime="onnx", artifact="y"), doc])
    assert err.field == "documents[1].name"
    assert "appears twice" in err.rule


def test_same_name_different_kinds_is_allowed() -> None:
    docs = parse_documents(
        [
            {"kind": "Model", "name": "x", "spec": {"runtime": "sklearn", "artifact": "a"}},
            {"kind": "Endpoint", "name": "x", "spec": {"variants": [{"name": "v", "model": "x"}]}},
        ]
    )
    assert [d.kind for d in docs] == ["Model", "Endpoint"]


@pytest.mark.parametrize(
    "name", ["-lead", "trail-", "under_score", "dot.ted", "", "x" * 64, "sp ace"]
)
def test_bad_names_are_rejected(name: str) -> None:
    err = _spec_error([{**_model(runtime="sklearn", artifact="x"), "name": name}])
    assert err.field == "documents[0].name"
    assert "pattern" in err.rule


@pytest.mark.parametrize("name", ["a", "A1", "iris-prod", "a--b", "x" * 63])
def test_good_names_are_accepted(name: str) -> None:
    (doc,) = parse_documents([{**_model(runtime="sklearn", artifact="x"), "name": name}])
    assert doc.name == name


def test_bad_variant_name_names_the_variant() -> None:
    err = _spec_error([_endpoint({"name": "blue_1", "model": "m"})])
    assert err.field == "documents[0].spec.variants[0].name"


def test_unknown_kind_lists_the_kinds() -> None:
    err = _spec_error([{"kind": "Modle", "name": "m", "spec": {}}])
    assert err.field == "documents[0].kind"
    assert "Model" in err.rule
    assert "Endpoint" in err.rule


def test_a_document_must_be_a_mapping() -> None:
    err = _spec_error([["kind", "Model"]])
    assert err.field == "documents[0]"


def test_parse_document_without_location_uses_bare_field_names() -> None:
    with pytest.raises(SpecError) as info:
        parse_document(_model(runtime="tensorflow", artifact="x"))
    assert info.value.field == "spec.runtime"


# -- YAML --------------------------------------------------------------------------------------


def test_invalid_yaml_reports_the_line_number() -> None:
    text = "kind: Model\nname: m\nspec:\n  runtime: sklearn\n artifact: x\n"
    with pytest.raises(SpecError) as info:
        load_documents(text, source="model.yaml")
    message = str(info.value)
    assert "model.yaml is not valid YAML" in message
    assert "line 5" in message


@pytest.mark.parametrize("text", ["", "\n\n", "---\n", "# only a comment\n"])
def test_empty_yaml_holds_no_documents(text: str) -> None:
    with pytest.raises(SpecError, match="holds no documents"):
        load_documents(text, source="empty.yaml")


def test_yaml_errors_in_a_later_document_name_its_index() -> None:
    text = VALID + "---\nkind: Model\nname: other\nspec: {runtime: jax, artifact: x}\n"
    with pytest.raises(SpecError) as info:
        load_documents(text)
    assert info.value.field == "documents[2].spec.runtime"


# -- artifact paths ----------------------------------------------------------------------------


def _artifact(text_artifact: str, base_dir: Path | None) -> str:
    text = f"kind: Model\nname: m\nspec:\n  runtime: sklearn\n  artifact: {text_artifact}\n"
    (doc,) = load_documents(text, base_dir=base_dir)
    assert isinstance(doc, ModelDocument)
    assert doc.spec.artifact is not None
    return doc.spec.artifact


def test_relative_artifact_becomes_file_uri_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    assert _artifact("models/iris.joblib", folder) == (folder / "models/iris.joblib").as_uri()
    assert _artifact("../iris.joblib", folder) == (tmp_path / "iris.joblib").as_uri()
    assert _artifact("file://rel/iris.joblib", folder) == (folder / "rel/iris.joblib").as_uri()


def test_absolute_artifact_becomes_file_uri(tmp_path: Path) -> None:
    path = tmp_path / "iris.joblib"
    assert _artifact(str(path), tmp_path / "elsewhere") == path.as_uri()
    assert _artifact(path.as_uri(), tmp_path / "elsewhere") == path.as_uri()


@pytest.mark.parametrize("uri", ["s3://bucket/models/iris.joblib", "gs://b/m.onnx"])
def test_remote_artifacts_are_left_alone(uri: str, tmp_path: Path) -> None:
    assert _artifact(uri, tmp_path) == uri


def test_without_base_dir_artifacts_are_kept_as_written() -> None:
    assert _artifact("models/iris.joblib", None) == "models/iris.joblib"


def test_relative_artifact_of_a_real_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "iris.joblib").write_bytes(b"x")
    assert storage.exists(_artifact("iris.joblib", tmp_path))


def test_relative_artifact_with_a_space_is_found(tmp_path: Path) -> None:
    (tmp_path / "my model.joblib").write_bytes(b"x")
    assert storage.exists(_artifact("'my model.joblib'", tmp_path))


@pytest.mark.parametrize(
    ("batching", "field", "needle"),
    [
        ({"max_batch_size": 0}, "max_batch_size", "greater than or equal to 1"),
        ({"max_batch_size": 2000}, "max_batch_size", "less than or equal to 1024"),
        ({"max_batch_size": 8, "max_delay_ms": -1}, "max_delay_ms", "greater than or equal to 0"),
        ({"max_batch_size": 8, "max_delay_ms": 5000}, "max_delay_ms", "less than or equal to 1000"),
        ({"max_delay_ms": 2}, "max_batch_size", "required"),
    ],
)
def test_batching_limits_name_the_field(batching: dict[str, Any], field: str, needle: str) -> None:
    err = _spec_error([_endpoint({"name": "a", "model": "m", "batching": batching})])
    assert err.field == f"documents[0].spec.variants[0].batching.{field}"
    assert needle in err.rule.lower()


def test_batching_defaults_to_a_2_ms_window() -> None:
    (doc,) = parse_documents(
        [_endpoint({"name": "a", "model": "m", "batching": {"max_batch_size": 64}})]
    )
    assert isinstance(doc, EndpointDocument)
    batching = doc.spec.variants[0].batching
    assert batching is not None
    assert (batching.max_batch_size, batching.max_delay_ms) == (64, 2.0)
