"""The header deadline around uvicorn's protocol, on an in-process uvicorn on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pyloto_cli.web.header_deadline import HeaderDeadline
from tests.e2e.serve_process import free_port
from tests.waiting import wait_until

TIMEOUT_S = 0.5
PACE_S = 0.05


RELEASE: asyncio.Event | None = None  # what /slow waits for after reading its body


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def slow(request: Request) -> PlainTextResponse:
    body = await request.body()
    assert RELEASE is not None
    await RELEASE.wait()
    return PlainTextResponse(body)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """uvicorn serving a one-route app with a TIMEOUT_S header deadline, as `serve` does."""
    number = free_port()
    deadline = HeaderDeadline(TIMEOUT_S)
    config = uvicorn.Config(
        deadline.wrap(
            Starlette(routes=[Route("/", hello), Route("/slow", slow, methods=["POST"])])
        ),
        host="127.0.0.1",
        port=number,
        http=deadline.protocol,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=1,  # a test that failed may leave /slow waiting
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, what="uvicorn started")
    yield number
    server.should_exit = True
    await task


async def answer_of(reader: asyncio.StreamReader) -> bytes:
    """One whole answer (head, then as many bytes as its Content-Length says)."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        return head + await reader.readexactly(length)


async def paced(writer: asyncio.StreamWriter, *parts: bytes) -> None:
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(PACE_S)  # a slow client's pace, not a wait for the server


async def test_head_split_inside_its_blank_line_is_served(port: int) -> None:
    """CRLF CRLF arriving in four pieces still ends the head: the request is answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await paced(writer, b"GET / HTTP/1.1\r\nHost: x\r", b"\n", b"\r", b"\n")
    answer = await answer_of(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"hello")


async def test_a_head_arriving_before_the_deadline_keeps_the_connection(port: int) -> None:
    """Two requests on one connection, each within the deadline: both answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):
        await paced(writer, b"GET / HTTP/1.1\r\n", b"Host: x\r\n\r\n")
        answer = await answer_of(reader)
        assert answer.startswith(b"HTTP/1.1 200")
    writer.close()


async def trickled_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, byte: bytes
) -> float:
    """Send `byte` every PACE_S until the server closes the connection: how long that took
    (an AssertionError if it has not after the deadline and five seconds more)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < TIMEOUT_S + 5:
        try:
            writer.write(byte)
            await writer.drain()
            if await asyncio.wait_for(reader.read(4096), PACE_S) == b"":
                break
        except TimeoutError:
            continue
        except ConnectionError:
            break
    else:
        raise AssertionError("the connection was never closed")
    writer.close()
    return loop.time() - started


async def test_empty_lines_do_not_stop_the_clock(port: int) -> None:
    """A client sending only empty lines has sent no request: closed at the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await trickled_until_closed(reader, writer, b"\r\n") >= TIMEOUT_S * 0.9


async def test_body_left_unread_and_trickled_after_the_answer_is_cut_off(port: int) -> None:
    """The app answers without reading the body; the client goes on trickling it, blank
    lines and all: no request reaches the app, so the connection is closed at the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    await writer.drain()
    assert (await answer_of(reader)).startswith(b"HTTP/1.1 405")
    assert await trickled_until_closed(reader, writer, b"\r\n\r\nGET / HTTP/1.1") >= 0


async def test_silent_connection_is_closed_at_the_deadline(port: int) -> None:
    """A connection that never sends a byte is closed too (uvicorn alone keeps it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(4096), TIMEOUT_S + 5) == b""
    writer.close()


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "100-continue"])
async def test_a_request_in_the_app_longer_than_the_deadline_is_not_cut(
    port: int, expect: bool
) -> None:
    """The clock stops once a request reaches the app, and an interim `100 Continue` does not
    restart it: an answer that takes twice the deadline still arrives."""
    global RELEASE  # the app and the test share the release
    RELEASE = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    writer.write(head + (b"Expect: 100-continue\r\n\r\n" if expect else b"\r\n"))
    if expect:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hi")
    await writer.drain()
    with pytest.raises(TimeoutError):  # still open, still waiting: the duration under test
        await asyncio.wait_for(reader.read(1), TIMEOUT_S * 2)
    RELEASE.set()
    answer = await answer_of(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"hi")
