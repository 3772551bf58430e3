"""A deadline for each request's headers, around uvicorn's HTTP/1.1 protocol.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`); a client that opens
a connection and trickles its headers a byte at a time holds it, and one of the server's
connection slots, for as long as it likes. The app cannot help: it is called once the headers
are complete. So `serve` gives uvicorn, through its public options, this protocol as `http=`
(every byte and call passed through to uvicorn's own protocol) and the app wrapped in
`HeaderDeadline.wrap`, and a connection is closed when no request on it has reached the app
`timeout_s` seconds after the connection opened or after the server last answered on it. The
body has its own deadline in the app (`web.body.read_body`, 408).

"Reached the app" is exact, whatever bytes the client sends (a body left unread after an early
answer, empty lines, a head split anywhere): uvicorn starts the app's task for a request from
within the protocol's `data_received` (or, for a pipelined one, from the previous request's
task), and the task inherits the context that is current there, in which the protocol has put
the callback that stops its clock. An interim answer (`100 Continue`) does not restart it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.server import ServerState

from pyloto_cli.logs import get_logger, log_event

_log = get_logger("web")
# the connection a request came in on, as the callback that stops its clock
_request_arrived: ContextVar[Callable[[], None] | None] = ContextVar(
    "pyloto_request_arrived", default=None
)


@dataclass(frozen=True, slots=True)
class HeaderDeadline:
    """The two halves uvicorn is given: `protocol` as `http=`, and the app through `wrap`."""

    timeout_s: float

    @property
    def protocol(self) -> type[asyncio.Protocol]:
        """uvicorn's own protocol, with this deadline on every request's headers."""
        return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"timeout_s": self.timeout_s})

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """`app`, stopping its connection's clock as each request reaches it."""

        async def arrived(scope: Scope, receive: Receive, send: Send) -> None:
            stop_clock = _request_arrived.get()
            if stop_clock is not None:
                stop_clock()
            await app(scope, receive, send)

        return arrived


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream server's connection
        self.await_request()
        self.inner.connection_made(_AnswerWatch(self.transport, self.answered))

    def data_received(self, data: bytes) -> None:
        # a request task uvicorn starts in here takes this connection's callback along
        token = _request_arrived.set(self.stop_clock)
        try:
            self.inner.data_received(data)
        finally:
            _request_arrived.reset(token)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_clock()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def answered(self, data: bytes | bytearray | memoryview) -> None:
        """The server wrote: unless an interim answer, the next request is awaited."""
        if not bytes(data[:10]).startswith(b"HTTP/1.1 1"):
            self.await_request()

    def await_request(self) -> None:
        """(Re)start the clock: a request must reach the app within `timeout_s`."""
        self.stop_clock()
        self.timer = self.loop.call_later(self.timeout_s, self.expire)

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

    def __init__(
        self,
        transport: asyncio.Transport,
        on_write: Callable[[bytes | bytearray | memoryview], None],
    ) -> None:
        super().__init__()
        self.transport = transport
        self.on_write = on_write

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.on_write(data)
        self.transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.on_write(b"")
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
