"""The gateway's client for replicas: HTTP/1.1 over pooled keep-alive connections.

This is the hot path's other half. A general-purpose client (aiohttp) spent more CPU per request
than the gateway's whole server side; this one does only what the replica contract needs: one
``POST`` with a complete body, the whole answer read back, the connection kept for the next
request. httptools parses the responses (the parser uvicorn uses for requests). Replicas are
reached over TCP (``http://host:port``) or a Unix socket (``unix:/path``).

Failures are typed so the gateway can decide what to retry:

- :class:`UpstreamConnectError` — no connection could be made (the replica is gone or not there);
- :class:`UpstreamDisconnected` — the connection closed before a whole answer came back;
- :class:`TimeoutError` — no whole answer within the deadline (the connection is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import cast

import httptools

from modelyard.dataplane import bundle

#: Bundles one gateway process keeps on their way to one replica; more invocations wait and go
#: together in the next bundle. Generous on purpose: holding requests back in the gateway starves
#: the replica's batcher, which is the one that should do the waiting (measured in bench/NOTES.md).
MAX_BUNDLES_IN_FLIGHT = 32
_BUNDLE_PATH = bundle.PATH.encode()
_BUNDLE_HEADERS = b"Content-Type: " + bundle.CONTENT_TYPE + b"\r\n"

#: How long an idle connection is kept. Replicas keep theirs open longer, so the gateway is the
#: side that closes an idle connection, never the replica under a request in flight.
IDLE_TIMEOUT_S = 30.0


class UpstreamError(Exception):
    """A replica could not be reached or did not answer."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed before the whole answer arrived."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        #: Whether any byte of the answer had arrived (a request never answered can be resent).
        self.answered = answered


