"""The model server: Modelyard's replica for the built-in runtimes.

It loads one model before it serves, then answers the replica contract over HTTP (or a Unix
socket): ``GET /ping`` (also ``/health``) is 200 once the model is loaded, ``POST /invocations``
decodes the body by Content-Type, runs ``runtime.predict`` in a worker thread and encodes the
answer by Accept. Errors are ``{"error": {"code", "message"}}`` with the error's HTTP status; an
exception from the model is 424 ``model_error``. ``GET /metrics`` has request counts and batch
sizes in Prometheus' text format. This is the hot path, so no framework: a request handler on
the data plane's own small HTTP server (:mod:`modelyard.dataplane.http`).

Big line-oriented bodies are streamed, never held whole: an invocation whose Content-Type is
``text/csv`` or ``application/jsonlines`` (also ``application/x-jsonlines``,
``application/jsonl``) and whose body is over 1 MiB (or chunked, with no Content-Length), up to
1 GiB, is read as it arrives and cut at line ends into runs of about 1 MiB; each run is decoded
and predicted in one model call (in a worker thread; the batcher is not involved) and its
outputs sent at once, one line a row and in the order of the input, in a chunked answer: CSV for
``Accept: text/csv``, JSON lines for ``application/jsonlines``, and the input's own type when
Accept is missing or ``*/*``. (An Accept that asks for JSON or NPY keeps such a body buffered and
answered as before.) The first run is predicted before the answer begins, so a body that is bad
from its start gets the usual error answer (400 invalid input, 424 model error, 413 over the
limit); a later run that fails cuts the answer off (the connection ends without the last chunk,
so the client sees it incomplete) and is logged with the numbers of its lines.

Run it as ``python -m modelyard.dataplane.modelserver --model-spec-file PATH --port N``; the spec
file is JSON ``{"name": ..., "spec": {...ModelSpec...}, "batching": {...} or null}``. Exit
status: 0 after SIGTERM, 1 when it cannot start (say, the port is taken), 3 when the model
cannot be loaded (a bad spec, a missing or corrupt artifact, a missing dependency): the
supervisor must not retry that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

import fsspec
import pydantic
from fsspec.implementations.local import LocalFileSystem
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from modelyard.dataplane import bundle, codecs, http
from modelyard.dataplane.batching import Batcher, call_model
from modelyard.dataplane.http import (
    Answer,
    BodyStream,
    Headers,
    HttpServer,
    Request,
    StreamedAnswer,
    serve_until_signalled,
)
from modelyard.errors import (
    InvalidInputError,
    ModelInvocationError,
    ModelyardError,
    RuntimeLoadError,
    SpecError,
)
from modelyard.runtimes import Runtime, get_runtime_class
from modelyard.spec import BatchingSpec, ModelSpec

EXIT_STARTUP_FAILED = 1
EXIT_LOAD_FAILED = 3

_JSON = codecs.JSON.encode()
_JSON_HEADERS = ((b"content-type", _JSON),)
_BUNDLE_HEADERS = ((b"content-type", bundle.CONTENT_TYPE),)
_METRICS_HEADERS = ((b"content-type", CONTENT_TYPE_LATEST.encode()),)
_MEDIA_BYTES = {media: media.encode() for media in codecs.MEDIA_TYPES}
_CUSTOM_ATTRIBUTES = b"x-amzn-sagemaker-custom-attributes"
_PING = b'{"status":"ok"}'
_DRAIN_GRACE_S = 25.0  # the controller kills a replica 30 s after asking it to stop (default)
_DECODE_INLINE_BYTES = 64 * 1024  # bigger bodies are decoded off the event loop
_STREAM_ABOVE = 1024 * 1024  # line-oriented bodies over this (or chunked) are streamed
_MAX_STREAMED_BODY = 2**30 + 2**20  # 1 GiB, and a little for the line ends of the last row
_RUN_BYTES = 1024 * 1024  # input per model call of a streamed body (whole lines: a little more)
_MAX_LINE = 16 * 1024 * 1024  # a streamed body's rows must be shorter: they are held whole


_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ReplicaApp:
    """The ASGI app of one replica, serving a loaded :class:`Runtime`.

    With ``batching`` (``{"max_batch_size", "max_delay_ms"}``) and a runtime that can batch,
    concurrent requests share model calls (:mod:`modelyard.dataplane.batching`).
    """

    def __init__(self, runtime: Runtime, batching: dict[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.to_array = runtime.array_inputs
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelyard_replica_requests",
            "Invocations answered by this replica, by HTTP status class",
            ["status"],
            registry=self.registry,
        )
        self._ok = self.requests.labels("2xx")
        self._client_error = self.requests.labels("4xx")
        self._server_error = self.requests.labels("5xx")
        self.batch_size = Histogram(
            "modelyard_replica_batch_size",
            "Rows per model call (1 when requests are not batched)",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batcher: Batcher | None = None
        if batching and runtime.can_batch:
            self.batcher = Batcher(
                runtime,
                int(batching["max_batch_size"]),
                float(batching.get("max_delay_ms", 2.0)),
                observe=self.batch_size.observe,
            )
        elif batching:
            _say(f"batching is off: the {runtime.name} runtime (or its predictor) cannot batch")

    async def __call__(self, request: Request) -> Answer | StreamedAnswer:
        path, method = request.path, request.method
        if path == "/invocations":
            if method == "POST":
                return await self._invoke(request)
            return _not_allowed(b"POST")
        if path in ("/ping", "/health"):
            if method in ("GET", "HEAD"):
                return 200, _JSON_HEADERS, _PING
            return _not_allowed(b"GET, HEAD")
        if path == bundle.PATH:
            if method == "POST":
                return await self._invoke_bundle(request)
            return _not_allowed(b"POST")
        if path == "/metrics" and method == "GET":
            return 200, _METRICS_HEADERS, generate_latest(self.registry)
        return _error(
            404, "not_found", f"no route {path}; the replica serves /ping, /invocations, /metrics"
        )

    async def _invoke(self, request: Request) -> Answer | StreamedAnswer:
        if request.stream is not None:
            return await self._invoke_streamed(request, request.stream)
        headers = request.headers
        attrs = headers.get(_CUSTOM_ATTRIBUTES)
        status, content_type, payload = await self._answer_one(
            headers.get(b"content-type"), headers.get(b"accept"), request.body
        )
        out = [(b"content-type", content_type)]
        if attrs is not None:
            out.append((_CUSTOM_ATTRIBUTES, attrs))
        return status, out, payload

    # streamed invocations ---------------------------------------------------------------------
    def streaming(self, method: str, path: str, headers: dict[bytes, bytes]) -> int | None:
        """The HTTP server's ``streaming`` callback: which invocations to stream (see above)."""
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) <= _STREAM_ABOVE):
            return None
        if path != "/invocations" or method != "POST":
            return None
        raw_type = headers.get(b"content-type")
        if raw_type is None:
            return None
        media = codecs.LINE_MEDIA_TYPES.get(codecs.media_type(raw_type.decode("latin-1")), "")
        if not media or _line_answer(headers.get(b"accept"), media) is None:
            return None
        return _MAX_STREAMED_BODY

    async def _invoke_streamed(
        self, request: Request, stream: BodyStream
    ) -> Answer | StreamedAnswer:
        headers = request.headers
        media_in = codecs.LINE_MEDIA_TYPES[
            codecs.media_type(headers[b"content-type"].decode("latin-1"))
        ]
        media_out = _line_answer(headers.get(b"accept"), media_in)
        assert media_out is not None  # else it would not have been streamed
        runs = _Runs(stream)
        try:
            first = await self._next_answer(runs, media_in, media_out)
            if first is None:
                raise InvalidInputError(f"the {media_in} body has no rows")
        except http.BodyTooLarge as exc:  # the server closes the connection after this answer
            self._client_error.inc()
            return _error(413, "payload_too_large", str(exc))
        except http.BodyIncomplete:
            raise  # the client is gone, or stalled: nobody to answer
        except Exception as exc:
            status, content_type, payload = self._failed(exc)
            return status, [(b"content-type", content_type)], payload
        out = [(b"content-type", _MEDIA_BYTES[media_out])]
        attrs = headers.get(_CUSTOM_ATTRIBUTES)
        if attrs is not None:
            out.append((_CUSTOM_ATTRIBUTES, attrs))
        return 200, out, self._answer_rest(first, runs, media_in, media_out)

    async def _answer_rest(
        self, first: bytes, runs: _Runs, media_in: str, media_out: str
    ) -> AsyncIterator[bytes]:
        """The streamed answer: the first run's outputs, then each next run's."""
        yield first
        try:
            while (payload := await self._next_answer(runs, media_in, media_out)) is not None:
                yield payload
        except http.BodyIncomplete:
            self._client_error.inc()
            raise
        except Exception as exc:
            (self._client_error if isinstance(exc, ModelyardError) else self._server_error).inc()
            message = (
                exc.message if isinstance(exc, ModelyardError) else f"{type(exc).__name__}: {exc}"
            )
            lines = f"lines {runs.line}-{runs.next_line - 1}"
            _say(f"streamed invocation cut off in the rows of {lines}: {message}")
            raise
        self._ok.inc()

    async def _next_answer(self, runs: _Runs, media_in: str, media_out: str) -> bytes | None:
        """The outputs of the next run of rows; None after the last."""
        loop = asyncio.get_running_loop()
        while (block := await runs.next()) is not None:
            payload = await loop.run_in_executor(
                None, self._predict_lines, block, runs.line, media_in, media_out
            )
            if payload is not None:
                return payload
        return None

    def _predict_lines(
        self, block: bytes, first_line: int, media_in: str, media_out: str
    ) -> bytes | None:
        """decode → predict → encode for a run of whole lines, in a worker thread; None when the
        run has only blank lines."""
        inputs = codecs.decode_lines(block, media_in, to_array=self.to_array, first_line=first_line)
        if inputs is None:
            return None
        outputs = call_model(self.runtime, inputs)
        self.batch_size.observe(len(inputs))
        rows = _row_count(outputs)
        if rows is not None and rows != len(inputs):  # the answer's lines would not line up
            raise ModelInvocationError(
                f"the model answered {rows} rows for the {len(inputs)} rows from line {first_line}"
            )
        try:
            return codecs.encode_lines(outputs, media_out)
        except ModelyardError:
            raise
        except Exception as exc:  # the model answered something no codec can write
            raise ModelInvocationError(
                f"cannot encode the model's output as {media_out}: {type(exc).__name__}: {exc}"
            ) from exc

    async def _invoke_bundle(self, request: Request) -> Answer:
        """Several invocations from the gateway, each answered as if it had come alone."""
        try:
            items = bundle.decode_items(request.body)
        except ModelyardError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        parts = [(i.content_type or None, i.accept or None, i.body) for i in items]
        answers: list[tuple[int, bytes, bytes]]
        loop = asyncio.get_running_loop()
        if self.batcher is not None:  # each joins the batcher: one model call for many
            answers = await self._answer_batched(parts)
        elif self.runtime.cpu_bound:
            # One trip to a worker thread for the lot, answered one after the other: they would
            # only take turns holding the GIL in parallel threads (the gateway bundles only small
            # bodies, so none waits long behind another).
            answers = await loop.run_in_executor(None, self._answer_all, parts)
        else:  # a predictor may wait on I/O: each gets a worker thread, as if it came alone
            jobs = [loop.run_in_executor(None, self._answer_sync, *part) for part in parts]
            answers = list(await asyncio.gather(*jobs))
        body = b"".join(
            bundle.encode_answer(status, content_type, item.attrs, payload)
            for item, (status, content_type, payload) in zip(items, answers, strict=True)
        )
        return 200, _BUNDLE_HEADERS, body

    async def _answer_one(
        self, raw_type: bytes | None, raw_accept: bytes | None, body: bytes
    ) -> tuple[int, bytes, bytes]:
        """``(status, content type, body)`` of one invocation."""
        loop = asyncio.get_running_loop()
        if self.batcher is None:
            return await loop.run_in_executor(None, self._answer_sync, raw_type, raw_accept, body)
        try:
            if len(body) < _DECODE_INLINE_BYTES:
                media, inputs = self._decode(raw_type, raw_accept, body)
            else:
                media, inputs = await loop.run_in_executor(
                    None, self._decode, raw_type, raw_accept, body
                )
            return self._answered(media, await self.batcher.predict(inputs))
        except Exception as exc:
            return self._failed(exc)

    async def _answer_batched(
        self, parts: list[tuple[bytes | None, bytes | None, bytes]]
    ) -> list[tuple[int, bytes, bytes]]:
        """Answers for a bundle's invocations through the batcher, without a task for each."""
        assert self.batcher is not None
        answers: list[tuple[int, bytes, bytes] | None] = [None] * len(parts)
        pending: list[tuple[int, str, asyncio.Future[Any]]] = []
        for index, part in enumerate(parts):
            try:
                media, inputs = self._decode(*part)
                pending.append((index, media, self.batcher.submit(inputs)))
            except Exception as exc:  # one item's trouble is its own answer, not the bundle's
                answers[index] = self._failed(exc)
        if pending:
            await asyncio.wait([future for _, _, future in pending])
        for index, media, future in pending:
            try:
                answers[index] = self._answered(media, future.result())
            except Exception as exc:
                answers[index] = self._failed(exc)
        return [answer for answer in answers if answer is not None]

    def _answer_all(
        self, parts: list[tuple[bytes | None, bytes | None, bytes]]
    ) -> list[tuple[int, bytes, bytes]]:
        return [self._answer_sync(*part) for part in parts]

    def _answer_sync(
        self, raw_type: bytes | None, raw_accept: bytes | None, body: bytes
    ) -> tuple[int, bytes, bytes]:
        """decode → predict → encode, in a worker thread; the model's failures become 424."""
        try:
            media, inputs = self._decode(raw_type, raw_accept, body)
            outputs = call_model(self.runtime, inputs)
            self.batch_size.observe(_input_rows(inputs))
            return self._answered(media, outputs)
        except Exception as exc:
            return self._failed(exc)

    def _decode(
        self, raw_type: bytes | None, raw_accept: bytes | None, body: bytes
    ) -> tuple[str, Any]:
        """``(media type to answer in, inputs)``; an unknown Accept is refused before the model
        runs."""
        media = codecs.negotiate(raw_accept.decode("latin-1") if raw_accept else None)
        content_type = raw_type.decode("latin-1") if raw_type is not None else None
        return media, codecs.decode(body, content_type, to_array=self.to_array)

    def _answered(self, media: str, outputs: Any) -> tuple[int, bytes, bytes]:
        payload = _encode(outputs, media)
        self._ok.inc()
        return 200, _MEDIA_BYTES[media], payload

    def _failed(self, exc: Exception) -> tuple[int, bytes, bytes]:
        """An invocation's error answer: the error's own status for a ModelyardError; 500 for
        anything else (a defect, or an input that broke a library), which fails only this one."""
        if isinstance(exc, ModelyardError):
            (self._client_error if exc.http_status < 500 else self._server_error).inc()
            return exc.http_status, _JSON, _error_body(exc.code, exc.message)
        _say(f"invocation failed unexpectedly: {type(exc).__name__}: {exc}")
        self._server_error.inc()
        message = f"the replica failed: {type(exc).__name__}: {exc}"
        return 500, _JSON, _error_body("internal_error", message)


