"""The data plane's HTTP/1.1 server: an asyncio protocol around httptools' request parser.

The gateway and the model server both answer one small request at a time per connection with a
body they hold whole, and nothing else; a general ASGI server (uvicorn) spent as much CPU per
request as the model call of a small model. This server does only what the two need: keep-alive,
``Content-Length`` and chunked request bodies (httptools decodes them), ``Expect: 100-continue``,
pipelined requests answered in order, a body size limit checked before the body is read, idle
connection timeouts and a graceful shutdown. Parsing is httptools' (the parser uvicorn uses).

A handler gets a :class:`Request` and returns ``(status, headers, body)``; the server adds
``Content-Length``, ``Date`` and ``Connection`` headers.

Streamed request and answer bodies (opt-in, per request; a buffered request pays nothing for
them) are in :mod:`modelyard.dataplane.streams`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

# Defined in streams.py; the ``X as X`` imports keep them importable from here too.
from modelyard.dataplane.streams import _STREAM_HIGH as _STREAM_HIGH
from modelyard.dataplane.streams import BodyIncomplete as BodyIncomplete
from modelyard.dataplane.streams import BodyStream as BodyStream
from modelyard.dataplane.streams import BodyTooLarge as BodyTooLarge
from modelyard.dataplane.streams import Streaming as Streaming
from modelyard.dataplane.streams import write_chunked

log = logging.getLogger("modelyard.http")

Headers = Sequence[tuple[bytes, bytes]]
#: A whole answer: ``(status, headers, body)``.
Answer = tuple[int, Headers, bytes]
#: An answer whose body is sent chunk by chunk as the iterator gives it (chunked encoding).
StreamedAnswer = tuple[int, Headers, AsyncIterator[bytes]]
Handler = Callable[["Request"], Awaitable[Answer | StreamedAnswer]]

#: Pipelined requests a connection may queue before the server stops reading from it.
_MAX_PIPELINED = 8
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: How long a refused connection is still read (and dropped) before it is closed.
_LINGER_S = 2.0


class Request:
    __slots__ = ("_conn", "body", "headers", "method", "path", "query")
    _conn: _Protocol  # set by the server (a Request made elsewhere has none)
    #: The body as it arrives, for a request the server streams (its ``body`` is then b"");
    #: None for a buffered request. (A class default: buffered requests pay nothing for it.)
    stream: BodyStream | None = None

    def __init__(
        self, method: str, path: str, query: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        #: Header names lower-cased; a repeated header keeps its last value.
        self.headers = headers
        self.body = body

    @property
    def client_gone(self) -> bool:
        """Whether the client's connection has closed (its answer would go nowhere): a handler
        that waits a long time (a request held while a replica starts) can stop waiting."""
        conn = getattr(self, "_conn", None)
        return conn is not None and conn.closing


class _StreamedRequest(Request):
    __slots__ = ("stream",)

    def __init__(
        self, method: str, path: str, query: bytes, headers: dict[bytes, bytes], stream: BodyStream
    ) -> None:
        super().__init__(method, path, query, headers, b"")
        self.stream = stream


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


class _Clock:
    """``Date`` header value, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


_CLOCK = _Clock()


