"""A deadline for each request's headers, around uvicorn's HTTP/1.1 protocol.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`); a client that opens
a connection and trickles its headers a byte at a time holds it, and one of the server's
connection slots, for as long as it likes. The app cannot help: it is called once the headers
are complete. So `serve` hands uvicorn this protocol (the public `http=` option takes a
protocol class), which passes every byte and call through to uvicorn's own protocol and closes
the connection when a request's headers have not all arrived `timeout_s` seconds after the
connection opened or the server last answered on it. The body has its own deadline in the app
(`web.body.read_body`, 408).

"All arrived" is the blank line that ends an HTTP/1.1 head (CRLF CRLF, after any empty lines a
client may send first). The clock restarts when the server writes, since its answer ends one
request; a client that pipelines a request behind another (none that pyloto serves does) has
`timeout_s` for the first answer to be written before the connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.server import ServerState

from pyloto_cli.logs import get_logger, log_event

_HEAD_END = b"\r\n\r\n"
_log = get_logger("web")


def header_deadline(timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn as `http=`: its own, with a `timeout_s` deadline on
    every request's headers."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"timeout_s": timeout_s})


class HeaderDeadlineProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol, closed when a request's headers are late (module docstring)."""

    timeout_s: ClassVar[float] = 10.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inner = AutoHTTPProtocol(  # type: ignore[call-arg]
            config=config, server_state=server_state, app_state=app_state, _loop=_loop
        )
        self.loop = _loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = False  # a byte of the awaited head, other than an empty line, arrived
        self.tail = b""  # the end of what arrived of the awaited head, for a split CRLF CRLF

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream server's connection
        self.await_head()
        self.inner.connection_made(_AnswerWatch(self.transport, self.await_head))

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            self.watch(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_clock()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def await_head(self) -> None:
        """(Re)start the clock: a request's head is due within `timeout_s`."""
        self.stop_clock()
        self.started, self.tail = False, b""
        self.timer = self.loop.call_later(self.timeout_s, self.expire)

    def watch(self, data: bytes) -> None:
        """Stop the clock once the awaited head is complete."""
        chunk = data if self.started else data.lstrip(b"\r\n")
        if not chunk:
            return
        self.started = True
        window = self.tail + chunk
        if _HEAD_END in window:
            self.stop_clock()
        else:
            self.tail = window[-(len(_HEAD_END) - 1) :]

    def stop_clock(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            log_event(_log, "request_header_timeout", timeout_s=self.timeout_s)
            self.transport.close()


class _AnswerWatch(asyncio.Transport):
    """The connection's transport as uvicorn's protocol sees it: every write (the server
    answering) is reported before it is passed on."""

    def __init__(self, transport: asyncio.Transport, on_write: Callable[[], None]) -> None:
        super().__init__()
        self.transport = transport
        self.on_write = on_write

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.on_write()
        self.transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.on_write()
        self.transport.writelines(list_of_data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.transport.write_eof()
