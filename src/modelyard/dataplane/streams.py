"""Streamed bodies for the data plane's HTTP server (:mod:`modelyard.dataplane.http`).

Streaming, for bodies too big to hold, is opt-in, per request; a buffered request pays nothing for
it. The ``streaming`` callback of :class:`~modelyard.dataplane.http.HttpServer` sees each
request's method, path and headers when its head is complete; when it answers a size limit, the
request reaches the handler at once with ``body == b""`` and its body in ``request.stream``, a
:class:`BodyStream` that gives the body chunk by chunk as it arrives. The server stops reading
from the client while more than about 1 MiB of it waits unread, so memory stays bounded whatever
the body's size. A handler that returns before the body has arrived whole gets its answer sent,
then the connection closes (the rest is not read). Any answer may stream too: when the handler
returns an async iterator of bytes instead of bytes, :func:`write_chunked` sends its chunks as a
chunked body as they come, the iterator waiting whenever the client falls behind (write
backpressure); if the iterator raises, the connection ends without the last chunk, so that the
client sees the answer incomplete, not complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelyard.dataplane.http import Headers, Request, _Protocol

log = logging.getLogger("modelyard.http")

#: ``streaming(method, path, headers)``: None to buffer a request's body, or the most bytes of
#: body to stream to the handler.
Streaming = Callable[[str, str, dict[bytes, bytes]], int | None]

#: A streamed body stops being read while more than this waits unread; reading resumes once the
#: handler has taken all but a quarter of it.
_STREAM_HIGH = 1024 * 1024
_STREAM_LOW = _STREAM_HIGH // 4


class BodyTooLarge(Exception):
    """A streamed request's body is over the limit the ``streaming`` callback gave it. The rest
    of the body is not read: the connection closes after the handler's answer (413, say)."""


class BodyIncomplete(ConnectionError):
    """A streamed request's body ended early: the client closed the connection, sent nothing
    for ``keepalive_s``, or broke the framing (a malformed chunk)."""


class BodyStream:
    """A streamed request's body, in the order it arrives: ``await stream.read()`` gives the next
    chunk, b"" at the end (or ``async for chunk in stream``).

    ``read`` raises :class:`BodyTooLarge` past the size limit and :class:`BodyIncomplete` when
    the body cannot arrive whole; the chunks received before either are given first. An
    ``Expect: 100-continue`` is answered on the first ``read``. Only the request's handler (and
    the answer it returns) may read it, one reader at a time.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_expects_continue",
        "_limit",
        "_received",
        "_waiter",
        "request",
    )

    def __init__(self, conn: _Protocol, limit: int, expects_continue: bool) -> None:
        self._conn = conn
        self._limit = limit
        self._expects_continue = expects_continue
        self._chunks: deque[bytes] = deque()
        self._buffered = 0  # received, not yet read
        self._received = 0
        self._complete = False
        self._error: tuple[type[Exception], str] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.request: Request | None = None  # set once the request is made

    @property
    def received(self) -> int:
        """Bytes of body received so far (read or not)."""
        return self._received

    async def read(self) -> bytes:
        """The next chunk of the body; b"" once it has all been read."""
        if self._expects_continue:
            self._expects_continue = False
            if self._received == 0 and not self._complete and self._error is None:
                self._conn.send_continue()
        while not self._chunks:
            if self._error is not None:
                kind, message = self._error
                raise kind(message)
            if self._complete:
                return b""
            await self._wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered <= _STREAM_LOW:
            self._conn.stream_drained()
        return chunk

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def _wait(self) -> None:
        """Until more arrives, or the client has sent nothing for ``keepalive_s``."""
        conn = self._conn
        loop = conn.loop
        waiter = self._waiter = loop.create_future()
        try:
            async with asyncio.timeout_at(conn.last_activity + conn.server.keepalive_s):
                await waiter
        except TimeoutError:
            idle_s = loop.time() - conn.last_activity
            if idle_s >= conn.server.keepalive_s:  # else a byte came that was not body: wait on
                self.fail(BodyIncomplete, f"no data from the client for {idle_s:.0f} s")
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # called by the connection ------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._limit:
            self.fail(BodyTooLarge, f"request body larger than the limit of {self._limit} bytes")
            self._conn.refused = True  # the rest is dropped, the connection closes after the answer
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _STREAM_HIGH:
            self._conn.pause_for_stream()
        self._wake()

    def end(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, kind: type[Exception], message: str) -> None:
        if not self._complete and self._error is None:
            self._error = (kind, message)
            self._wake()

    @property
    def done(self) -> bool:
        """The whole body has arrived (read or not): the connection is past it."""
        return self._complete


async def write_chunked(
    conn: _Protocol,
    status: int,
    headers: Headers,
    body: AsyncIterator[bytes],
    keep_alive: bool,
    head_only: bool,
) -> bool:
    """Send a connection's answer whose body comes from an iterator, chunked, waiting whenever
    the client falls behind. False when the answer could not be sent whole, and the connection
    is closing: the client went, or the iterator raised (then what was sent is followed by the
    end of the connection, not the last chunk, so that the client sees the answer
    incomplete)."""
    transport = conn.transport
    try:
        if transport is None or conn.closing:
            return False
        transport.write(
            conn.answer_head(status, headers, b"transfer-encoding: chunked\r\n", keep_alive)
        )
        if head_only:
            return True
        async for chunk in body:
            if conn.closing:
                return False
            if chunk:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                if not conn.can_write.is_set():
                    await conn.can_write.wait()
        if conn.closing:
            return False
        transport.write(b"0\r\n\r\n")
        return True
    except Exception as exc:
        if isinstance(exc, ConnectionError):  # a streamed request's client went, say
            log.info("streamed answer abandoned: %s: %s", type(exc).__name__, exc)
        else:
            log.exception("streamed answer failed after it began")
        conn.refused = True  # what the client still sends is dropped
        conn.linger()
        return False
    finally:
        aclose = getattr(body, "aclose", None)  # a generator left before its end: close it
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
