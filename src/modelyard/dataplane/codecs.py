"""Request and response bodies of the replica contract, by media type.

===================== ======================================== ===============================
media type            request body                             response body
===================== ======================================== ===============================
``application/json``  ``{"instances": [...]}``,                ``{"predictions": ...}``
                      ``{"inputs": ...}`` or a bare array
``text/csv``          rows of numbers, no header               one line per row
``application/x-npy`` one ``.npy`` array (no pickles)           one ``.npy`` array
``application/        one JSON value (an input row) per line   one JSON value per output row
jsonlines``
===================== ======================================== ===============================

A missing Content-Type means JSON; a missing Accept, ``*/*`` or ``application/*`` means JSON.
Media-type parameters (``; charset=utf-8``) are ignored; ``application/x-jsonlines`` and
``application/jsonl`` mean ``application/jsonlines``. This is the hot path: plain functions, no
validation framework.

CSV and JSON lines are line-oriented: :func:`decode_lines` and :func:`encode_lines` take any run
of whole lines and the outputs for it, which is how the model server streams big bodies.
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
JSONLINES = "application/jsonlines"
MEDIA_TYPES = (JSON, CSV, NPY, JSONLINES)
#: The media types whose bodies are one input (or output) row per line, and their aliases.
LINE_MEDIA_TYPES = {
    CSV: CSV,
    JSONLINES: JSONLINES,
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
}

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
    if LINE_MEDIA_TYPES.get(media) == JSONLINES:
        inputs = _decode_jsonlines(body, to_array, 1)
        if inputs is None:
            raise InvalidInputError("malformed JSON lines: no rows")
        return inputs
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
        if media in LINE_MEDIA_TYPES:
            return LINE_MEDIA_TYPES[media]
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


def decode_lines(block: bytes, media: str, *, to_array: bool, first_line: int = 1) -> Any:
    """The inputs of a run of whole lines of a line-oriented body (``media`` is CSV or JSON
    lines), one row a line, blank lines skipped; None when it has no row. ``first_line`` (the
    number of the block's first line in the body) goes into error messages."""
    if media == CSV:
        return _decode_csv_block(block, first_line)
    return _decode_jsonlines(block, to_array, first_line)


def encode_lines(outputs: Any, media: str) -> bytes:
    """A line-oriented body (CSV or JSON lines) for the outputs of some rows, one line a row."""
    return _encode_csv(outputs) if media == CSV else _encode_jsonlines(outputs)


def _decode_csv_block(block: bytes, first_line: int) -> np.ndarray[Any, Any] | None:
    if not block.strip():
        return None
    try:  # numpy's C reader: about twice as fast as splitting the lines here
        return np.loadtxt(
            io.StringIO(block.decode("utf-8")),
            delimiter=",",
            dtype=np.float64,
            ndmin=2,
            comments=None,
        )
    except (ValueError, UnicodeDecodeError):
        pass  # find what is wrong, and where (or take what loadtxt does not: a line of spaces)
    rows: list[list[str]] = []
    for number, raw in enumerate(block.splitlines(), start=first_line):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"malformed CSV: line {number}: not UTF-8 text") from exc
        if not line.strip():
            continue
        row = line.split(",")
        if rows and len(row) != len(rows[0]):
            raise InvalidInputError(
                f"malformed CSV: line {number} has {len(row)} fields, expected {len(rows[0])}"
            )
        try:
            [float(value) for value in row]
        except ValueError as exc:
            raise InvalidInputError(
                f"malformed CSV: line {number}: CSV values must be numbers, with no header row: "
                f"{exc}"
            ) from exc
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def _decode_jsonlines(block: bytes, to_array: bool, first_line: int) -> Any:
    rows = []
    for number, line in enumerate(block.splitlines(), start=first_line):
        if line.strip():
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise InvalidInputError(f"malformed JSON lines: line {number}: {exc}") from exc
    if not rows:
        return None
    if not to_array:
        return rows
    try:
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"JSON lines from line {first_line}: inputs must be numbers in rows of equal "
            f"length: {exc}"
        ) from exc


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
        for number, row in enumerate(rows, start=1):  # name the row (only on this error path)
            try:
                [float(value) for value in row]
            except ValueError as row_exc:
                raise InvalidInputError(
                    f"malformed CSV: row {number}: CSV values must be numbers, with no header "
                    f"row: {row_exc}"
                ) from exc
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


def _encode_jsonlines(outputs: Any) -> bytes:
    if isinstance(outputs, dict):  # named outputs, a value per row each: an object per row
        names = list(outputs)
        columns = [_rows(outputs[name]) for name in names]
        if any(len(column) != len(columns[0]) for column in columns):
            raise UnsupportedMediaError(
                f"the model's named outputs have different numbers of rows, which {JSONLINES} "
                f"cannot carry; ask for {JSON}"
            )
        rows: list[Any] = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    else:
        rows = _rows(outputs)
    if not rows:
        return b""
    dump = orjson.dumps
    lines = [dump(row, default=_json_default, option=_JSON_OPTIONS) for row in rows]
    return b"\n".join(lines) + b"\n"


def _rows(outputs: Any) -> list[Any]:
    """A value per row: the rows of an array or the items of a list."""
    if isinstance(outputs, np.ndarray) and outputs.ndim > 0:
        return outputs.tolist()  # type: ignore[no-any-return]
    if isinstance(outputs, list | tuple):
        return list(outputs)
    raise UnsupportedMediaError(
        f"the model answered {type(outputs).__name__}, not a value per row, which {JSONLINES} "
        f"cannot carry; ask for {JSON}"
    )


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
    JSONLINES: _encode_jsonlines,
}
