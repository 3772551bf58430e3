"""A raw HTTP/1.1 server on loopback that answers each request as a test tells it to.

    async with raw_server(lambda request: plain(200, b"{}")) as server:
        ... server.url, server.connections, server.requests ...

`answer` gets each request's bytes and returns the answer's bytes (b"": say nothing and wait
for the next request; None: hang up). For testing HTTP clients below the level of a framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

Answer = Callable[[bytes], bytes | None]  # the request's bytes -> the answer's, or None: hang


def plain(status: int = 200, body: bytes = b"{}", close: bool = False) -> bytes:
    """An answer with a Content-Length (and `Connection: close` when `close`)."""
    extra = b"Connection: close\r\n" if close else b""
    head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra)
    return head + body


@dataclass
class RawServer:
    """What the server saw: connections accepted, requests read, whether one has ended."""

    answer: Answer
    close_after: Collection[int] = ()  # connections (numbered from 0) closed after one answer
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.answer(request)
                if answer is None:  # hang up without a word
                    break
                writer.write(answer)
                await writer.drain()
                if number in self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(
    answer: Answer, ssl: ssl_module.SSLContext | None = None, close_after: Collection[int] = ()
) -> AsyncIterator[RawServer]:
    """Serve on a free 127.0.0.1 port (TLS with `ssl`; the connections numbered in
    `close_after` closed after their first answer); on exit, stop and end every connection's
    handler."""
    state = RawServer(answer, close_after)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=ssl)
    scheme = "https" if ssl is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield state
    for task in state.handlers:  # those still reading a connection the client left open
        task.cancel()
    await asyncio.gather(*state.handlers, return_exceptions=True)
