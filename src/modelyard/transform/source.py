"""Reading a transform job's input: its files, their records, and mini-batches of them.

A record is a line (``split_type: line``), a parquet row, or a whole file (``split_type: none``).
Positions are offsets into the *decompressed* stream (parquet: row numbers), so that a job can
resume at the first record it has not committed, whatever the compression. Files are read in
chunks and never held whole: memory stays flat however large the input.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from modelyard import storage
from modelyard.spec.resources import TransformInputSpec, TransformJobSpec

CHUNK = 1 << 20
#: parquet rows read and converted at a time
PARQUET_SLICE = 4096
#: what each input media type is sent to the model as
REQUEST_MEDIA = {
    "text/csv": "text/csv",
    "application/jsonlines": "application/jsonlines",
    "application/json": "application/json",
    "application/x-npy": "application/x-npy",
    "application/x-parquet": "application/jsonlines",
}
_BLANK_LINE = re.compile(rb"(?m)^[ \t\r\x0b\x0c]*\n")  # lines that are all bytes.isspace()


@dataclass(frozen=True, slots=True)
class InputFile:
    uri: str
    #: the path under the input prefix; results go to ``<output>/<name>.out``
    name: str
    size: int


@dataclass(slots=True)
class Batch:
    """A run of records from one file, sent to the model in one request."""

    file: int
    #: where the batch starts and ends in the (decompressed) file; parquet: row numbers
    start: int
    end: int
    #: the line (or row, from 1) of the first record
    first_line: int
    records: list[bytes]
    #: the line of each record (blank lines are not records but are counted as lines)
    lines: list[int] = field(default_factory=list)
    #: a single record over max_payload_mb: it fails without being sent
    too_large: bool = False
    #: the line (or row) number at ``end``: where a resumed run counts from
    next_line: int = 1


def list_inputs(uri: str) -> list[InputFile]:
    """The files of an input: ``uri`` itself when it is a file, else every file under it (in
    name order; names starting with ``.`` are skipped). Raises FileNotFoundError when none."""
    fs, path = storage.filesystem(uri)
    if fs.isfile(path):
        return [InputFile(uri, posixpath_basename(path), int(fs.size(path) or 0))]
    if not fs.isdir(path):
        raise FileNotFoundError(f"no file or folder at {uri}")
    found = fs.find(path, detail=True)
    root = path.rstrip("/") + "/"
    files = []
    for full, info in sorted(found.items()):
        name = full[len(root) :] if full.startswith(root) else posixpath_basename(full)
        if any(part.startswith(".") for part in name.split("/")):
            continue
        if info.get("type", "file") != "file":
            continue
        files.append(InputFile(storage.join(uri, name), name, int(info.get("size") or 0)))
    if not files:
        raise FileNotFoundError(f"no files under {uri}")
    return files


def posixpath_basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class _Gunzip(gzip.GzipFile):
    """A file's decompressed stream that closes the file too (a GzipFile leaves it open)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def open_stream(file: InputFile, spec: TransformInputSpec) -> IO[bytes]:
    raw = storage.open_read(file.uri)
    if spec.compression == "gzip":
        try:
            return _Gunzip(raw)  # type: ignore[return-value]
        except BaseException:
            raw.close()
            raise
    return raw  # type: ignore[no-any-return]


def check_readable(file: InputFile, spec: TransformInputSpec) -> None:
    """Fail now (not mid-job) on a file that cannot be opened or decompressed, or is not
    parquet."""
    if spec.content_type == "application/x-parquet":
        import pyarrow.parquet as pq

        with storage.open_read(file.uri) as raw:
            pq.ParquetFile(raw).metadata  # noqa: B018  reads and checks the footer
        return
    with open_stream(file, spec) as stream:
        stream.read(1)


def count_records(file: InputFile, spec: TransformInputSpec) -> int:
    """The records of a file (one pass over it; parquet: its footer)."""
    if spec.split_type == "none":
        return 1
    if spec.content_type == "application/x-parquet":
        import pyarrow.parquet as pq

        with storage.open_read(file.uri) as raw:
            return int(pq.ParquetFile(raw).metadata.num_rows)
    count = 0
    pending: bool | None = None  # the line not ended yet: None (none), or whether it is blank
    with open_stream(file, spec) as stream:
        while chunk := stream.read(CHUNK):
            first = chunk.find(b"\n")
            if first < 0:  # the pending line goes on (it may be long: only its blankness is kept)
                blank = chunk.isspace()
                pending = blank if pending is None else pending and blank
                continue
            head = chunk[:first]
            blank = not head or head.isspace()
            count += not (blank if pending is None else pending and blank)
            last = chunk.rfind(b"\n")
            middle = chunk[first + 1 : last + 1]
            count += middle.count(b"\n") - len(_BLANK_LINE.findall(middle))
            rest = chunk[last + 1 :]
            pending = rest.isspace() if rest else None
    return count + (pending is False)


