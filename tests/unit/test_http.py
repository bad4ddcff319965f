"""The data plane's HTTP/1.1 server over real sockets, spoken to byte by byte where it matters."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from modelyard.dataplane.http import Answer, HttpServer, Request

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def echo(request: Request) -> Answer:
    if request.path == "/slow":
        await asyncio.sleep(float(request.body or b"0.2"))
    body = b"%s %s?%s %s" % (
        request.method.encode(),
        request.path.encode(),
        request.query,
        request.body,
    )
    return (
        200,
        [
            (b"content-type", b"text/plain"),
            (b"x-seen-type", request.headers.get(b"content-type", b"-")),
        ],
        body,
    )


@contextlib.asynccontextmanager
async def started(**options: Any) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(echo, **options)
    (address,) = await server.listen(host="127.0.0.1", port=0)
    try:
        yield server, int(address.rsplit(":", 1)[1])
    finally:
        await server.shutdown(grace_s=2)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), 5)
    return status, headers, body


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_keep_alive_requests_share_a_connection_with_httpx() -> None:
    async def scenario() -> list[httpx.Response]:
        async with started() as (_, port), httpx.AsyncClient(trust_env=False) as client:
            url = f"http://127.0.0.1:{port}"
            return [
                await client.post(f"{url}/a?x=1", content=b"one", headers={"Content-Type": "t/1"}),
                await client.get(f"{url}/b"),
            ]

    first, second = run(scenario())
    assert first.status_code == 200
    assert first.content == b"POST /a?x=1 one"
    assert first.headers["x-seen-type"] == "t/1"
    assert "date" in first.headers
    assert second.content == b"GET /b? "


def test_chunked_bodies_are_decoded() -> None:
    async def scenario() -> bytes:
        async with started() as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            _, _, body = await read_response(reader)
            writer.close()
            return body

    assert run(scenario()) == b"POST /c? hello world"


def test_expect_100_continue_is_answered_before_the_body() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        async with started() as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"body")
            _, _, body = await read_response(reader)
            writer.close()
            return interim, body

    interim, body = run(scenario())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert body == b"POST /e? body"


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> list[bytes]:
        async with started() as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # The first is slow: answers must still come back in the order asked.
            writer.write(
                b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n0.2"
                b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
                b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            bodies = [(await read_response(reader))[2] for _ in range(3)]
            writer.close()
            return bodies

    assert run(scenario()) == [b"POST /slow? 0.2", b"POST /2? two", b"GET /3? "]


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent() -> None:
    def errors(status: int, message: str) -> Answer:
        return status, [(b"x-error", b"mine")], message.encode()

    async def scenario() -> tuple[int, dict[bytes, bytes], bytes]:
        async with started(max_body=10, errors=errors) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
            answer = await read_response(reader)  # no body was sent: refused on the headers
            writer.close()
            return answer

    status, headers, body = run(scenario())
    assert status == 413
    assert headers[b"x-error"] == b"mine"
    assert headers[b"connection"] == b"close"
    assert b"limit of 10 bytes" in body


def test_a_chunked_body_over_the_limit_is_refused() -> None:
    async def scenario() -> int:
        async with started(max_body=10) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
            )
            status, _, _ = await read_response(reader)
            writer.close()
            return status

    assert run(scenario()) == 413


def test_a_malformed_request_gets_400_and_the_connection_closes() -> None:
    async def scenario() -> tuple[int, bytes]:
        async with started() as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            status, _, _ = await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return status, rest

    assert run(scenario()) == (400, b"")


def test_head_answers_headers_only() -> None:
    async def scenario() -> bytes:
        async with started() as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"content-length: 9" in head.lower()  # of "HEAD /h? ", not sent
            _, _, body = await read_response(reader)  # the next answer follows at once
            writer.close()
            return body

    assert run(scenario()) == b"GET /next? "


def test_http_1_0_without_keep_alive_is_closed_after_the_answer() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        async with started() as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /old HTTP/1.0\r\n\r\n")
            _, headers, body = await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return headers[b"connection"], body + rest

    assert run(scenario()) == (b"close", b"GET /old? ")


def test_idle_connections_are_closed_after_the_keep_alive_timeout() -> None:
    async def scenario() -> bytes:
        async with started(keepalive_s=0.1) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF once the server closes it
            writer.close()
            return rest

    assert run(scenario()) == b""


def test_shutdown_lets_a_request_in_progress_finish_and_refuses_new_connections() -> None:
    async def scenario() -> tuple[int, dict[bytes, bytes], bool]:
        entered, release = asyncio.Event(), asyncio.Event()

        async def held(request: Request) -> Answer:
            entered.set()
            await release.wait()
            return 200, [], b"done"

        server = HttpServer(held)
        (address,) = await server.listen(host="127.0.0.1", port=0)
        port = int(address.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.ensure_future(server.shutdown(grace_s=5))
        await asyncio.sleep(0)  # shutdown has begun: the listener is closed
        refused = False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            refused = True
        release.set()
        status, headers, _ = await read_response(reader)
        await stopping
        writer.close()
        return status, headers, refused

    status, headers, refused = run(scenario())
    assert status == 200
    assert headers[b"connection"] == b"close"
    assert refused


def test_a_refused_request_pipelined_behind_another_is_answered_after_it() -> None:
    async def scenario() -> list[tuple[int, bytes]]:
        async with started(max_body=10) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # A slow valid request, then one whose body is over the limit: the first still
            # gets its own answer, then the refusal, then the connection closes.
            writer.write(
                b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n0.2"
                b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n"
            )
            answers = []
            for _ in range(2):
                status, _, body = await read_response(reader)
                answers.append((status, body))
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return [*answers, (0, rest)]

    assert run(scenario()) == [
        (200, b"POST /slow? 0.2"),
        (413, b"request body larger than the limit of 10 bytes"),
        (0, b""),
    ]


@pytest.mark.parametrize("ending", [b"\r\n\r\n", b""], ids=["whole", "never-ending"])
def test_a_request_head_over_the_limit_gets_431(ending: bytes) -> None:
    async def scenario() -> int:
        async with started(max_head=1024) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + ending)
            status, _, _ = await read_response(reader)
            writer.close()
            return status

    assert run(scenario()) == 431


def test_a_request_that_stops_arriving_half_way_is_closed_after_the_idle_timeout() -> None:
    async def scenario() -> bytes:
        async with started(keepalive_s=0.2) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the server gave up on it
            writer.close()
            return rest

    assert run(scenario()) == b""


def test_a_handler_that_raises_gets_the_server_error_answer() -> None:
    async def broken(request: Request) -> Answer:
        raise RuntimeError("a defect")

    async def scenario() -> httpx.Response:
        server = HttpServer(broken)
        (address,) = await server.listen(host="127.0.0.1", port=0)
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                return await client.get(f"{address}/")
        finally:
            await server.shutdown(grace_s=1)

    response = run(scenario())
    assert response.status_code == 500
    assert response.text == "internal server error"


def test_a_handler_can_tell_that_its_client_went_away() -> None:
    seen: list[bool] = []
    arrived = asyncio.Event()

    async def waiting(request: Request) -> Answer:
        seen.append(request.client_gone)
        arrived.set()
        for _ in range(250):  # up to 5 s: a long wait that a gone client ends early
            if request.client_gone:
                seen.append(True)
                break
            await asyncio.sleep(0.02)
        return 200, [], b"too late"

    async def scenario() -> None:
        server = HttpServer(waiting)
        (address,) = await server.listen(host="127.0.0.1", port=0)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", int(address.rsplit(":", 1)[1]))
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            await writer.drain()
            await asyncio.wait_for(arrived.wait(), 5)
            writer.close()  # the client gives up
            await writer.wait_closed()
            for _ in range(250):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.02)
        finally:
            await server.shutdown(grace_s=2)

    run(scenario())
    assert seen == [False, True]
    assert not Request("GET", "/", b"", {}, b"").client_gone  # made outside a server: no client
