"""The gateway's replica client over real sockets: keep-alive reuse, idle closes, typed failures."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard.dataplane.upstream import (
    Pool,
    UpstreamConnectError,
    UpstreamDisconnected,
    Upstreams,
)


class Replica:
    """A tiny HTTP/1.1 server on a real socket that counts connections and can misbehave."""

    def __init__(self, answer: Callable[[bytes, bytes], bytes] | None = None) -> None:
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.answer = answer or (lambda head, body: _ok(body))
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                reply = self.answer(head, body)
                if reply:
                    writer.write(reply)
                    await writer.drain()
                if b"close" in reply[:200].lower() or not reply:
                    break
        writer.close()

    def drop_idle_connections(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


@contextlib.asynccontextmanager
async def serving(replica: Replica, unix: Path | None = None) -> AsyncIterator[str]:
    if unix is not None:
        server = await asyncio.start_unix_server(replica.handle, str(unix))
        address = f"unix:{unix}"
    else:
        server = await asyncio.start_server(replica.handle, "127.0.0.1", 0)
        address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    replica.server = server
    try:
        yield address
    finally:
        replica.drop_idle_connections()
        server.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_requests_reuse_one_keep_alive_connection_and_carry_headers_and_body() -> None:
    replica = Replica()

    async def scenario() -> list[Any]:
        async with serving(replica) as address:
            pool = Pool(address)
            out = []
            for i in range(3):
                body = b'{"n": %d}' % i
                out.append(await pool.post(b"Accept: text/csv\r\n", body, 5))
            pool.close()
            return out

    answers = run(scenario())
    assert [a.body for a in answers] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert answers[0].status == 200
    assert answers[0].header(b"content-type") == b"application/json"
    assert replica.connections == 1
    head = replica.requests[0][0]
    assert head.startswith(b"POST /invocations HTTP/1.1\r\n")
    assert b"Accept: text/csv\r\n" in head
    assert b"Content-Length: 8\r\n" in head


def test_a_connection_the_replica_closed_while_idle_is_replaced_without_failing() -> None:
    replica = Replica()

    async def scenario() -> bytes:
        async with serving(replica) as address:
            pool = Pool(address)
            await pool.post(b"", b"first", 5)
            replica.drop_idle_connections()  # as a replica's keep-alive timeout does
            answer = await pool.post(b"", b"second", 5)
            pool.close()
            return answer.body

    assert run(scenario()) == b"second"
    assert replica.connections == 2


def test_connection_close_is_honoured() -> None:
    replica = Replica(lambda head, body: _ok(body, b"Connection: close\r\n"))

    async def scenario() -> None:
        async with serving(replica) as address:
            pool = Pool(address)
            await pool.post(b"", b"a", 5)
            await pool.post(b"", b"b", 5)
            pool.close()

    run(scenario())
    assert replica.connections == 2


def test_no_replica_listening_is_a_connect_error() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await Pool(f"http://127.0.0.1:{port}").post(b"", b"x", 5)

    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        run(scenario())


def test_a_replica_dying_mid_request_is_a_disconnect() -> None:
    replica = Replica(lambda head, body: b"")  # reads the request, closes without answering

    async def scenario() -> None:
        async with serving(replica) as address:
            await Pool(address).post(b"", b"x", 5)

    with pytest.raises(UpstreamDisconnected):
        run(scenario())


def test_a_slow_answer_times_out_and_its_connection_is_not_reused() -> None:
    release = asyncio.Event()
    replica = Replica()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replica.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        pool = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        try:
            with pytest.raises(TimeoutError):
                await pool.post(b"", b"x", 0.2)
            assert not pool._idle  # the half-used connection was closed, not kept
        finally:
            release.set()
            server.close()

    run(scenario())


def test_a_unix_socket_replica(tmp_path: Path) -> None:
    replica = Replica()

    async def scenario() -> bytes:
        async with serving(replica, unix=tmp_path / "r.sock") as address:
            pool = Pool(address)
            answer = await pool.post(b"", b"over a unix socket", 5)
            pool.close()
            return answer.body

    assert run(scenario()) == b"over a unix socket"
    assert b"Host: localhost\r\n" in replica.requests[0][0]


def test_pools_of_replicas_no_longer_routed_are_closed() -> None:
    replica = Replica()

    async def scenario() -> None:
        async with serving(replica) as address:
            upstreams = Upstreams()
            await upstreams.pool(address).post(b"", b"x", 5)
            upstreams.retain(set())
            await upstreams.pool(address).post(b"", b"y", 5)  # a fresh pool connects again
            upstreams.close()

    run(scenario())
    assert replica.connections == 2


def test_an_answer_that_ends_with_the_connection_is_complete() -> None:
    # HTTP/1.0-style: no Content-Length, the body runs until the replica closes.
    replica = Replica(lambda head, body: b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n" + body)

    async def scenario() -> Any:
        async with serving(replica) as address:
            pool = Pool(address)
            first = await pool.post(b"", b"until close", 5)
            second = await pool.post(b"", b"again", 5)  # on a new connection
            pool.close()
            return first, second

    first, second = run(scenario())
    assert (first.status, first.body) == (200, b"until close")
    assert second.body == b"again"
    assert replica.connections == 2


def test_connecting_to_a_replica_that_accepts_nothing_times_out() -> None:
    async def scenario() -> None:
        # A listener that never accepts, its backlog filled: new connections hang in SYN.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            await asyncio.wait_for(Pool(f"http://127.0.0.1:{port}").post(b"", b"x", 0.5), 10)
        finally:
            for filler in fillers:
                filler.close()
            listener.close()

    with pytest.raises(UpstreamConnectError, match="timed out"):
        run(scenario())
