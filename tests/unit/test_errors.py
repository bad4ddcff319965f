"""The error tree: every error survives the trip server -> JSON body -> client as the same class."""

from __future__ import annotations

import pytest

from modelyard import errors
from modelyard.errors import (
    ModelyardError,
    PlatformError,
    SpecError,
    UserError,
    from_payload,
)


def _every_class(cls: type[ModelyardError] = ModelyardError) -> list[type[ModelyardError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _every_class(sub)
    return out


ALL = _every_class()
SIMPLE = [c for c in ALL if c not in (SpecError, errors.MissingDependencyError)]


def test_the_tree_has_the_documented_classes_with_unique_codes() -> None:
    codes = [c.code for c in ALL]
    assert len(codes) == len(set(codes)), codes
    assert len(ALL) >= 17
    assert {c.__name__ for c in ALL} >= {"StoreError", "CapacityError", "InvocationTimeoutError"}


@pytest.mark.parametrize("cls", SIMPLE, ids=lambda c: c.__name__)
def test_from_payload_rebuilds_the_same_class_code_and_status(cls: type[ModelyardError]) -> None:
    original = cls("something went wrong")
    rebuilt = from_payload(original.to_payload(), original.http_status)
    assert type(rebuilt) is cls
    assert rebuilt.code == original.code
    assert rebuilt.http_status == original.http_status
    assert rebuilt.message == "something went wrong"
    assert rebuilt.to_payload() == original.to_payload()


def test_spec_error_keeps_its_field_through_the_round_trip() -> None:
    original = SpecError("must be one of sklearn, onnx", "documents[0].spec.runtime")
    payload = original.to_payload()
    assert payload["error"]["field"] == "documents[0].spec.runtime"
    rebuilt = from_payload(payload, 400)
    assert type(rebuilt) is SpecError
    assert rebuilt.field == "documents[0].spec.runtime"
    assert str(rebuilt) == str(original)
    assert rebuilt.http_status == 400
    assert rebuilt.to_payload() == payload


def test_spec_error_without_field_has_no_field_in_its_body() -> None:
    err = SpecError("input holds no documents")
    assert err.to_payload() == {
        "error": {"code": "spec_invalid", "message": "input holds no documents"}
    }
    rebuilt = from_payload(err.to_payload(), 400)
    assert isinstance(rebuilt, SpecError)
    assert rebuilt.field is None


def test_missing_dependency_error_names_the_extra() -> None:
    err = errors.MissingDependencyError("onnxruntime", "onnx")
    assert "pip install 'modelyard[onnx]'" in err.message
    assert (err.package, err.extra, err.http_status) == ("onnxruntime", "onnx", 400)


def test_missing_dependency_round_trip_keeps_status_and_message() -> None:
    original = errors.MissingDependencyError("onnxruntime", "onnx")
    rebuilt = from_payload(original.to_payload(), original.http_status)
    assert isinstance(rebuilt, UserError)
    assert rebuilt.http_status == 400
    assert rebuilt.message == original.message


def test_missing_dependency_round_trip_keeps_its_code() -> None:
    original = errors.MissingDependencyError("onnxruntime", "onnx")
    rebuilt = from_payload(original.to_payload(), original.http_status)
    assert rebuilt.code == "missing_dependency"


@pytest.mark.parametrize(
    ("payload", "status", "expected"),
    [
        ({"error": {"code": "no_such_code", "message": "x"}}, 404, UserError),
        ({"error": {"code": "no_such_code", "message": "x"}}, 502, PlatformError),
        ({"detail": "Not Found"}, 404, PlatformError),
        ("<html>bad gateway</html>", 502, PlatformError),
        (None, 500, PlatformError),
    ],
)
def test_unknown_bodies_fall_back_by_status(
    payload: object, status: int, expected: type[ModelyardError]
) -> None:
    err = from_payload(payload, status)
    assert type(err) is expected


def test_non_error_body_mentions_the_status() -> None:
    err = from_payload({"detail": "Not Found"}, 404)
    assert "HTTP 404" in err.message
