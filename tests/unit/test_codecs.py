"""Request and response bodies of the replica contract, each media type both ways."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from modelyard.dataplane import codecs
from modelyard.errors import InvalidInputError, UnsupportedMediaError

ROWS = [[1.0, 2.5, -3.0], [4.0, 5.0, 6.25]]


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


# -- decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2.5, -3], [4, 5, 6.25]]}',
        b'{"inputs": [[1, 2.5, -3], [4, 5, 6.25]]}',
        b"[[1, 2.5, -3], [4, 5, 6.25]]",
    ],
)
def test_json_shapes_decode_to_the_same_float_array(body: bytes) -> None:
    array = codecs.decode(body, "application/json", to_array=True)
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, ROWS)


def test_missing_content_type_means_json_and_parameters_are_ignored() -> None:
    body = b'{"instances": [[1, 2]]}'
    for content_type in (None, "", "application/json; charset=utf-8", "Application/JSON"):
        np.testing.assert_array_equal(codecs.decode(body, content_type, to_array=True), [[1, 2]])


def test_json_without_to_array_gives_the_value_as_is() -> None:
    assert codecs.decode(b'{"instances": [{"text": "hi"}]}', None, to_array=False) == [
        {"text": "hi"}
    ]
    assert codecs.decode(b'{"prompt": "hi"}', None, to_array=False) == {"prompt": "hi"}


def test_malformed_json_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="malformed JSON"):
        codecs.decode(b'{"instances": [1, 2', "application/json", to_array=True)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'[["a", 1]]', "must be numbers"),
        (b"[[1, 2], [3]]", "rows of equal length"),
        (b'[{"a": 1}]', "must be numbers"),
        (b'{"rows": [[1]]}', "instances"),
        (b"[]", "non-empty"),
        (b"3", "non-empty array"),
    ],
)
def test_json_that_is_not_numeric_rows_is_invalid_input(body: bytes, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        codecs.decode(body, None, to_array=True)


def test_csv_rows_decode_to_a_float_array() -> None:
    array = codecs.decode(b"1,2.5,-3\r\n4, 5 ,6.25\n\n", "text/csv; charset=utf-8", to_array=True)
    np.testing.assert_array_equal(array, ROWS)


def test_one_csv_row_is_a_one_row_array() -> None:
    array = codecs.decode(b"1,2,3", "text/csv", to_array=False)
    assert array.shape == (1, 3)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"1,2,3\n4,5\n", "malformed CSV: row 2 has 2 fields, expected 3"),
        (b"a,b\n1,2\n", "no header row"),
        (b"1,,3\n", "must be numbers"),
        (b"1,2\n3,x\n", "malformed CSV: row 2: CSV values must be numbers"),
        (b"\n  \n", "malformed CSV: no rows"),
        (b"\xff\xfe1,2", "malformed CSV: not UTF-8"),
    ],
)
def test_malformed_csv_is_invalid_input(body: bytes, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        codecs.decode(body, "text/csv", to_array=True)


def test_npy_decodes_to_the_same_array() -> None:
    sent = np.arange(6, dtype=np.float32).reshape(2, 3)
    array = codecs.decode(_npy(sent), "application/x-npy", to_array=True)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, sent)


def test_npy_refuses_garbage_and_non_numeric_arrays() -> None:
    with pytest.raises(InvalidInputError, match="malformed NPY"):
        codecs.decode(b"not an npy file", "application/x-npy", to_array=True)
    with pytest.raises(InvalidInputError, match="numeric"):
        codecs.decode(_npy(np.array(["a", "b"])), "application/x-npy", to_array=True)


def test_unknown_content_type_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedMediaError) as caught:
        codecs.decode(b"<x/>", "application/xml", to_array=True)
    assert caught.value.http_status == 415
    for media in codecs.MEDIA_TYPES:
        assert media in caught.value.message


# -- encode ----------------------------------------------------------------------------------


def test_json_answer_wraps_predictions_and_converts_numpy() -> None:
    outputs = np.array([[0.25, 0.75], [1.0, 0.0]])
    body, content_type = codecs.encode(outputs, None)
    assert content_type == "application/json"
    assert orjson.loads(body) == {"predictions": [[0.25, 0.75], [1.0, 0.0]]}


@pytest.mark.parametrize(
    "outputs",
    [
        np.array(["cat", "dog"]),  # a string-label classifier
        np.arange(6, dtype=np.int64).reshape(3, 2)[:, 0],  # not C-contiguous
        {"label": np.array([1, 0]), "scores": np.float32(0.5)},  # several named outputs
        [np.int64(3), 1.5],
    ],
)
def test_json_answer_carries_what_runtimes_return(outputs: object) -> None:
    body, _ = codecs.encode(outputs, "*/*")
    expected = (
        {k: np.asarray(v).tolist() for k, v in outputs.items()}
        if isinstance(outputs, dict)
        else np.asarray(outputs).tolist()
    )
    assert orjson.loads(body) == {"predictions": expected}


def test_csv_answer_is_one_line_per_row() -> None:
    body, content_type = codecs.encode(np.array([[1.5, 2.0], [3.0, 4.25]]), "text/csv")
    assert content_type == "text/csv"
    assert body == b"1.5,2.0\n3.0,4.25\n"
    assert codecs.encode(np.array([0, 1, 1]), "text/csv")[0] == b"0\n1\n1\n"
    assert codecs.encode(np.array(["a,b", "c"]), "text/csv")[0] == b'"a,b"\nc\n'


def test_npy_answer_round_trips() -> None:
    outputs = np.array([[0.1, 0.9]], dtype=np.float32)
    body, content_type = codecs.encode(outputs, "application/x-npy")
    assert content_type == "application/x-npy"
    back = np.load(io.BytesIO(body), allow_pickle=False)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, outputs)


def test_accept_picks_the_first_supported_type() -> None:
    assert codecs.negotiate("text/html, text/csv;q=0.9, application/json") == "text/csv"
    assert codecs.negotiate("application/*") == "application/json"
    assert codecs.negotiate("application/json; charset=utf-8") == "application/json"


def test_unknown_accept_is_unsupported_media() -> None:
    with pytest.raises(UnsupportedMediaError, match="text/html"):
        codecs.encode([1], "text/html")


def test_outputs_a_type_cannot_carry_are_refused_with_a_hint() -> None:
    with pytest.raises(UnsupportedMediaError, match="application/json"):
        codecs.encode({"a": [1]}, "text/csv")
    with pytest.raises(UnsupportedMediaError, match="application/json"):
        codecs.encode(np.array([{"a": 1}], dtype=object), "application/x-npy")
    with pytest.raises(UnsupportedMediaError, match="2 dimensions"):
        codecs.encode(np.zeros((2, 2, 2)), "text/csv")


def test_npy_header_declaring_a_huge_array_is_invalid_input() -> None:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    with pytest.raises(InvalidInputError, match="too large"):
        codecs.decode(head.getvalue() + b"\0" * 16, "application/x-npy", to_array=True)
