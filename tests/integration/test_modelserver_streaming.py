"""Big line-oriented invocations streamed through a real model server process: hundreds of MB in
and out with the replica's memory flat, rows answered in order, errors where they belong."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import joblib
import numpy as np
import psutil
import pytest
from sklearn.linear_model import LogisticRegression

N_FEATURES = 1000  # wide rows (~19 KB of CSV each) keep the row count, and the time, down
START_TIMEOUT_S = 30.0
MB = 1024 * 1024


@pytest.fixture(scope="module")
def classifier() -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, N_FEATURES))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    return LogisticRegression(max_iter=200).fit(x, y)


class Replica:
    """A model server subprocess serving ``classifier``'s ``predict_proba``."""

    def __init__(self, workdir: Path, model: LogisticRegression) -> None:
        joblib.dump(model, workdir / "model.joblib")
        spec = {"runtime": "sklearn", "artifact": str(workdir / "model.joblib")}
        spec["method"] = "predict_proba"
        (workdir / "model.json").write_text(json.dumps({"name": "m", "spec": spec}))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.log = workdir / "replica.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modelyard.dataplane.modelserver",
                    "--model-spec-file",
                    str(workdir / "model.json"),
                    "--port",
                    str(self.port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # poll until it answers /ping (or give up)
            assert self.proc.poll() is None, f"replica exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, "the replica did not answer /ping in time"
            try:
                if httpx.get(f"{self.url}/ping", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def replica(
    classifier: LogisticRegression, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    server = Replica(tmp_path_factory.mktemp("streaming-replica"), classifier)
    try:
        yield server
    finally:
        server.stop()


class Rows:
    """Distinct rows made cheaply: a few random tails, and a first feature that grows by row, so
    that every row's answer differs from its neighbours' (a row out of place would show)."""

    def __init__(self, n_tails: int = 64) -> None:
        rng = np.random.default_rng(1)
        self.tails = rng.normal(size=(n_tails, N_FEATURES - 1))
        self.tail_text = [",".join(map(repr, tail)) for tail in self.tails.tolist()]

    def features(self, start: int, stop: int) -> np.ndarray:
        index = np.arange(start, stop)
        return np.column_stack([index * 1e-6, self.tails[index % len(self.tails)]])

    def csv(self, start: int, stop: int) -> bytes:
        tails, n = self.tail_text, len(self.tail_text)
        return "".join(f"{i * 1e-6!r},{tails[i % n]}\n" for i in range(start, stop)).encode()

    def jsonlines(self, start: int, stop: int) -> bytes:
        lines = [json.dumps(row) for row in self.features(start, stop).tolist()]
        return ("\n".join(lines) + "\n").encode()


def send_chunked(sock: socket.socket, head: bytes, chunks: Iterator[bytes]) -> None:
    sock.sendall(head)
    for chunk in chunks:
        sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    sock.sendall(b"0\r\n\r\n")


def read_head(stream: BinaryIO) -> tuple[int, dict[str, str]]:
    status = int(stream.readline().split()[1])
    headers = {}
    while line := stream.readline().strip():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def chunked_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a chunked body, as they come."""
    rest = b""
    while size := int(stream.readline(), 16):
        data = rest + stream.read(size)
        assert stream.read(2) == b"\r\n"
        *lines, rest = data.split(b"\n")
        yield from lines
    assert stream.readline() == b"\r\n" and rest == b""


def test_a_big_csv_body_streams_through_in_order_while_the_replica_stays_small(
    replica: Replica, classifier: LogisticRegression
) -> None:
    rows, per_chunk, n_rows = Rows(), 50, 13_500  # about 256 MB of CSV, 1 MB a chunk
    expected: list[np.ndarray] = []
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for start in range(0, n_rows, per_chunk):
            stop = min(start + per_chunk, n_rows)
            expected.append(classifier.predict_proba(rows.features(start, stop)))
            chunk = rows.csv(start, stop)
            sent += len(chunk)
            yield chunk

    # A warm-up, so that what the first big request loads for good is not counted.
    warm = httpx.post(
        f"{replica.url}/invocations",
        content=rows.csv(0, 200),
        headers={"content-type": "text/csv"},
        trust_env=False,
    )
    assert warm.status_code == 200
    before = replica.rss()
    peak = before
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, replica.rss())
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # The client sends while it reads the answer (httpx would send all first, then read): the
    # answer begins after the first megabyte.
    with socket.create_connection(("127.0.0.1", replica.port)) as sock:
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        sender = threading.Thread(target=send_chunked, args=(sock, head, body()))
        sender.start()
        with sock.makefile("rb") as stream:
            status, headers = read_head(stream)
            answers = [line for line in chunked_lines(stream) if line]
        sender.join(60)
    done.set()
    watcher.join()

    assert (status, headers["content-type"], headers["transfer-encoding"]) == (
        200,
        "text/csv",
        "chunked",
    )
    assert sent > 250 * MB
    assert len(answers) == n_rows
    got = np.array([[float(v) for v in line.split(b",")] for line in answers])
    np.testing.assert_allclose(got, np.concatenate(expected), rtol=1e-9, atol=0)
    assert peak - before < 100 * MB, f"RSS grew by {(peak - before) / MB:.0f} MB"


def test_jsonlines_in_jsonlines_out(replica: Replica, classifier: LogisticRegression) -> None:
    rows = Rows()
    body = rows.jsonlines(0, 120)  # over 1 MiB, with a Content-Length: streamed
    assert len(body) > MB
    response = httpx.post(
        f"{replica.url}/invocations",
        content=body,
        headers={
            "content-type": "application/x-jsonlines",
            "x-amzn-sagemaker-custom-attributes": "a=1",
        },
        trust_env=False,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/jsonlines"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["x-amzn-sagemaker-custom-attributes"] == "a=1"
    got = [json.loads(line) for line in response.text.splitlines()]
    np.testing.assert_allclose(got, classifier.predict_proba(rows.features(0, 120)), rtol=1e-9)


def test_accept_csv_answers_jsonlines_input_in_csv(
    replica: Replica, classifier: LogisticRegression
) -> None:
    rows = Rows()

    def body() -> Iterator[bytes]:  # chunked: streamed whatever its size
        for start in range(0, 30, 10):
            yield rows.jsonlines(start, start + 10)

    response = httpx.post(
        f"{replica.url}/invocations",
        content=body(),
        headers={"content-type": "application/jsonlines", "accept": "text/csv"},
        trust_env=False,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv"
    got = np.loadtxt(response.text.splitlines(), delimiter=",", ndmin=2)
    np.testing.assert_allclose(got, classifier.predict_proba(rows.features(0, 30)), rtol=1e-9)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"1,2,3\n" * 2_000_000, "expected 1000 features per row, got 3"),  # the model's check
        (b"a,b\n" + b"1,2\n" * 3_000_000, "malformed CSV: line 1: CSV values must be numbers"),
    ],
    ids=["too-few-features", "header-row"],
)
def test_a_body_bad_from_its_start_gets_the_usual_400(
    replica: Replica, body: bytes, message: str
) -> None:
    assert len(body) > 10 * MB  # streamed, and far more than is read before the answer
    response = httpx.post(
        f"{replica.url}/invocations",
        content=body,
        headers={"content-type": "text/csv"},
        trust_env=False,
    )
    assert response.status_code == 400
    assert response.headers["connection"] == "close"  # the rest of the body was not read
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert message in error["message"]


def test_a_row_bad_later_on_cuts_the_answer_off_and_is_logged_with_its_line(
    replica: Replica,
) -> None:
    rows = Rows()

    def body() -> Iterator[bytes]:
        yield rows.csv(0, 100)  # about 2 MB of good rows: the answer begins
        yield b"1,2,3\n"  # line 101
        yield rows.csv(100, 200)

    with (
        # An incomplete chunked answer (a reset, should the client be slower than the server's
        # lingering close).
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        httpx.stream(
            "POST",
            f"{replica.url}/invocations",
            content=body(),
            headers={"content-type": "text/csv"},
            trust_env=False,
        ) as response,
    ):
        assert response.status_code == 200
        response.read()
    deadline = time.monotonic() + 5
    while "cut off" not in replica.log.read_text():  # poll: it is logged as the answer ends
        assert time.monotonic() < deadline, replica.log.read_text()
        time.sleep(0.02)
    assert "malformed CSV: line 101 has 3 fields, expected 1000" in replica.log.read_text()


def test_accept_json_keeps_a_big_csv_body_buffered_and_answered_as_before(
    replica: Replica, classifier: LogisticRegression
) -> None:
    rows = Rows()
    response = httpx.post(
        f"{replica.url}/invocations",
        content=rows.csv(0, 60),
        headers={"content-type": "text/csv", "accept": "application/json"},
        trust_env=False,
    )
    assert response.status_code == 200
    assert "transfer-encoding" not in response.headers
    got = response.json()["predictions"]
    np.testing.assert_allclose(got, classifier.predict_proba(rows.features(0, 60)), rtol=1e-9)
