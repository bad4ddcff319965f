"""Streamed request bodies and streamed answers of the data plane's HTTP server, over real
sockets (raw where the bytes on the wire matter)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from modelyard.dataplane import http
from modelyard.dataplane.http import (
    Answer,
    BodyIncomplete,
    BodyStream,
    BodyTooLarge,
    HttpServer,
    Request,
    StreamedAnswer,
)

MiB = 1024 * 1024
Handler = Callable[[Request], Awaitable[Answer | StreamedAnswer]]


def stream_all(method: str, path: str, headers: dict[bytes, bytes]) -> int | None:
    """Stream the bodies sent to /stream..., up to 64 MiB; buffer the others."""
    return 64 * MiB if path.startswith("/stream") else None


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ chunk to chunk, so that reordering would show."""
    block = bytes(range(256)) * 4
    return b"".join(block[(i + seed) % 7 :][:1000] for i in range(size // 1000 + 1))[:size]


async def summarise(request: Request) -> Answer:
    """Read the whole body, as a stream or buffered; answer its length and digest."""
    digest = hashlib.sha256()
    if request.stream is None:
        digest.update(request.body)
        kind = b"buffered"
    else:
        assert request.body == b""
        async for chunk in request.stream:
            digest.update(chunk)
        kind = b"streamed"
    size = request.stream.received if request.stream else len(request.body)
    return 200, [(b"x-kind", kind)], b"%d %s" % (size, digest.hexdigest().encode())


def summary(body: bytes) -> bytes:
    return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


@contextlib.asynccontextmanager
async def started(handler: Handler, **options: Any) -> AsyncIterator[tuple[HttpServer, int]]:
    options.setdefault("streaming", stream_all)
    server = HttpServer(handler, **options)
    (address,) = await server.listen(host="127.0.0.1", port=0)
    try:
        yield server, int(address.rsplit(":", 1)[1])
    finally:
        await server.shutdown(grace_s=2)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """One answer, with a Content-Length or chunked body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), 5)
    else:
        parts = []
        while size := int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5), 16):
            parts.append(await asyncio.wait_for(reader.readexactly(size + 2), 5))
        await asyncio.wait_for(reader.readexactly(2), 5)
        body = b"".join(part[:-2] for part in parts)
    return int(lines[0].split()[1]), headers, body


async def poll(check: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Wait (yielding to the event loop) until ``check()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "timed out polling"
        await asyncio.sleep(0.001)


def connection(server: HttpServer) -> Any:
    (conn,) = server.connections
    return conn


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# request bodies -----------------------------------------------------------------------------


def test_a_content_length_body_reaches_a_handler_started_before_it_was_sent() -> None:
    body = pattern(3 * MiB + 17)

    async def scenario() -> tuple[int, dict[bytes, bytes], bytes]:
        started_before_body = asyncio.Event()

        async def handler(request: Request) -> Answer:
            started_before_body.set()
            return await summarise(request)

        async with started(handler) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            await asyncio.wait_for(started_before_body.wait(), 5)  # no byte of body sent yet
            writer.write(body)
            answer = await read_response(reader)
            writer.close()
            return answer

    status, headers, answer = run(scenario())
    assert (status, headers[b"x-kind"], answer) == (200, b"streamed", summary(body))


def test_a_chunked_body_is_streamed_in_order_and_whole() -> None:
    parts = [pattern(size, seed) for seed, size in enumerate([1, 70_000, 5, 2 * MiB, 333])]

    async def scenario() -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        async with started(summarise) as (_, port), httpx.AsyncClient(trust_env=False) as client:
            return await client.post(f"http://127.0.0.1:{port}/stream", content=chunks())

    response = run(scenario())
    assert response.headers["x-kind"] == "streamed"
    assert response.content == summary(b"".join(parts))


def test_buffered_requests_are_unaffected_by_streaming() -> None:
    async def scenario() -> list[httpx.Response]:
        async with started(summarise) as (_, port), httpx.AsyncClient(trust_env=False) as client:
            url = f"http://127.0.0.1:{port}"
            return [
                await client.post(f"{url}/buffered", content=b"abc"),
                await client.get(f"{url}/stream"),  # no body: nothing to stream
            ]

    posted, got = run(scenario())
    assert (posted.headers["x-kind"], posted.content) == ("buffered", summary(b"abc"))
    assert (got.headers["x-kind"], got.content) == ("buffered", summary(b""))


def test_a_slow_reader_holds_the_client_back_and_memory_stays_bounded() -> None:
    body = pattern(32 * MiB)

    async def scenario() -> tuple[int, int, bytes]:
        arrived: asyncio.Future[BodyStream] = asyncio.get_running_loop().create_future()
        go = asyncio.Event()
        most_unread = 0

        async def handler(request: Request) -> Answer:
            nonlocal most_unread
            assert request.stream is not None
            arrived.set_result(request.stream)
            await go.wait()
            digest, taken = hashlib.sha256(), 0
            async for chunk in request.stream:
                taken += len(chunk)
                most_unread = max(most_unread, request.stream.received - taken)
                digest.update(chunk)
            return 200, [], b"%d %s" % (taken, digest.hexdigest().encode())

        async with started(handler) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            writer.write(body)  # more than the kernel's buffers hold: the rest waits in ours
            stream = await asyncio.wait_for(arrived, 5)
            await poll(lambda: not connection(server).transport.is_reading())
            received_while_paused = stream.received
            assert writer.transport.get_write_buffer_size() > 0  # the client is held back
            go.set()
            _, _, answer = await read_response(reader)
            writer.close()
            return received_while_paused, most_unread, answer

    received_while_paused, most_unread, answer = run(scenario())
    assert answer == summary(body)
    assert http._STREAM_HIGH < received_while_paused < 2 * MiB
    assert most_unread < 2 * MiB


async def too_large(request: Request) -> Answer:
    assert request.stream is not None
    try:
        async for _ in request.stream:
            pass
    except BodyTooLarge as exc:
        return 413, [], str(exc).encode()
    return 200, [], b"read it all"


def test_a_declared_body_over_the_limit_raises_at_once_and_gets_the_handlers_413() -> None:
    async def scenario() -> tuple[int, dict[bytes, bytes], bytes, bytes]:
        async with started(too_large, streaming=lambda *_: 1000) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # No 100 Continue for a body that is too large: the answer comes straight away.
            writer.write(
                b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            status, headers, answer = await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 5)  # then the connection ends
            writer.close()
            return status, headers, answer, rest

    status, headers, answer, rest = run(scenario())
    assert (status, headers[b"connection"], rest) == (413, b"close", b"")
    assert answer == b"request body larger than the limit of 1000 bytes"


def test_a_chunked_body_going_over_the_limit_gets_413_and_the_connection_closes() -> None:
    async def scenario() -> tuple[int, dict[bytes, bytes], bytes]:
        async with started(too_large, streaming=lambda *_: MiB) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(3):  # 3 MiB in all; the next request would follow
                writer.write(b"100000\r\n" + b"x" * MiB + b"\r\n")
            writer.write(b"0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return status, headers, rest

    status, headers, rest = run(scenario())
    assert (status, headers[b"connection"], rest) == (413, b"close", b"")


def test_a_client_that_goes_mid_body_makes_read_raise_body_incomplete() -> None:
    async def scenario() -> BaseException | None:
        failed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        async def handler(request: Request) -> Answer:
            try:
                await summarise(request)
            except BaseException as exc:
                failed.set_result(exc)
                raise
            failed.set_result(None)
            return 200, [], b""

        async with started(handler) as (_, port):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npart")
            await writer.drain()
            writer.close()
            return await asyncio.wait_for(failed, 5)

    assert isinstance(run(scenario()), BodyIncomplete)


def test_a_client_that_stalls_mid_body_is_dropped_after_the_idle_timeout() -> None:
    async def scenario() -> tuple[BaseException | None, bytes]:
        failed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        async def handler(request: Request) -> Answer:
            try:
                await summarise(request)
            except BodyIncomplete as exc:
                failed.set_result(exc)
                return 400, [], b"incomplete"
            failed.set_result(None)
            return 200, [], b""

        async with started(handler, keepalive_s=0.2) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npart")
            exc = await asyncio.wait_for(failed, 5)
            status, _, _ = await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the server gave up on it
            writer.close()
            return exc, b"%d" % status + rest

    exc, answer = run(scenario())
    assert isinstance(exc, BodyIncomplete)
    assert "no data from the client" in str(exc)
    assert answer == b"400"


def test_a_slowly_arriving_body_outlives_the_idle_timeout_while_it_is_read() -> None:
    async def scenario() -> bytes:
        async with started(summarise, keepalive_s=0.15) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
            for piece in (b"ab", b"cd", b"ef", b"gh"):  # 0.4 s in all, never 0.15 s silent
                await asyncio.sleep(0.1)  # the client's pace, not a synchronisation
                writer.write(piece)
            _, _, answer = await read_response(reader)
            writer.close()
            return answer

    assert run(scenario()) == summary(b"abcdefgh")


def test_a_body_held_back_by_a_busy_handler_is_not_taken_for_a_stalled_one() -> None:
    body = pattern(4 * MiB)

    async def scenario() -> bytes:
        async def busy(request: Request) -> Answer:
            assert request.stream is not None
            await request.stream.read()
            # Busy for longer than the idle timeout while reading is paused (the client is
            # held back by us, not silent): reading on must not count that as a stall.
            await poll(lambda: not conn.transport.is_reading())
            await asyncio.sleep(0.3)
            return await summarise(request)

        async with started(busy, keepalive_s=0.2) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            await poll(lambda: server.connections)
            conn = connection(server)
            writer.write(body)
            _, _, answer = await read_response(reader)
            writer.close()
            return answer

    assert run(scenario()).split()[0] == b"%d" % len(body)  # all of it was received


def test_expect_100_continue_is_answered_when_the_handler_reads() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        async with started(summarise) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"body")
            _, _, answer = await read_response(reader)
            writer.close()
            return interim, answer

    interim, answer = run(scenario())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer == summary(b"body")


def test_the_connection_is_kept_alive_after_a_streamed_body_read_whole() -> None:
    async def scenario() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        async with started(summarise) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none")
            first = await read_response(reader)
            # Then a streamed request with one pipelined behind it, in one write.
            writer.write(
                b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\ntwo\r\n0\r\n\r\n"
                b"POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthree"
            )
            answers = [first, await read_response(reader), await read_response(reader)]
            writer.close()
            return answers

    answers = run(scenario())
    assert [answer[2] for answer in answers] == [
        summary(b"one"),
        summary(b"two"),
        summary(b"three"),
    ]
    assert [answer[1][b"x-kind"] for answer in answers] == [b"streamed", b"streamed", b"buffered"]
    assert all(b"connection" not in answer[1] for answer in answers)


def test_a_handler_that_leaves_the_body_unread_answers_then_the_connection_closes() -> None:
    async def ignore(request: Request) -> Answer:
        return 404, [], b"no such thing"

    async def scenario() -> tuple[int, dict[bytes, bytes], bytes]:
        async with started(ignore) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (8 * MiB)
            )
            writer.write(b"x" * MiB)  # some of it
            status, headers, _ = await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return status, headers, rest

    status, headers, rest = run(scenario())
    assert (status, headers[b"connection"], rest) == (404, b"close", b"")


def test_a_malformed_chunk_makes_read_raise_body_incomplete() -> None:
    async def scenario() -> tuple[int, bytes]:
        async def handler(request: Request) -> Answer:
            try:
                await summarise(request)
            except BodyIncomplete as exc:
                return 400, [], str(exc).encode()
            return 200, [], b""

        async with started(handler) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\nzz\r\n"
            )
            status, _, answer = await read_response(reader)
            writer.close()
            return status, answer

    status, answer = run(scenario())
    assert status == 400
    assert answer.startswith(b"the request body broke off")


# streamed answers ---------------------------------------------------------------------------


def answer_parts() -> Iterator[bytes]:
    yield b"first,"
    yield b""  # empty chunks are skipped (an empty chunk would end the body)
    for seed in range(5):
        yield pattern(100_000, seed)
    yield b"last"


async def streamed(request: Request) -> StreamedAnswer:
    async def parts() -> AsyncIterator[bytes]:
        for part in answer_parts():
            yield part
        if request.path == "/broken":
            raise RuntimeError("the answer breaks off")

    return 200, [(b"content-type", b"text/plain")], parts()


def test_a_streamed_answer_arrives_whole_and_chunked() -> None:
    async def scenario() -> tuple[list[httpx.Response], bytes]:
        async with started(streamed) as (_, port), httpx.AsyncClient(trust_env=False) as client:
            url = f"http://127.0.0.1:{port}"
            answers = [await client.get(f"{url}/a"), await client.head(f"{url}/a")]
            answers.append(await client.get(f"{url}/b"))  # the connection was kept alive
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.close()
            return answers, head

    (got, head, again), raw_head = run(scenario())
    whole = b"".join(answer_parts())
    assert got.status_code == 200
    assert got.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in got.headers
    assert got.content == whole
    assert (head.status_code, head.content) == (200, b"")
    assert again.content == whole
    assert b"transfer-encoding: chunked\r\n" in raw_head


def test_an_answer_that_breaks_off_is_seen_incomplete_by_the_client() -> None:
    async def scenario() -> None:
        async with started(streamed) as (_, port), httpx.AsyncClient(trust_env=False) as client:
            await client.get(f"http://127.0.0.1:{port}/broken")

    with pytest.raises(httpx.RemoteProtocolError):
        run(scenario())


def test_a_streamed_answer_waits_for_a_client_that_does_not_read() -> None:
    total = 64 * MiB

    async def scenario() -> tuple[int, bytes]:
        produced = 0

        async def big(request: Request) -> StreamedAnswer:
            async def parts() -> AsyncIterator[bytes]:
                nonlocal produced
                block = b"y" * MiB
                while produced < total:
                    produced += len(block)
                    yield block

            return 200, [], parts()

        async with started(big) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await poll(lambda: server.connections and not connection(server).can_write.is_set())
            produced_while_unread = produced
            _, _, answer = await read_response(reader)
            writer.close()
            return produced_while_unread, answer

    produced_while_unread, answer = run(scenario())
    assert produced_while_unread < total // 2  # the rest waited for the client
    assert answer == b"y" * total