class _Protocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.head_size = 0  # bytes received while a head is incomplete (-1: head complete)
        self.head_bytes = 0  # size of the current request's line and headers
        self.refused = False  # the connection's last request was refused: ignore what follows
        # Requests to answer, in order; an Answer entry is the server's own refusal, the last; a
        # BodyStream entry is a streamed request.
        self.pending: deque[tuple[Request | Answer | BodyStream, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.stream: BodyStream | None = None  # the body being streamed, until it is whole
        # Reading is paused for pipelined requests (or an unread answer), for a streamed body's
        # unread bytes, or both: each resumes it only when the other does not hold it.
        self.reading_paused = False
        self.stream_paused = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()

    # connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.stream is not None:
            self.stream.fail(
                BodyIncomplete, "the client closed the connection before the body ended"
            )
        self.pending.clear()
        self.can_write.set()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        # A running handler finishes (a model call is not interrupted); its answer is dropped.

    def pause_writing(self) -> None:
        self.can_write.clear()  # the client is not reading: answer nothing more until it does

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.last_activity = self.loop.time()  # the idle timer reads it when it fires
        if self.head_size >= 0:
            self.head_size += len(data)  # reset by on_headers_complete if the head ends here
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(*self.server.bad_request("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            if not self.refused:
                self._refuse(*self.server.bad_request(f"malformed HTTP request: {exc}"))
        if self.head_size > self.server.max_head and not self.refused:  # a head still going on
            self._refuse(*self.server.errors(431, "request head too large"))

    # httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.chunks = []
        self.size = 0
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        self.head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.head_size = -1
        if self.head_bytes > self.server.max_head:
            self._refuse(*self.server.errors(431, "request head too large"))
            return
        if self.server.streaming is not None and self._start_stream():
            return
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.server.max_body:
            self._refuse(*self.server.too_large())
            return
        expects = self.headers.get(b"expect", b"").lower() == b"100-continue"
        if expects and self.transport and self.task is None and not self.pending:
            # Only when nothing is being answered: an interim answer must not jump the queue
            # (a client that gets none sends its body after a short wait anyway).
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.refused:
            return
        if self.stream is not None:
            self.stream.feed(body)
            return
        self.size += len(body)
        if self.size > self.server.max_body:  # chunked, or a Content-Length that lied
            self._refuse(*self.server.too_large())
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.head_size = 0  # the next request's head starts
        if self.refused or self.closing:
            return
        if self.stream is not None:  # its request is being answered already
            self.stream.end()
            self.stream = None
            return
        parsed = httptools.parse_url(self.url) if self.url else None
        path = parsed.path.decode("latin-1") if parsed and parsed.path else "/"
        query = (parsed.query or b"") if parsed else b""
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = Request(self.parser.get_method().decode(), path, query, self.headers, body)
        request._conn = self
        self._enqueue(request, self.parser.should_keep_alive())

    # streamed request bodies --------------------------------------------------------------------
    def _start_stream(self) -> bool:
        """Whether the request whose head just ended is streamed; if it is, it is queued now."""
        headers = self.headers
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:
            return False  # no body: nothing to stream
        parsed = httptools.parse_url(self.url) if self.url else None
        path = parsed.path.decode("latin-1") if parsed and parsed.path else "/"
        method = self.parser.get_method().decode()
        streaming = self.server.streaming
        assert streaming is not None
        try:
            limit = streaming(method, path, headers)
        except Exception:
            log.exception("the streaming callback failed for %s %s", method, path)
            self._refuse(*self.server.errors(500, "internal server error"))
            return True
        if limit is None:
            return False
        expects = headers.get(b"expect", b"").lower() == b"100-continue"
        stream = BodyStream(self, limit, expects)
        request = _StreamedRequest(
            method, path, (parsed.query or b"") if parsed else b"", headers, stream
        )
        stream.request = request
        request._conn = self
        self.stream = stream
        if declared is not None and declared.isdigit() and int(declared) > limit:
            stream.fail(BodyTooLarge, f"request body larger than the limit of {limit} bytes")
            self.refused = True  # not read: the connection closes after the answer
        self._enqueue(stream, self.parser.should_keep_alive())
        return True

    def send_continue(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(_CONTINUE)

    def pause_for_stream(self) -> None:
        if self.transport is not None and not self.stream_paused and not self.closing:
            self.stream_paused = True
            if not self.reading_paused:
                self.transport.pause_reading()

    def stream_drained(self) -> None:
        if self.stream_paused and self.transport is not None and not self.closing:
            self.stream_paused = False
            self.last_activity = self.loop.time()  # the client could not send while paused
            if not self.reading_paused:
                self.transport.resume_reading()

    # answering --------------------------------------------------------------------------------
    def _enqueue(self, entry: Request | Answer | BodyStream, keep_alive: bool) -> None:
        self.pending.append((entry, keep_alive))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())
        if len(self.pending) >= _MAX_PIPELINED:
            self._pause_reading()

    def _refuse(self, status: int, headers: Headers, body: bytes) -> None:
        """Answer with the server's own error once the requests before it are answered, then
        close: what arrives after a refused request is read and dropped, unparsed."""
        self.refused = True
        if self.stream is not None and not self.stream.done:
            # A streamed body broke off (malformed chunking, say): its handler is answering
            # already, so it learns from read(), and its answer is the last.
            self.stream.fail(BodyIncomplete, f"the request body broke off: {body.decode()}")
            return
        self._enqueue((status, headers, body), False)

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused and not self.closing:
            self.reading_paused = True
            if not self.stream_paused:
                self.transport.pause_reading()

    async def _serve(self) -> None:
        try:
            while self.pending and not self.closing:
                if not self.can_write.is_set():
                    self._pause_reading()
                    await self.can_write.wait()
                    continue
                entry, keep_alive = self.pending.popleft()
                if (
                    self.reading_paused
                    and not self.refused
                    and len(self.pending) < _MAX_PIPELINED // 2
                    and self.transport is not None
                ):
                    self.reading_paused = False
                    self.last_activity = self.loop.time()  # a streamed body could not arrive
                    if not self.stream_paused:
                        self.transport.resume_reading()
                if not isinstance(entry, Request):
                    if isinstance(entry, BodyStream):
                        if await self._serve_streamed(entry, keep_alive):
                            continue
                        return
                    self._write(*entry, keep_alive=False)  # the server's own refusal: the last
                    self.linger()
                    return
                try:
                    status, headers, body = await self.server.handler(entry)
                except Exception:
                    log.exception("handler failed for %s %s", entry.method, entry.path)
                    status, headers, body = self.server.errors(500, "internal server error")
                head_only = entry.method == "HEAD"
                keep_alive = keep_alive and not self.server.stopping
                try:  # costs nothing when nothing is raised (an isinstance check would)
                    self._write(status, headers, body, keep_alive, head_only)  # type: ignore[arg-type]
                except TypeError:  # no len(): an iterator, to send chunk by chunk
                    if not isinstance(body, AsyncIterator):
                        raise
                    if not await write_chunked(self, status, headers, body, keep_alive, head_only):
                        return
                if not keep_alive:
                    self._close()
                    return
        finally:
            self.task = None
            self.server.idle.set()
        self._arm_idle_timer()

    async def _serve_streamed(self, stream: BodyStream, keep_alive: bool) -> bool:
        """Answer a streamed request; whether the connection goes on to the next request (only
        when its body has arrived whole: a body left half-sent is not read further)."""
        request = stream.request
        assert request is not None
        try:
            status, headers, body = await self.server.handler(request)
        except BodyIncomplete as exc:  # the client went, or stalled: the handler did not answer
            log.info("streamed request %s %s not answered: %s", request.method, request.path, exc)
            self._close()
            return False
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            status, headers, body = self.server.errors(500, "internal server error")
        head_only = request.method == "HEAD"
        keep_alive = keep_alive and not self.server.stopping
        if isinstance(body, AsyncIterator):
            if not await write_chunked(self, status, headers, body, keep_alive, head_only):
                return False
        else:
            keep_alive = keep_alive and stream.done
            self._write(status, headers, body, keep_alive, head_only)
        if keep_alive and stream.done:
            return True
        if stream.done:
            self._close()
        else:
            self.refused = True  # what is still coming of the body is dropped, unparsed
            self.linger()
        return False

    def answer_head(self, status: int, headers: Headers, framing: bytes, keep_alive: bool) -> bytes:
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
        parts = [line, _CLOCK.header()]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(framing)
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _write(
        self, status: int, headers: Headers, body: bytes, keep_alive: bool, head_only: bool = False
    ) -> None:
        """Send a whole answer (TypeError, before anything is sent, for an iterator ``body``)."""
        if self.transport is None or self.closing:
            return
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
        parts = [line, _CLOCK.header()]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head_only:
            parts.append(body)
        self.transport.write(b"".join(parts))

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def linger(self) -> None:
        """Close after a refusal without losing the answer: closing a socket with unread input
        resets the connection, and a client still sending its body would not read our answer.
        So end our side, keep reading (and dropping) for a moment, then close."""
        transport = self.transport
        if transport is None or self.closing:
            return
        self.closing = True  # nothing more is written
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self.reading_paused or self.stream_paused:
            self.reading_paused = self.stream_paused = False
            transport.resume_reading()
        asyncio.get_running_loop().call_later(_LINGER_S, transport.close)

    def _arm_idle_timer(self) -> None:
        """Start the idle clock now (one timer per connection, re-armed when it fires, not per
        request: it checks the time of the last byte)."""
        if self.closing:
            return
        if self.server.stopping:
            self._close()
            return
        self.last_activity = self.loop.time()
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_later(self.server.keepalive_s, self._idle_timeout)

    def _idle_timeout(self) -> None:
        # Nothing being answered, and no byte for keepalive_s: an idle keep-alive connection,
        # or a request that stopped arriving half-way. (A request being answered re-arms the
        # clock when it is done.)
        self.idle_timer = None
        if self.closing or self.task is not None or self.pending:
            return
        remaining = self.last_activity + self.server.keepalive_s - self.loop.time()
        if remaining > 0:
            self.idle_timer = self.loop.call_later(remaining, self._idle_timeout)
        else:
            self._close()

    def close_if_idle(self) -> None:
        if self.task is None and not self.pending:
            self._close()


def _plain_error(status: int, message: str) -> Answer:
    return status, [(b"content-type", b"text/plain; charset=utf-8")], message.encode()


class HttpServer:
    """Serve ``handler`` on listening sockets until :meth:`shutdown`."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int = 2**62,
        max_head: int = 64 * 1024,
        errors: Callable[[int, str], Answer] | None = None,
        keepalive_s: float = 75.0,
        streaming: Streaming | None = None,
    ) -> None:
        """``errors(status, message)`` writes the server's own answers (400 for a malformed
        request, 413 for a body over ``max_body``, 431 for a request line and headers over
        ``max_head`` bytes, 500 when the handler raised) in the caller's error format.
        ``keepalive_s`` is how long a connection may send nothing while no request of it is
        being answered (an idle keep-alive connection, or a request stalled half-way), and how
        long a streamed body may stall while its handler waits for more.

        ``streaming(method, path, headers)`` (path without the query; header names lower-case)
        is asked, when its head is complete, about each request that has a body (a
        Content-Length or Transfer-Encoding): None buffers it as usual (up to ``max_body``); a
        number streams it to the handler, with that limit instead of ``max_body``
        (:class:`BodyStream`). It must be quick and must not raise (a failure is a 500)."""
        self.handler = handler
        self.streaming = streaming
        self.max_body = max_body
        self.max_head = max_head
        self.errors = errors or _plain_error
        self.keepalive_s = keepalive_s
        self.connections: set[_Protocol] = set()
        self.stopping = False
        self.idle = asyncio.Event()
        self._servers: list[asyncio.AbstractServer] = []

    def too_large(self) -> Answer:
        return self.errors(413, f"request body larger than the limit of {self.max_body} bytes")

    def bad_request(self, message: str) -> Answer:
        return self.errors(400, message)

    async def listen(
        self,
        *,
        sock: socket.socket | None = None,
        host: str | None = None,
        port: int | None = None,
        uds: str | None = None,
    ) -> list[str]:
        """Start accepting (on an inherited socket, a host and port, or a Unix socket path);
        returns the addresses served, as ``http://host:port`` or ``unix:/path``."""
        loop = asyncio.get_running_loop()
        if uds is not None:
            server = await loop.create_unix_server(lambda: _Protocol(self), uds, backlog=2048)
        elif sock is not None:
            server = await loop.create_server(lambda: _Protocol(self), sock=sock, backlog=2048)
        else:
            server = await loop.create_server(
                lambda: _Protocol(self), host, port or 0, backlog=2048, reuse_address=True
            )
        self._servers.append(server)
        addresses = []
        for listening in server.sockets:
            name = listening.getsockname()
            if isinstance(name, str):
                addresses.append(f"unix:{name}")
            else:
                addresses.append(f"http://{name[0]}:{name[1]}")
        return addresses

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, close idle connections, let requests in progress finish (answered
        with ``Connection: close``) for up to ``grace_s``, then close everything."""
        self.stopping = True
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while True:
            for conn in list(self.connections):
                conn.close_if_idle()
            if not any(c.task is not None for c in self.connections):
                break
            self.idle.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), remaining)
        for conn in list(self.connections):
            conn._close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


async def serve_until_signalled(
    server: HttpServer,
    *,
    grace_s: float,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Wait (serving) for one of ``signals``, then shut the server down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    await server.shutdown(grace_s)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when it is installed (it is with the base install), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(main())
        return
    uvloop.run(main())