class _Runs:
    """A streamed body cut at line ends into runs of about ``_RUN_BYTES``."""

    def __init__(self, stream: BodyStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.scanned = 0  # the buffer's first bytes that hold no line end
        self.ended = False
        self.line = 1  # the number of the first line of the run last given
        self.next_line = 1

    async def next(self) -> bytes | None:
        """The next run of whole lines (the last may lack its line end); None after it."""
        buffer = self.buffer
        while True:
            if self.ended:
                if not buffer:
                    return None
                block = bytes(buffer)
                buffer.clear()
                break
            if len(buffer) >= _RUN_BYTES:
                cut = buffer.rfind(b"\n", self.scanned) + 1
                if cut:
                    with memoryview(buffer) as view:
                        block = bytes(view[:cut])
                    del buffer[:cut]
                    self.scanned = 0
                    break
                if len(buffer) > _MAX_LINE:
                    raise InvalidInputError(
                        f"line {self.next_line} is longer than the {_MAX_LINE} bytes a row of "
                        "a streamed body may have"
                    )
                self.scanned = len(buffer)
            chunk = await self.stream.read()
            if chunk:
                buffer += chunk
            else:
                self.ended = True
        self.line = self.next_line
        self.next_line += block.count(b"\n")
        return block


def _line_answer(raw_accept: bytes | None, media_in: str) -> str | None:
    """The line-oriented media type to answer a streamed body of ``media_in`` in; None when
    Accept prefers (or allows only) another."""
    if not raw_accept:
        return media_in
    for entry in raw_accept.decode("latin-1").split(","):
        media = codecs.media_type(entry)
        if media in codecs.LINE_MEDIA_TYPES:
            return codecs.LINE_MEDIA_TYPES[media]
        if media == "*/*":
            return media_in
        if media in codecs.MEDIA_TYPES or media == "application/*":
            return None  # JSON or NPY first: answered whole, as before
    return None


def _input_rows(inputs: Any) -> int:
    """Rows in one call's inputs: an array's or a list's length; anything else is one."""
    if isinstance(inputs, str | bytes | dict):
        return 1
    try:
        return max(1, len(inputs))
    except TypeError:
        return 1


def _row_count(outputs: Any) -> int | None:
    """How many rows ``outputs`` answer (None when it cannot tell)."""
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()), None)
    try:
        return len(outputs)
    except TypeError:
        return None


