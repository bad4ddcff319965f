"""The data plane's HTTP/1.1 server: an asyncio protocol around httptools' request parser.

The gateway and the model server both answer one small request at a time per connection with a
body they hold whole, and nothing else; a general ASGI server (uvicorn) spent as much CPU per
request as the model call of a small model. This server does only what the two need: keep-alive,
``Content-Length`` and chunked request bodies (httptools decodes them), ``Expect: 100-continue``,
pipelined requests answered in order, a body size limit checked before the body is read, idle
connection timeouts and a graceful shutdown. Parsing is httptools' (the parser uvicorn uses).

A handler gets a :class:`Request` and returns ``(status, headers, body)``; the server adds
``Content-Length``, ``Date`` and ``Connection`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

log = logging.getLogger("modelyard.http")

Headers = Sequence[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]
Handler = Callable[["Request"], Awaitable[Answer]]

#: Pipelined requests a connection may queue before the server stops reading from it.
_MAX_PIPELINED = 8
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: How long a refused connection is still read (and dropped) before it is closed.
_LINGER_S = 2.0


class Request:
    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(
        self, method: str, path: str, query: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        #: Header names lower-cased; a repeated header keeps its last value.
        self.headers = headers
        self.body = body


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
        # Requests to answer, in order; an Answer entry is the server's own refusal, the last.
        self.pending: deque[tuple[Request | Answer, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.reading_paused = False
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
        self.size += len(body)
        if self.size > self.server.max_body:  # chunked, or a Content-Length that lied
            self._refuse(*self.server.too_large())
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.head_size = 0  # the next request's head starts
        if self.refused or self.closing:
            return
        parsed = httptools.parse_url(self.url) if self.url else None
        path = parsed.path.decode("latin-1") if parsed and parsed.path else "/"
        query = (parsed.query or b"") if parsed else b""
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = Request(self.parser.get_method().decode(), path, query, self.headers, body)
        self._enqueue(request, self.parser.should_keep_alive())

    # answering --------------------------------------------------------------------------------
    def _enqueue(self, entry: Request | Answer, keep_alive: bool) -> None:
        self.pending.append((entry, keep_alive))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())
        if len(self.pending) >= _MAX_PIPELINED:
            self._pause_reading()

    def _refuse(self, status: int, headers: Headers, body: bytes) -> None:
        """Answer with the server's own error once the requests before it are answered, then
        close: what arrives after a refused request is read and dropped, unparsed."""
        self.refused = True
        self._enqueue((status, headers, body), False)

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused and not self.closing:
            self.reading_paused = True
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
                    self.transport.resume_reading()
                if not isinstance(entry, Request):  # the server's own refusal: the last answer
                    self._write(*entry, keep_alive=False)
                    self._linger()
                    return
                try:
                    status, headers, body = await self.server.handler(entry)
                except Exception:
                    log.exception("handler failed for %s %s", entry.method, entry.path)
                    status, headers, body = self.server.errors(500, "internal server error")
                head_only = entry.method == "HEAD"
                keep_alive = keep_alive and not self.server.stopping
                self._write(status, headers, body, keep_alive, head_only)
                if not keep_alive:
                    self._close()
                    return
        finally:
            self.task = None
            self.server.idle.set()
        self._arm_idle_timer()

    def _write(
        self, status: int, headers: Headers, body: bytes, keep_alive: bool, head_only: bool = False
    ) -> None:
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

    def _linger(self) -> None:
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
        if self.reading_paused:
            self.reading_paused = False
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
    ) -> None:
        """``errors(status, message)`` writes the server's own answers (400 for a malformed
        request, 413 for a body over ``max_body``, 431 for a request line and headers over
        ``max_head`` bytes, 500 when the handler raised) in the caller's error format.
        ``keepalive_s`` is how long a connection may send nothing while no request of it is
        being answered (an idle keep-alive connection, or a request stalled half-way)."""
        self.handler = handler
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