def batches(
    index: int, file: InputFile, job: TransformJobSpec, start: int, first_line: int
) -> Iterator[Batch]:
    """The mini-batches of one file, from ``start`` (a position a previous batch ended at)."""
    spec = job.input
    limit = job.max_payload_mb * 1_000_000
    if spec.split_type == "none":
        yield from _whole_file(index, file, spec, start, limit)
    elif spec.content_type == "application/x-parquet":
        yield from _parquet_batches(index, file, job, start, limit)
    else:
        yield from _line_batches(index, file, job, start, first_line, limit)


def _whole_file(
    index: int, file: InputFile, spec: TransformInputSpec, start: int, limit: int
) -> Iterator[Batch]:
    if start > 0:
        return  # the file's one record was committed (a job resuming as it finished the file)
    with open_stream(file, spec) as stream:
        body = stream.read(limit + 1)
        size = len(body)
        if size > limit:
            body = b""
            while chunk := stream.read(CHUNK):
                size += len(chunk)
    yield Batch(index, 0, size, 1, [body], [1], too_large=size > limit, next_line=2)


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[bytes | None, int]]:
    """The lines of a stream (without their line end) and the bytes each takes (with it). A
    line longer than ``limit`` comes as None: it is skipped, never held whole."""
    tail = b""
    skipped = -1  # while skipping a line longer than the limit: its bytes so far
    while chunk := stream.read(CHUNK):
        if skipped >= 0:
            cut = chunk.find(b"\n")
            if cut < 0:
                skipped += len(chunk)
                continue
            yield None, skipped + cut + 1
            skipped = -1
            chunk = chunk[cut + 1 :]
        elif tail:
            chunk = tail + chunk  # tail is at most ``limit`` bytes
        parts = chunk.split(b"\n")
        tail = parts.pop()
        for line in parts:
            yield line, len(line) + 1
        if len(tail) > limit:
            skipped, tail = len(tail), b""
    if skipped >= 0:
        yield None, skipped
    elif tail:
        yield tail, len(tail)  # the last line, without a line end


def _line_batches(
    index: int, file: InputFile, job: TransformJobSpec, start: int, first_line: int, limit: int
) -> Iterator[Batch]:
    single = job.batch_strategy == "single_record"
    with open_stream(file, job.input) as stream:
        _skip(stream, start)
        pos = start  # where the next unread line starts
        line_no = first_line
        records: list[bytes] = []
        lines: list[int] = []
        size = 0
        batch_start = pos
        for line, width in _lines(stream, limit):
            if line is not None:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line or line.isspace():
                    pos += width
                    line_no += 1
                    if not records:
                        batch_start = pos
                    continue
            too_large = line is None or len(line) + 1 > limit
            if records and (too_large or single or size + len(line or b"") + 1 > limit):
                yield Batch(index, batch_start, pos, lines[0], records, lines, next_line=line_no)
                records, lines, size, batch_start = [], [], 0, pos
            if too_large or line is None:
                yield Batch(
                    index,
                    pos,
                    pos + width,
                    line_no,
                    [b""],
                    [line_no],
                    too_large=True,
                    next_line=line_no + 1,
                )
                pos += width
                line_no += 1
                batch_start = pos
                continue
            records.append(line)
            lines.append(line_no)
            size += len(line) + 1
            pos += width
            line_no += 1
        if records:
            yield Batch(index, batch_start, pos, lines[0], records, lines, next_line=line_no)


def _skip(stream: IO[bytes], count: int) -> None:
    if count <= 0:
        return
    try:
        stream.seek(count)
        return
    except (OSError, ValueError, AttributeError):
        pass
    while count > 0:  # a stream that cannot seek: read past
        chunk = stream.read(min(CHUNK, count))
        if not chunk:
            raise EOFError("the input file is shorter than when the job began")
        count -= len(chunk)


def _parquet_batches(
    index: int, file: InputFile, job: TransformJobSpec, start: int, limit: int
) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    single = job.batch_strategy == "single_record"
    with storage.open_read(file.uri) as raw:
        parquet = pq.ParquetFile(raw)
        row = 0
        records: list[bytes] = []
        lines: list[int] = []
        size = 0
        batch_start = start
        for group in range(parquet.num_row_groups):
            rows_in_group = parquet.metadata.row_group(group).num_rows
            if row + rows_in_group <= start:
                row += rows_in_group
                continue
            # Read in slices of a row group, converted a slice at a time.
            for piece in parquet.iter_batches(batch_size=PARQUET_SLICE, row_groups=[group]):
                if row + piece.num_rows <= start:
                    row += piece.num_rows
                    continue
                columns = [column.to_pylist() for column in piece.columns]
                for values in zip(*columns, strict=True):
                    if row < start:
                        row += 1
                        continue
                    record = orjson.dumps(list(values), default=_json_default)
                    if records and (single or size + len(record) + 1 > limit):
                        yield Batch(
                            index, batch_start, row, lines[0], records, lines, next_line=row + 1
                        )
                        records, lines, size, batch_start = [], [], 0, row
                    records.append(record)
                    lines.append(row + 1)
                    size += len(record) + 1
                    row += 1
        if records:
            yield Batch(index, batch_start, row, lines[0], records, lines, next_line=row + 1)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)