def _encode(outputs: Any, media: str) -> bytes:
    try:
        payload, _ = codecs.encode(outputs, media)
    except ModelyardError:
        raise
    except Exception as exc:  # the model answered something no codec can write
        raise ModelInvocationError(
            f"cannot encode the model's output as {media}: {type(exc).__name__}: {exc}"
        ) from exc
    return payload


def build_app(runtime: Runtime, batching: dict[str, Any] | None = None) -> ReplicaApp:
    """The replica's request handler for a loaded runtime (serve it with :class:`HttpServer`)."""
    return ReplicaApp(runtime, batching)


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _error(status: int, code: str, message: str, extra: Headers = ()) -> Answer:
    return status, [*_JSON_HEADERS, *extra], _error_body(code, message)


_SERVER_ERROR_CODES = {400: "invalid_request", 413: "payload_too_large", 431: "head_too_large"}


def _server_error(status: int, message: str) -> Answer:
    """The HTTP server's own answers, in the replica's error shape."""
    return _error(status, _SERVER_ERROR_CODES.get(status, "internal_error"), message)


def _not_allowed(allow: bytes) -> Answer:
    return _error(405, "method_not_allowed", f"allowed: {allow.decode()}", [(b"allow", allow)])


# -- start-up ------------------------------------------------------------------------------------


