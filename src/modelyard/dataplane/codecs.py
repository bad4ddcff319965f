"""Request and response bodies of the replica contract, by media type.

===================== ======================================== ===============================
media type            request body                             response body
===================== ======================================== ===============================
``application/json``  ``{"instances": [...]}``,                ``{"predictions": ...}``
                      ``{"inputs": ...}`` or a bare array
``text/csv``          rows of numbers, no header               one line per row
``application/x-npy`` one ``.npy`` array (no pickles)           one ``.npy`` array
===================== ======================================== ===============================

A missing Content-Type means JSON; a missing Accept, ``*/*`` or ``application/*`` means JSON.
Media-type parameters (``; charset=utf-8``) are ignored. This is the hot path: plain functions,
no validation framework.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from modelyard.errors import InvalidInputError, UnsupportedMediaError

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
MEDIA_TYPES = (JSON, CSV, NPY)

_ANY = ("*/*", "application/*")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def media_type(header: str | None) -> str:
    """The bare, lower-case media type of a Content-Type or Accept entry (parameters dropped)."""
    return header.partition(";")[0].strip().lower() if header else ""


def decode(body: bytes, content_type: str | None, *, to_array: bool) -> Any:
    """The inputs carried by a request body.

    With ``to_array`` the result is a numeric numpy array (JSON numbers become float64, JSON
    ``null`` becomes NaN); without it a JSON body gives the JSON value as is. CSV and NPY always
    give arrays. Raises InvalidInputError for a body that does not parse or is not numeric where
    numbers are needed, UnsupportedMediaError for a media type not listed above.
    """
    media = media_type(content_type) or JSON
    if media == JSON:
        return _decode_json(body, to_array)
    if media == CSV:
        return _decode_csv(body)
    if media == NPY:
        return _decode_npy(body, to_array)
    raise UnsupportedMediaError(
        f"unsupported Content-Type {content_type!r}; supported: {', '.join(MEDIA_TYPES)}"
    )


def negotiate(accept: str | None) -> str:
    """The media type to answer in for an Accept header; UnsupportedMediaError if none fits."""
    if not accept:
        return JSON
    for entry in accept.split(","):
        media = media_type(entry)
        if media in MEDIA_TYPES:
            return media
        if media in _ANY:
            return JSON
    raise UnsupportedMediaError(
        f"cannot answer in Accept {accept!r}; supported: {', '.join(MEDIA_TYPES)}"
    )


def encode(outputs: Any, accept: str | None) -> tuple[bytes, str]:
    """``(body, content_type)`` for a runtime's outputs, in the media type ``accept`` asks for.

    Raises UnsupportedMediaError when ``accept`` names no supported type or the outputs cannot be
    written in it (a mapping as CSV, an object array as NPY), TypeError for outputs JSON cannot
    carry.
    """
    media = negotiate(accept)
    return _ENCODERS[media](outputs), media


def _decode_json(body: bytes, to_array: bool) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"malformed JSON: {exc}") from exc
    if isinstance(value, dict):
        if "instances" in value:
            value = value["instances"]
        elif "inputs" in value:
            value = value["inputs"]
        elif to_array:
            raise InvalidInputError(
                'JSON body must be an array, {"instances": [...]} or {"inputs": ...}'
            )
    if not to_array:
        return value
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"inputs must be numbers in rows of equal length: {exc}") from exc
    if array.ndim == 0 or array.size == 0:
        raise InvalidInputError("inputs must be a non-empty array of rows")
    return array


def _decode_csv(body: bytes) -> np.ndarray[Any, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"malformed CSV: not UTF-8 text: {exc}") from exc
    rows = [line.split(",") for line in text.splitlines() if line.strip()]
    if not rows:
        raise InvalidInputError("malformed CSV: no rows")
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise InvalidInputError(
                f"malformed CSV: row {number} has {len(row)} fields, expected {width}"
            )
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise InvalidInputError(f"CSV values must be numbers, with no header row: {exc}") from exc


def _decode_npy(body: bytes, to_array: bool) -> np.ndarray[Any, Any]:
    try:
        array: np.ndarray[Any, Any] = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"malformed NPY: {exc}") from exc
    except MemoryError as exc:  # a header declaring a shape far beyond the bytes sent
        raise InvalidInputError(f"NPY header declares an array too large to hold: {exc}") from exc
    if to_array and array.dtype.kind not in "biuf":
        raise InvalidInputError(f"NPY inputs must be numeric, got dtype {array.dtype}")
    return array


def _json_default(obj: Any) -> Any:
    # orjson hands over what it cannot write natively: non-contiguous or object arrays, scalars.
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _encode_json(outputs: Any) -> bytes:
    return orjson.dumps({"predictions": outputs}, default=_json_default, option=_JSON_OPTIONS)


def _as_array(outputs: Any, media: str) -> np.ndarray[Any, Any]:
    if isinstance(outputs, dict):
        raise UnsupportedMediaError(
            f"the model answers with several named outputs, which {media} cannot carry; "
            f"ask for {JSON}"
        )
    return np.asarray(outputs)


def _encode_csv(outputs: Any) -> bytes:
    array = _as_array(outputs, CSV)
    if array.ndim > 2:
        raise UnsupportedMediaError(
            f"{CSV} carries at most 2 dimensions, the output has {array.ndim}; ask for {JSON}"
        )
    rows = array.reshape(-1, 1).tolist() if array.ndim < 2 else array.tolist()
    if array.dtype.kind in "biuf":
        return "".join(",".join(map(str, row)) + "\n" for row in rows).encode()
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _encode_npy(outputs: Any) -> bytes:
    array = _as_array(outputs, NPY)
    out = io.BytesIO()
    try:
        np.lib.format.write_array(out, array, allow_pickle=False)
    except ValueError as exc:
        raise UnsupportedMediaError(
            f"{NPY} cannot carry outputs of dtype {array.dtype}; ask for {JSON}"
        ) from exc
    return out.getvalue()


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    JSON: _encode_json,
    CSV: _encode_csv,
    NPY: _encode_npy,
}
