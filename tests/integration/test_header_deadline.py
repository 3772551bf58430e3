"""The header deadline around uvicorn's protocol, on an in-process uvicorn on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pyloto_cli.web.header_deadline import header_deadline
from tests.e2e.serve_process import free_port
from tests.waiting import wait_until

TIMEOUT_S = 0.5
PACE_S = 0.05


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """uvicorn serving a one-route app through `header_deadline(TIMEOUT_S)`."""
    number = free_port()
    config = uvicorn.Config(
        Starlette(routes=[Route("/", hello)]),
        host="127.0.0.1",
        port=number,
        http=header_deadline(TIMEOUT_S),
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, what="uvicorn started")
    yield number
    server.should_exit = True
    await task


async def answer_of(reader: asyncio.StreamReader) -> bytes:
    """One whole answer of the app (head, then its five-byte body)."""
    async with asyncio.timeout(5):
        return await reader.readuntil(b"\r\n\r\n") + await reader.readexactly(len(b"hello"))


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


async def test_empty_lines_do_not_stop_the_clock(port: int) -> None:
    """A client sending only empty lines has sent no head: closed at the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed = False
    while not closed and loop.time() - started < TIMEOUT_S + 5:
        try:
            writer.write(b"\r\n")
            await writer.drain()
            closed = await asyncio.wait_for(reader.read(4096), PACE_S) == b""
        except TimeoutError:
            continue
        except ConnectionError:
            closed = True
    writer.close()
    assert closed
    assert loop.time() - started >= TIMEOUT_S * 0.9


async def test_silent_connection_is_closed_at_the_deadline(port: int) -> None:
    """A connection that never sends a byte is closed too (uvicorn alone keeps it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(4096), TIMEOUT_S + 5) == b""
    writer.close()