def read_spec_file(path: Path) -> tuple[str, ModelSpec, dict[str, Any] | None]:
    """``(name, model spec, batching)`` from a replica spec file; SpecError when it is not one."""
    try:
        document = json.loads(path.read_text())
        batching = document.get("batching")
        if batching is not None:
            batching = BatchingSpec.model_validate(batching).model_dump()
        spec = ModelSpec.model_validate(document["spec"])
        return str(document.get("name", "")), spec, batching
    except (ValueError, KeyError, TypeError, AttributeError, pydantic.ValidationError) as exc:
        raise SpecError(f"{path} is not a model spec file: {type(exc).__name__}: {exc}") from exc


def fetch_artifact(uri: str, cache_dir: Path) -> Path:
    """A local path holding the artifact at ``uri``.

    A local URI (a path or ``file://``) is used where it lies; any other fsspec URI is copied,
    file or directory, into ``cache_dir/<sha256 of uri>/<its base name>`` once and reused.
    """
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its driver not installed
        raise RuntimeLoadError(f"cannot open artifact {uri}: {exc}") from exc
    if isinstance(fs, LocalFileSystem):
        local = Path(path)
        if not local.exists():
            raise RuntimeLoadError(f"artifact not found: {uri}")
        return local
    dest = cache_dir / hashlib.sha256(uri.encode()).hexdigest()
    name = PurePosixPath(path.rstrip("/")).name or "artifact"
    if dest.is_dir():
        return dest / name
    if not fs.exists(path):
        raise RuntimeLoadError(f"artifact not found: {uri}")
    # Other failures while copying (network, permissions) propagate: they may pass, so the
    # replica exits 1 and the supervisor retries, unlike a missing artifact.
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache_dir))
    try:
        fs.get(path, str(partial / name), recursive=fs.isdir(path))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        partial.rename(dest)  # atomic: a reader sees the whole copy or none
    except OSError:  # another replica finished the same copy first
        shutil.rmtree(partial, ignore_errors=True)
    return dest / name