class BundlesUnsupported(UpstreamError):
    """The replica does not take ``POST /bundle`` (say, a model server of an older version that
    was re-adopted after an upgrade): send it plain requests."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        #: Header names lower-cased, in the order received.
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.answered = False
        self.head_done = False
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0

    # asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(
                UpstreamDisconnected(f"malformed answer from the replica: {exc}", answered=True)
            )
            self.close()
        except httptools.HttpParserUpgrade:
            self._fail(
                UpstreamDisconnected("the replica asked for a protocol upgrade", answered=True)
            )
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.waiter is not None and self.head_done and self._ends_at_close():
            self.keep_alive = False
            self._complete()  # an answer without a length ends where the connection does
            return
        self._fail(
            UpstreamDisconnected("the replica closed the connection", answered=self.answered)
        )

    def _ends_at_close(self) -> bool:
        names = {name for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # httptools callbacks --------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        response = Response(self.parser.get_status_code(), self.headers, body)
        self.headers, self.chunks, self.head_done = [], [], False
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # ----------------------------------------------------------------------------------------
    def _fail(self, exc: UpstreamError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    async def send(self, head: bytes, body: bytes, timeout_s: float) -> Response:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.answered = False
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        try:
            async with asyncio.timeout(timeout_s):
                response: Response = await waiter
                return response
        except BaseException:
            self.close()  # a half-read answer would poison the next request on this connection
            raise


class Pool:
    """Keep-alive connections to one replica address."""

    def __init__(self, address: str) -> None:
        self.address = address
        if address.startswith("unix:"):
            self._unix: str | None = address[len("unix:") :]
            self._host, self._port = "localhost", 0
        else:
            self._unix = None
            hostport = address.split("://", 1)[-1].rstrip("/")
            host, _, port = hostport.rpartition(":")
            self._host, self._port = host.strip("[]"), int(port)
        host_header = "localhost" if self._unix else f"{self._host}:{self._port}"
        self._host_line = f"Host: {host_header}\r\n".encode("latin-1")
        self._idle: deque[_Connection] = deque()
        # Bundling: invocations waiting to go, and bundles on their way.
        self._waiting: list[tuple[bytes, asyncio.Future[bundle.ItemAnswer]]] = []
        self._bundles_in_flight = 0
        self._flush_scheduled = False
        #: False once the replica answered a bundle with 404 or 405.
        self.takes_bundles = True

    def forget(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):  # not idle: in use, or already gone
            self._idle.remove(conn)

    async def _connect(self, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._open()
        except TimeoutError as exc:  # a replica that accepts nothing (say, a full backlog)
            raise UpstreamConnectError(f"cannot connect to {self.address}: timed out") from exc

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self._unix is not None:
                transport, conn = await loop.create_unix_connection(
                    lambda: _Connection(self), self._unix
                )
            else:
                transport, conn = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port
                )
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {self.address}: {exc}") from exc
        conn.transport = transport  # uvloop calls connection_made only after this returns
        return conn

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()  # the most recently used: least likely to have been closed
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT_S:
                return conn
            conn.close()
        return None

    async def post(
        self, headers: bytes, body: bytes, timeout_s: float, path: bytes = b"/invocations"
    ) -> Response:
        """POST to the replica; ``headers`` are extra ``Name: value\\r\\n`` lines (no
        Content-Length). A kept connection the replica closed while idle is replaced once."""
        loop = asyncio.get_running_loop()
        head = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n%s\r\n" % (
            path,
            self._host_line,
            len(body),
            headers,
        )
        deadline = loop.time() + timeout_s
        conn = self._take_idle(loop.time())
        reused = conn is not None
        if conn is None:
            conn = await self._connect(deadline)
        while True:
            try:
                response = await conn.send(head, body, max(deadline - loop.time(), 0.001))
            except UpstreamDisconnected as exc:
                if reused and not exc.answered:  # the replica had closed it while it sat idle
                    reused = False
                    conn = await self._connect(deadline)
                    continue
                raise
            break
        if conn.keep_alive and not conn.closed:
            conn.idle_since = loop.time()
            self._idle.append(conn)
        else:
            conn.close()
        return response

    # bundles ----------------------------------------------------------------------------------
    async def invoke(self, item: bytes, timeout_s: float) -> bundle.ItemAnswer:
        """One invocation (an encoded :mod:`bundle` item), sent in a bundle with the others
        waiting for this replica: invocations made in the same turn of the event loop travel
        together (no delay is added); while ``MAX_BUNDLES_IN_FLIGHT`` bundles are out, new ones
        wait for the next."""
        loop = asyncio.get_running_loop()
        if not self.takes_bundles:
            raise BundlesUnsupported(f"{self.address} does not take bundles")
        future: asyncio.Future[bundle.ItemAnswer] = loop.create_future()
        self._waiting.append((item, future))
        if not self._flush_scheduled and self._bundles_in_flight < MAX_BUNDLES_IN_FLIGHT:
            self._flush_scheduled = True
            loop.call_soon(self._flush, timeout_s)
        async with asyncio.timeout(timeout_s):
            return await future

    def _flush(self, timeout_s: float) -> None:
        self._flush_scheduled = False
        if not self._waiting or self._bundles_in_flight >= MAX_BUNDLES_IN_FLIGHT:
            return
        items = [(item, fut) for item, fut in self._waiting if not fut.done()]  # timed out: skip
        self._waiting = []
        if not items:
            return
        self._bundles_in_flight += 1
        asyncio.get_running_loop().create_task(self._send_bundle(items, timeout_s))

    async def _send_bundle(
        self, items: list[tuple[bytes, asyncio.Future[bundle.ItemAnswer]]], timeout_s: float
    ) -> None:
        try:
            body = b"".join(item for item, _ in items)
            try:
                response = await self.post(_BUNDLE_HEADERS, body, timeout_s, _BUNDLE_PATH)
                if response.status in (404, 405):
                    self.takes_bundles = False
                    raise BundlesUnsupported(f"{self.address} does not take bundles")
                if response.status != 200:
                    # The replica answered, just not item by item: that answer is each item's
                    # (a plain request answered so would get the same); nothing to retry.
                    same = bundle.ItemAnswer(
                        response.status,
                        response.header(b"content-type") or b"",
                        b"",
                        response.body,
                    )
                    answers = [same] * len(items)
                else:
                    answers = bundle.decode_answers(response.body)
                if len(answers) != len(items):
                    raise UpstreamDisconnected(
                        f"the replica answered {len(answers)} of {len(items)} bundled requests",
                        True,
                    )
            except (UpstreamError, TimeoutError, ValueError) as exc:
                error = (
                    exc
                    if isinstance(exc, (UpstreamError, TimeoutError))
                    else (UpstreamDisconnected(str(exc), True))
                )
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                return
            for (_, future), answer in zip(items, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        finally:
            self._bundles_in_flight -= 1
            if self._waiting and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush, timeout_s)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Upstreams:
    """Pools by replica address, created on first use."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}

    def pool(self, address: str) -> Pool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = Pool(address)
        return pool

    def retain(self, addresses: set[str]) -> None:
        """Close the pools of replicas no longer routed."""
        for address in list(self._pools):
            if address not in addresses:
                self._pools.pop(address).close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
