"""Transform jobs' parts without a server: reading records into mini-batches (and resuming
them), data processing (filters, joining, splitting the model's answer), and the spec's rules."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelyard.errors import SpecError
from modelyard.spec import parse_document
from modelyard.spec.resources import TransformJobSpec
from modelyard.transform import source
from modelyard.transform.records import Processing, RecordError, Selector, csv_fields, csv_line
from modelyard.transform.source import Batch, InputFile


def spec(**fields: Any) -> TransformJobSpec:
    inputs = fields.pop("input", {})
    output = fields.pop("output", {})
    return TransformJobSpec.model_validate(
        {
            "model": "m",
            "input": {"uri": "/in", **inputs},
            "output": {"uri": "/out", **output},
            **fields,
        }
    )


def input_file(path: Path) -> InputFile:
    return InputFile(str(path), path.name, path.stat().st_size)


def read(path: Path, job: TransformJobSpec, start: int = 0, line: int = 1) -> list[Batch]:
    return list(source.batches(0, input_file(path), job, start, line))


def records(batches: list[Batch]) -> list[tuple[int, bytes]]:
    return [(n, r) for b in batches for n, r in zip(b.lines, b.records, strict=True)]


# -- source: files and records ---------------------------------------------------------------
MESSY = b"1,2\r\n\r\n3,4\n   \n5,6\r\n7,8"  # CRLF, blank lines, no line end at the end


def test_line_numbers_count_blank_lines_and_records_drop_crlf(tmp_path: Path) -> None:
    path = tmp_path / "messy.csv"
    path.write_bytes(MESSY)

    batches = read(path, spec(batch_strategy="single_record"))

    assert records(batches) == [(1, b"1,2"), (3, b"3,4"), (5, b"5,6"), (6, b"7,8")]
    assert [b.first_line for b in batches] == [1, 3, 5, 6]
    assert source.count_records(input_file(path), spec().input) == 4
    assert batches[-1].end == len(MESSY)


def test_the_record_count_agrees_with_the_records_read(tmp_path: Path) -> None:
    path = tmp_path / "spaces.csv"
    path.write_bytes(b"1\n \t\n\x0c\n\x0b\r\n2\n\n3\n  ")  # whitespace lines are not records

    assert records(read(path, spec())) == [(1, b"1"), (5, b"2"), (7, b"3")]
    assert source.count_records(input_file(path), spec().input) == 3


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_resuming_at_a_batch_end_reads_exactly_the_remaining_records(
    tmp_path: Path, compression: str
) -> None:
    data = MESSY + b"\n\n" + b"".join(b"%d,%d\r\n" % (n, n) for n in range(8, 20))
    path = tmp_path / "data.csv"
    path.write_bytes(gzip.compress(data) if compression == "gzip" else data)
    job = spec(batch_strategy="single_record", input={"compression": compression})

    batches = read(path, job)

    assert len(batches) == 16
    everything = records(batches)
    for i, batch in enumerate(batches):
        rest = read(path, job, batch.end, batch.next_line)
        assert records(rest) == everything[sum(len(b.records) for b in batches[: i + 1]) :]


def test_gzip_input_gives_the_same_batches_as_plain(tmp_path: Path) -> None:
    data = b"".join(b"%d,1.5\n" % n for n in range(1000))
    plain, packed = tmp_path / "a.csv", tmp_path / "a.csv.gz"
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    job = spec(batch_strategy="single_record")
    gz_job = spec(batch_strategy="single_record", input={"compression": "gzip"})

    assert records(read(packed, gz_job)) == records(read(plain, job))
    assert source.count_records(input_file(packed), gz_job.input) == 1000


def test_multi_record_batches_are_cut_at_max_payload(tmp_path: Path) -> None:
    line = b"x" * 299_999  # with its line end, 300 kB: three fit in 1 MB, four do not
    path = tmp_path / "big.jsonl"
    path.write_bytes((line + b"\n") * 10)

    batches = read(path, spec(max_payload_mb=1, input={"content_type": "application/jsonlines"}))

    assert [len(b.records) for b in batches] == [3, 3, 3, 1]
    assert [b.lines for b in batches] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    assert all(b.end - b.start == 300_000 * len(b.records) for b in batches)
    assert [b.start for b in batches[1:]] == [b.end for b in batches[:-1]]


def test_a_record_over_max_payload_is_a_batch_of_its_own_marked_too_large(
    tmp_path: Path,
) -> None:
    path = tmp_path / "huge.csv"
    path.write_bytes(b"1,2\n3,4\n" + b"9" * 1_000_001 + b"\n5,6\n")

    batches = read(path, spec(max_payload_mb=1))

    assert [(b.lines, b.too_large) for b in batches] == [
        ([1, 2], False),
        ([3], True),
        ([4], False),
    ]
    assert batches[2].records == [b"5,6"]
    assert source.count_records(input_file(path), spec().input) == 4


def test_a_line_far_over_max_payload_is_skipped_not_held(tmp_path: Path) -> None:
    # 20 MB without a line end (a JSON array given as JSON lines, or CR-only line ends): read
    # past in chunks, one too-large record, and the lines after it read as usual.
    path = tmp_path / "long.csv"
    with open(path, "wb") as fh:
        fh.write(b"1,2\n")
        for _ in range(20):
            fh.write(b"9," * 500_000)
        fh.write(b"\n3,4\n5,6")

    batches = read(path, spec(max_payload_mb=1))

    assert [(b.lines, b.too_large) for b in batches] == [([1], False), ([2], True), ([3, 4], False)]
    assert batches[1].records == [b""]  # nothing of it is kept
    assert batches[1].end - batches[1].start == 20_000_001
    assert source.count_records(input_file(path), spec().input) == 4
    # Resuming after it reads the rest.
    rest = read(path, spec(max_payload_mb=1), batches[1].end, batches[1].next_line)
    assert records(rest) == [(3, b"3,4"), (4, b"5,6")]


def test_split_none_reads_each_file_as_one_record(tmp_path: Path) -> None:
    body = b'{"instances": [[1, 2], [3, 4]]}\n'
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    small.write_bytes(body)
    big.write_bytes(b" " * 1_000_001)
    job = spec(max_payload_mb=1, input={"content_type": "application/json", "split_type": "none"})

    (whole,) = read(small, job)
    (too_big,) = read(big, job)

    assert whole.records == [body] and not whole.too_large
    assert too_big.too_large and too_big.records == [b""]
    assert source.count_records(input_file(big), job.input) == 1
    # A job resuming after the file's one record was committed reads nothing more of it.
    assert read(small, job, whole.end, whole.next_line) == []


def test_empty_files_have_no_records(tmp_path: Path) -> None:
    empty, packed = tmp_path / "empty.csv", tmp_path / "empty.csv.gz"
    empty.write_bytes(b"")
    packed.write_bytes(gzip.compress(b""))
    job = spec(input={"compression": "gzip"})

    assert read(empty, spec()) == []
    assert read(packed, job) == []
    assert source.count_records(input_file(packed), job.input) == 0
    source.check_readable(input_file(packed), job.input)


def test_list_inputs_in_name_order_with_subfolders_and_without_hidden_files(
    tmp_path: Path,
) -> None:
    for name in ("b.csv", "a.csv", "sub/c.csv", ".hidden", ".dir/d.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1\n")

    found = source.list_inputs(str(tmp_path))

    assert [f.name for f in found] == ["a.csv", "b.csv", "sub/c.csv"]
    assert source.list_inputs(str(tmp_path / "a.csv"))[0].name == "a.csv"
    with pytest.raises(FileNotFoundError):
        source.list_inputs(str(tmp_path / "missing"))
    (tmp_path / "only-hidden").mkdir()
    (tmp_path / "only-hidden" / ".x").write_text("1\n")
    with pytest.raises(FileNotFoundError, match="no files"):
        source.list_inputs(str(tmp_path / "only-hidden"))


def test_check_readable_refuses_data_that_is_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_bytes(b"1,2\n")
    with pytest.raises(OSError):
        source.check_readable(input_file(path), spec(input={"compression": "gzip"}).input)


def test_parquet_rows_resume_at_a_batch_end(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": list(range(10)), "b": ["x"] * 10}), path, row_group_size=4)
    job = spec(batch_strategy="single_record", input={"content_type": "application/x-parquet"})

    batches = read(path, job)

    assert records(batches) == [(n + 1, b'[%d,"x"]' % n) for n in range(10)]
    assert source.count_records(input_file(path), job.input) == 10
    rest = read(path, job, batches[5].end, batches[5].next_line)
    assert records(rest) == records(batches)[6:]


# -- records: filters, joining, answers ------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "value", "selected"),
    [
        ("$[1:]", ["id", "a", "b"], ["a", "b"]),
        ("$[1:]", ["id", "a"], ["a"]),  # a slice selects an array, even of one column
        ("$[0,-1]", ["id", "a", "b"], ["id", "b"]),
        ("$[-1]", ["id", "a", "b"], "b"),
        ("$.features", {"id": 1, "features": [1, 2]}, [1, 2]),
        ("$.a.b[0]", {"a": {"b": [7, 8]}}, 7),
        ("$[*]", [5], [5]),
        (
            "$['id','SageMakerOutput']",
            {"id": 1, "SageMakerOutput": 0, "x": 2},
            {"id": 1, "SageMakerOutput": 0},
        ),
        ("$['id','SageMakerOutput']", {"SageMakerOutput": 0}, {"SageMakerOutput": 0}),
        ("$", [1, 2], [1, 2]),
    ],
)
def test_selector_selects_as_jsonpath_does(expression: str, value: Any, selected: Any) -> None:
    assert Selector(expression).select(value) == selected


def test_selector_that_selects_nothing_is_a_record_error() -> None:
    with pytest.raises(RecordError, match=r"'\$\.features' selects nothing"):
        Selector("$.features").select({"id": 1})


def test_csv_fields_and_lines_keep_quoted_commas() -> None:
    assert csv_fields(b'a,"b,c",d') == ["a", "b,c", "d"]
    assert csv_line(["a", "b,c"]) == b'a,"b,c"'
    assert csv_line("x") == b"x"
    assert csv_line(["1", "2"]) == b"1,2"


def test_csv_input_filter_drops_the_id_column() -> None:
    proc = Processing(spec(data_processing={"input_filter": "$[1:]"}))
    assert proc.request_records([b"7,1,2", b"8,3"]) == [b"1,2", b"3"]


def test_json_input_filter_keeps_a_one_feature_row_a_row() -> None:
    proc = Processing(
        spec(
            input={"content_type": "application/jsonlines"},
            data_processing={"input_filter": "$[1:]"},
        )
    )
    assert proc.request_records([b"[7, 1.5]", b"[8, 2.5]"]) == [b"[1.5]", b"[2.5]"]
    with pytest.raises(RecordError):
        proc.request_records([b"[7]"])  # no column left to send


def test_csv_join_appends_the_output_and_the_output_filter_picks_columns() -> None:
    joined = Processing(spec(data_processing={"join_source": "input"}))
    assert joined.assemble([b"7,1,2", b"8,3,4"], b"0\n1\n") == b"7,1,2,0\n8,3,4,1\n"
    picked = Processing(
        spec(
            data_processing={
                "input_filter": "$[1:]",
                "join_source": "input",
                "output_filter": "$[0,-1]",
            }
        )
    )
    assert picked.assemble([b"7,1,2", b"8,3,4"], b"0.1,0.9\n0.8,0.2\n") == b"7,0.9\n8,0.2\n"


def test_json_join_puts_the_output_under_sagemaker_output() -> None:
    proc = Processing(
        spec(
            input={"content_type": "application/jsonlines"},
            data_processing={"join_source": "input"},
        )
    )
    lines = [b'{"id": 1}', b"[1, 2]", b'"text"']
    written = proc.assemble(lines, b"[0.5]\n1\n{}\n").splitlines()
    assert [orjson.loads(w) for w in written] == [
        {"id": 1, "SageMakerOutput": [0.5]},
        [1, 2, 1],
        {"SageMakerInput": "text", "SageMakerOutput": {}},
    ]


@pytest.mark.parametrize(
    ("accept", "answer", "outputs"),
    [
        ("text/csv", b"0.1,0.9\n0.8,0.2\n", [b"0.1,0.9", b"0.8,0.2"]),
        ("application/jsonlines", b'{"a": 1}\n[2]\n', [b'{"a": 1}', b"[2]"]),
        ("application/json", b'{"predictions": [[0.1], {"a": 1}]}', [b"[0.1]", b'{"a":1}']),
        ("application/json", b"[3, 4]", [b"3", b"4"]),
    ],
)
def test_the_models_answer_is_split_into_one_output_per_record(
    accept: str, answer: bytes, outputs: list[bytes]
) -> None:
    proc = Processing(
        spec(
            input={"content_type": "application/jsonlines"},
            output={"accept": accept},
            data_processing={"join_source": "input"},
        )
    )
    assert proc.outputs(answer, 2) == outputs


def test_one_record_answered_with_a_list_is_one_output() -> None:
    proc = Processing(
        spec(input={"content_type": "application/jsonlines"}, output={"accept": "application/json"})
    )
    assert proc.outputs(b'{"predictions": [0.1, 0.9]}', 1) == [b"[0.1,0.9]"]


def test_an_answer_with_another_number_of_records_is_an_error() -> None:
    proc = Processing(spec(data_processing={"join_source": "input"}))
    with pytest.raises(RecordError, match="answered 1 records for 2"):
        proc.assemble([b"1,2", b"3,4"], b"0\n")


def test_without_processing_the_answer_is_written_as_is_line_ended() -> None:
    proc = Processing(spec())
    assert proc.assemble([b"1", b"2"], b"0\n1") == b"0\n1\n"
    whole = Processing(spec(input={"content_type": "application/json", "split_type": "none"}))
    assert whole.assemble([b"{}"], b'{"predictions": [1]}') == b'{"predictions": [1]}'


def test_a_json_answer_assembled_by_line_is_one_line_per_record() -> None:
    proc = Processing(spec(output={"accept": "application/json"}))  # CSV in, JSON out, by line
    answer = b'{"predictions": [[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]]}'
    assert proc.assemble([b"1", b"2", b"3"], answer) == b"[0.1,0.9]\n[0.7,0.3]\n[0.5,0.5]\n"
    with pytest.raises(RecordError, match="answered 1 records for 2"):
        proc.assemble([b"1", b"2"], b'{"predictions": [[0.1, 0.9]]}')


# -- the spec's rules ------------------------------------------------------------------------
def parse_error(spec_fields: dict[str, Any]) -> SpecError:
    doc = {
        "kind": "TransformJob",
        "name": "t",
        "spec": {"model": "m", "input": {"uri": "/in"}, "output": {"uri": "/out"}, **spec_fields},
    }
    with pytest.raises(SpecError) as caught:
        parse_document(doc)
    return caught.value


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (
            {"input": {"uri": "/in", "content_type": "application/x-npy"}},
            "spec.input",
            "split_type must be none",
        ),
        (
            {"input": {"uri": "/in", "content_type": "application/json"}},
            "spec.input",
            "split_type must be none",
        ),
        (
            {
                "input": {
                    "uri": "/in",
                    "content_type": "application/x-parquet",
                    "compression": "gzip",
                }
            },
            "spec.input",
            "compression must be none",
        ),
        (
            {"input": {"uri": "/in", "content_type": "text/plain"}},
            "spec.input.content_type",
            "text/csv",
        ),
        (
            {
                "input": {"uri": "/in", "content_type": "application/json", "split_type": "none"},
                "data_processing": {"join_source": "input"},
            },
            "spec",
            "need input.split_type line",
        ),
        (
            {"data_processing": {"input_filter": "$[1:"}},
            "spec.data_processing.input_filter",
            "not a JSONPath",
        ),
        (
            {"data_processing": {"output_filter": "$$x"}},
            "spec.data_processing.output_filter",
            "not a JSONPath",
        ),
        (
            {
                "output": {"uri": "/out", "accept": "application/x-npy"},
                "data_processing": {"join_source": "input"},
            },
            "spec",
            "output.accept",
        ),
        (
            {
                "output": {"uri": "/out", "assemble_with": "none"},
                "data_processing": {"join_source": "input"},
            },
            "spec",
            "assemble_with must be line",
        ),
        ({"model_client": {"max_retries": 4}}, "spec.model_client.max_retries", "3"),
        ({"input": {"uri": "https://example.com/x"}}, "spec.input.uri", "web addresses"),
    ],
)
def test_spec_rules_name_the_offending_field(
    fields: dict[str, Any], field: str, words: str
) -> None:
    error = parse_error(fields)
    assert error.field == field
    assert words in str(error)


def test_valid_combinations_are_accepted() -> None:
    npy = spec(input={"content_type": "application/x-npy", "split_type": "none"})
    assert npy.output_accept == "application/json" and not npy.assemble_lines
    jsonl = spec(
        input={"content_type": "application/jsonlines"},
        data_processing={
            "input_filter": "$.features",
            "output_filter": "$['id','SageMakerOutput']",
        },
    )
    assert jsonl.output_accept == "application/jsonlines" and jsonl.assemble_lines
    assert (
        spec(input={"content_type": "application/x-parquet"}).output_accept
        == "application/jsonlines"
    )


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13])
def test_lines_and_counts_do_not_depend_on_where_reads_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    data = b"1,2\r\n\r\n  \t\n3,4\n\x0b\n55,66,77\n \n8,9\r\n"
    path = tmp_path / "chunks.csv"
    path.write_bytes(data + b"10,11")
    expected = read(path, spec(max_payload_mb=1))
    monkeypatch.setattr(source, "CHUNK", chunk)

    assert read(path, spec(max_payload_mb=1)) == expected
    assert records(expected) == [
        (1, b"1,2"),
        (4, b"3,4"),
        (6, b"55,66,77"),
        (8, b"8,9"),
        (9, b"10,11"),
    ]
    assert source.count_records(input_file(path), spec().input) == 5
    path.write_bytes(data + b"  ")  # a last line of spaces is no record
    assert source.count_records(input_file(path), spec().input) == 4


# -- the runner's replica choice -------------------------------------------------------------
def test_batches_go_only_to_replicas_that_answer_ping(tmp_path: Path) -> None:
    """A replacement replica is recorded as it starts (so it is stopped whatever happens) but
    is sent nothing until it is ready: a request refused by a replica still loading would cost
    a record its tries."""
    from modelyard.controlplane.store.repo import Store
    from modelyard.executors.base import ReplicaProcess
    from modelyard.executors.memory import MemoryExecutor
    from modelyard.transform.runner import JobRun, Replica, TransformRunner

    runner = TransformRunner(Store("sqlite://"), MemoryExecutor(), tmp_path, tmp_path)
    run = JobRun(runner, "job")

    async def scenario() -> None:
        run.ready = asyncio.Condition()
        loading = Replica("r1", ReplicaProcess(1, 0.0, "http://127.0.0.1:1"), tmp_path / "r1.log")
        run.replicas[loading.id] = loading
        with pytest.raises(TimeoutError):  # nothing ready: the sender waits
            await asyncio.wait_for(run.acquire(), 0.2)
        loading.ready = True
        async with run.ready:
            run.ready.notify_all()
        chosen = await asyncio.wait_for(run.acquire(), 5)
        assert chosen is loading and chosen.outstanding == 1

    asyncio.run(scenario())


def test_a_spool_shorter_than_committed_fails_the_job_instead_of_padding(tmp_path: Path) -> None:
    from modelyard.transform.pipeline import JobFailed, Pipeline

    spool = tmp_path / ".a.csv.out.job.partial"
    spool.write_bytes(b"0\n1\n2\n")
    with Pipeline._reopen(spool, 4) as fh:  # a resumed run: the committed bytes are kept
        fh.write(b"9\n")
    assert spool.read_bytes() == b"0\n1\n9\n"
    with pytest.raises(JobFailed, match="shorter than the 100 bytes"):
        Pipeline._reopen(spool, 100)
    assert spool.read_bytes() == b"0\n1\n9\n"  # never padded with zeros