def load_runtime(spec: ModelSpec, cache_dir: Path) -> Runtime:
    """The spec's runtime with its model loaded; raises ModelyardError when it cannot be."""
    runtime = get_runtime_class(spec.runtime)(spec)
    if not spec.artifact:
        raise SpecError("the model server needs an artifact", "spec.artifact")
    runtime.load(fetch_artifact(spec.artifact, cache_dir))
    return runtime


def _say(line: str) -> None:
    print(f"modelyard-replica: {line}", file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Stops a load in progress; once serving, the event loop's handler takes SIGTERM instead.
    raise SystemExit(0)


async def _serve(app: ReplicaApp, args: argparse.Namespace) -> bool:
    """Serve until SIGTERM; False when the address cannot be served (say, the port is taken)."""
    # Idle connections live longer than the gateway keeps them, so it is the side that closes.
    server = HttpServer(app, keepalive_s=75, errors=_server_error, streaming=app.streaming)
    try:
        if args.uds:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.uds)  # a socket file left by an earlier replica
            (address,) = await server.listen(uds=args.uds)
        else:
            (address, *_) = await server.listen(host=args.host, port=args.port)
    except OSError as exc:
        _say(f"cannot serve: {exc}")
        return False
    _say(f"ready on {address}")
    await serve_until_signalled(server, grace_s=args.drain_grace_s)
    if app.batcher is not None:
        await app.batcher.close()
    if args.uds:
        with contextlib.suppress(OSError):
            os.unlink(args.uds)
    return True


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelyard-replica", description=__doc__.split("\n")[0])
    parser.add_argument("--model-spec-file", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--uds", default=None, help="serve on this Unix socket instead")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "modelyard-artifacts",
        help="where artifacts with non-local URIs are copied",
    )
    parser.add_argument(
        "--drain-grace-s",
        type=float,
        default=_DRAIN_GRACE_S,
        help="after SIGTERM, how long requests in progress may take to finish",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Load the model, then serve until SIGTERM. Returns the exit status."""
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _, spec, batching = read_spec_file(args.model_spec_file)
        os.environ.update(spec.environment)
        runtime = load_runtime(spec, args.cache_dir)
        app = build_app(runtime, batching)
    except ModelyardError as exc:
        _say(f"load failed: {exc.message}")
        return EXIT_LOAD_FAILED
    except Exception as exc:  # a defect, not a bad model: report it and let the supervisor retry
        _say(f"startup failed: {type(exc).__name__}: {exc}")
        return EXIT_STARTUP_FAILED
    served = False

    async def serve() -> None:
        nonlocal served
        served = await _serve(app, args)

    http.run(serve)
    return 0 if served else EXIT_STARTUP_FAILED


if __name__ == "__main__":
    status = main()
    # Exit without joining the predict threads: a model call stuck past the gateway's timeout must
    # not hold a draining replica (the interpreter's exit would wait for it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
