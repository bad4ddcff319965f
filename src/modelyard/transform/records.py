"""What a transform job does to records around the model call: input filters, splitting the
model's answer into one output per record, joining with the input, output filters.

As SageMaker's DataProcessing: filters are JSONPath; a CSV record is the array of its columns
(``$[1:]`` drops the first); joining appends the output's columns to a CSV record, and puts the
output under ``SageMakerOutput`` in a JSON object (or appends it to a JSON array).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from modelyard.spec.resources import TransformJobSpec

JOIN_KEY = "SageMakerOutput"


class RecordError(ValueError):
    """A record (or an answer) that cannot be processed as asked."""


class Selector:
    """A compiled JSONPath filter.

    As JSONPath defines it, a *definite* path (only single names and single indices:
    ``$.features``, ``$[0]``) selects a value; any other (slices, lists of indices, wildcards:
    ``$[1:]``, ``$[0,-1]``) selects an array, even of one value or when every match is the same;
    a list of names (``$['id','SageMakerOutput']``) selects an object of those found.
    """

    def __init__(self, expression: str) -> None:
        from jsonpath_ng.ext import parse  # type: ignore[attr-defined]

        self.expression = expression
        self._path: Any = parse(expression)
        self._definite = _definite(self._path)
        last: Any = getattr(self._path, "right", self._path)
        self._names = _is_fields(last) and len(last.fields) > 1

    def select(self, value: Any) -> Any:
        matches = self._path.find(value)
        if not matches:
            raise RecordError(f"the filter {self.expression!r} selects nothing in {value!r:.200}")
        if self._definite:
            return matches[0].value
        if self._names:
            return {str(m.path.fields[0]): m.value for m in matches}
        return [m.value for m in matches]


def _is_fields(node: Any) -> bool:
    from jsonpath_ng import Fields

    return isinstance(node, Fields)


def _definite(node: Any) -> bool:
    """Whether a parsed JSONPath can select at most one value."""
    from jsonpath_ng import Child, Index, Root, This

    if isinstance(node, Child):
        return _definite(node.left) and _definite(node.right)
    if isinstance(node, Root | This):
        return True
    if _is_fields(node):
        return len(node.fields) == 1 and node.fields[0] != "*"
    return isinstance(node, Index) and len(node.indices) == 1


def csv_fields(line: bytes) -> list[str]:
    text = line.decode("utf-8")
    if '"' not in text:
        return text.split(",")
    return next(csv.reader([text]))


def csv_line(value: Any) -> bytes:
    fields = value if isinstance(value, list) else [value]
    if all(isinstance(f, str) and '"' not in f and "," not in f for f in fields):
        return ",".join(fields).encode("utf-8")
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(_csv_cell(f) for f in fields)
    return out.getvalue().encode("utf-8")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


class Processing:
    """A job's data processing, compiled once."""

    def __init__(self, job: TransformJobSpec) -> None:
        dp = job.data_processing
        self.csv = job.input.content_type == "text/csv"
        self.input_filter = Selector(dp.input_filter) if dp.input_filter else None
        self.output_filter = Selector(dp.output_filter) if dp.output_filter else None
        self.join = dp.join_source == "input"
        self.accept = job.output_accept
        #: whether the answer must be split into one output per record
        self.per_record = bool(self.input_filter or self.output_filter or self.join)
        self.lines = job.assemble_lines
        #: a JSON answer assembled by line: one line per record (its ``predictions`` split)
        self.split_json = self.lines and self.accept == "application/json"

    def request_records(self, records: list[bytes]) -> list[bytes]:
        """The records as sent to the model (after the input filter)."""
        if self.input_filter is None:
            return records
        return [self._filtered(record, self.input_filter) for record in records]

    def _filtered(self, record: bytes, selector: Selector) -> bytes:
        if self.csv:
            return csv_line(selector.select(csv_fields(record)))
        return orjson.dumps(selector.select(_json(record)))

    def outputs(self, answer: bytes, count: int) -> list[bytes]:
        """The model's answer to ``count`` records, one output per record."""
        if self.accept == "application/json":
            try:
                parsed = orjson.loads(answer)
            except orjson.JSONDecodeError as exc:
                raise RecordError(f"the model's answer is not JSON: {exc}") from exc
            items = parsed.get("predictions") if isinstance(parsed, dict) else parsed
            if not isinstance(items, list):
                items = [parsed]
            if len(items) != count and count == 1:
                items = [items]
            outs = [orjson.dumps(item) for item in items]
        else:
            outs = answer.splitlines()
            if outs and not outs[-1].strip():
                outs.pop()
        if len(outs) != count:
            raise RecordError(
                f"the model answered {len(outs)} records for {count}; join_source and filters "
                "need one output per record"
            )
        return outs

    def written(self, record: bytes, output: bytes) -> bytes:
        """What is written for one record: joined with its input when asked, filtered."""
        if self.csv:
            if self.join:
                fields: Any = csv_fields(record) + csv_fields(output)
                if self.output_filter is None:
                    return record + b"," + output
            else:
                if self.output_filter is None:
                    return output
                fields = csv_fields(output)
            assert self.output_filter is not None
            return csv_line(self.output_filter.select(fields))
        value: Any = _json(output) if self.accept != "text/csv" else output.decode("utf-8")
        if self.join:
            source = _json(record)
            if isinstance(source, dict):
                value = {**source, JOIN_KEY: value}
            elif isinstance(source, list):
                value = [*source, value]
            else:
                value = {"SageMakerInput": source, JOIN_KEY: value}
        if self.output_filter is not None:
            value = self.output_filter.select(value)
        return orjson.dumps(value)

    def assemble(self, records: list[bytes], answer: bytes) -> bytes:
        """What a mini-batch adds to its file's output."""
        if self.split_json and not self.per_record:
            return b"".join(out + b"\n" for out in self.outputs(answer, len(records)))
        if not self.per_record:
            if self.lines and answer and not answer.endswith(b"\n"):
                return answer + b"\n"
            return answer
        outs = self.outputs(answer, len(records))
        return b"".join(self.written(r, o) + b"\n" for r, o in zip(records, outs, strict=True))


def _json(record: bytes) -> Any:
    try:
        return orjson.loads(record)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not a JSON value: {exc}") from exc
