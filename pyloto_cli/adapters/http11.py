"""pyloto's HTTP/1.1 transport for httpx and httpx2: keep-alive connections on asyncio, answers
read with httptools (uvicorn's parser).

    client = httpx.AsyncClient(transport=Http11Transport(limits=httpx.Limits(...)))

Both of pyloto's clients send small JSON requests and read small JSON answers (the Graph API's
on httpx, OpenAI's on httpx2). A general transport pays per request for what those requests do
not use: aiohttp's session builds its own request and response objects, yarl URLs, timers and
a cookie filter under httpx's. This one writes the request's bytes on a pooled connection and
hands httptools' parse of the answer to httpx as it is: about a quarter less CPU per OpenAI
call than on aiohttp's transport (benchmarks/llm_client_cpu.py), the largest part of pyloto's
CPU per message.

What it does: http and https (TLS with the client's certificate checks, SNI), at most
`max_connections` at once (a request waits `pool` seconds for one), idle ones kept
`keepalive_expiry` seconds, answers with a Content-Length, chunked or until the server closes,
1xx answers skipped, the `connect` and `read` timeouts (read: the whole answer, from the write
on). Request bodies are sent whole with a Content-Length. Anything else (HTTP/2, proxies, an
upgrade) is not for it: proxies are routed by the client to their own transports.

Errors keep httpx's meaning, which the callers' retry decisions rest on: ConnectError,
ConnectTimeout and PoolTimeout mean the request was never written; ReadError, ReadTimeout and
RemoteProtocolError mean it may have reached the server. A pooled connection the server closed
while idle is noticed before use and not used. A request is never sent twice here.

`ConnectionPool` is the part without httpx (request bytes in, `Answer` out); the load
generator's client (`bench/load.py`) is the same pool.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import httptools
import httpx
import httpx2

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HEAD = b"HEAD"
Origin = tuple[bytes, str, int]  # scheme, host, port


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP answer."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class ConnectFailed(OSError):
    """No connection could be made: the request was never written."""


class StageTimeout(TimeoutError):
    """A timeout of one `stage`: "pool" and "connect" (never written), or "read"."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class _Unsupported(Exception):
    """A request this transport does not send: not http(s), or a header with a line break."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._head_only = False
        self._unframed = False  # the answer's headers are in and it ends when the server closes
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.reusable = True
        self.idle_since = 0.0

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httptools.HttpParserError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        self._end(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    # --- httptools callbacks ---

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return
        if self._head_only:
            self._complete()  # no body follows; the parser cannot know that, so no reuse
            self._fail(None)
            return
        names = {name.lower() for name, _ in self._headers}
        self._unframed = b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 100 Continue, 103 Early Hints: not the answer
            self._reason, self._headers, self._body = b"", [], []
            return
        self._complete()
        if not self._parser.should_keep_alive():
            self._fail(None)

    # --- the exchange ---

    @property
    def ready(self) -> bool:
        """Idle and still open (a server that closed it while idle is noticed here)."""
        transport = self._transport
        return (
            self.reusable
            and self._waiter is None
            and transport is not None
            and not transport.is_closing()
        )

    async def exchange(self, method: bytes, data: bytes) -> Answer:
        """Write `data` (a whole request) and wait for the answer."""
        transport = self._transport
        if transport is None or self._waiter is not None:
            raise RuntimeError("the connection is busy")
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._head_only = method == _HEAD
        transport.write(data)
        return await waiter

    def close(self) -> None:
        """Close it; an exchange still waiting fails with ConnectionResetError."""
        self._fail(ConnectionResetError("the client closed the connection"))

    def _complete(self) -> None:
        answer = Answer(
            self._parser.get_status_code(), self._reason, self._headers, b"".join(self._body)
        )
        self._reason, self._headers, self._body = b"", [], []
        self._unframed = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _end(self, exc: Exception | None) -> None:
        """The server closed: an answer read until the close is whole; anything else broke."""
        if self._unframed and exc is None:
            self._complete()
        reason = f"the server closed the connection: {exc}" if exc else "the server closed"
        self._fail(ConnectionResetError(reason))

    def _fail(self, exc: BaseException | None) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()
        waiter, self._waiter = self._waiter, None
        if exc is not None and waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _origin(url: Any) -> Origin:
    scheme = url.raw_scheme
    if scheme not in _DEFAULT_PORTS:
        raise _Unsupported(f"the scheme {scheme.decode(errors='replace')!r} is not http(s)")
    return scheme, url.host, url.port or _DEFAULT_PORTS[scheme]


def serialize_request(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    """An HTTP/1.1 request's head (the body goes after it); a line break in it is refused."""
    lines = [method + b" " + target + b" HTTP/1.1", *[n + b": " + v for n, v in headers]]
    head = b"\r\n".join(lines)
    breaks = len(lines) - 1  # the joins': any other CR or LF is in a line
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise _Unsupported("a header name or value holds a line break")
    return head + b"\r\n\r\n"


def _framed(raw: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    """The request's headers framing `body` with a Content-Length: `raw` itself when it
    already does (as httpx does for bytes, or no body and no length), else rebuilt (a streamed
    body was announced as chunked; it is sent whole)."""
    names = [name.lower() for name, _ in raw]
    if b"transfer-encoding" not in names and (b"content-length" in names or not body):
        return raw
    framing = (b"transfer-encoding", b"content-length")
    kept = [header for header, name in zip(raw, names, strict=True) if name not in framing]
    if body or len(kept) != len(raw):
        kept.append((b"Content-Length", str(len(body)).encode()))
    return kept


async def _take_slot(slots: asyncio.Semaphore, wait_s: float | None) -> None:
    """One of `slots`, waiting at most `wait_s`; a free one is taken at once, with no timer
    (a semaphore that is not locked is acquired without waiting)."""
    if not slots.locked():
        await slots.acquire()
        return
    try:
        async with asyncio.timeout(wait_s):
            await slots.acquire()
    except TimeoutError:
        raise StageTimeout("pool", "no connection free in time") from None


class ConnectionPool:
    """Connections by origin, at most `max_connections` in use, at most `max_keepalive` idle
    per origin, each for `keepalive_expiry` seconds (None: no limit).

    `exchange` raises ConnectFailed or StageTimeout("pool"/"connect") when the request was never
    written; ConnectionResetError, StageTimeout("read") or httptools.HttpParserError when it
    was and no good answer came (the server may have acted on it).
    """

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        max_keepalive: int | None = None,
        keepalive_expiry: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._keep = max_keepalive
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def exchange(
        self, origin: Origin, method: bytes, data: bytes, timeouts: Mapping[str, float | None]
    ) -> Answer:
        """Send `data` (a whole request) to `origin` and return the answer."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        if self._slots is not None:
            await _take_slot(self._slots, timeouts.get("pool"))
        try:
            conn = self._idle_connection(origin) or await self._connect(origin, timeouts)
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    return await conn.exchange(method, data)
            except TimeoutError:
                conn.close()
                raise StageTimeout("read", "no answer in time") from None
            except BaseException:  # cancelled: the answer may still come, on no one
                conn.close()
                raise
            finally:
                self._release(origin, conn)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.ready and (self._expiry is None or now - conn.idle_since < self._expiry):
                return conn
            self._drop(conn)
        return None

    async def _connect(self, origin: Origin, timeouts: Mapping[str, float | None]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._ssl if scheme == b"https" else None
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                _, conn = await loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise StageTimeout("connect", f"connecting to {host}:{port}") from None
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        self._open.add(conn)
        return conn

    def _release(self, origin: Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or not conn.ready or (self._keep is not None and len(idle) >= self._keep):
            self._drop(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def close(self) -> None:
        """Close every connection; no exchange after this."""
        self._closed = True
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()


async def _handle(pool: ConnectionPool, http: ModuleType, request: Any) -> Any:
    """An httpx or httpx2 (`http`) request through `pool`, errors as that module's."""
    try:
        origin = _origin(request.url)
        method = request.method.encode("ascii")
        body = await request.aread()
        headers = _framed(request.headers.raw, body)
        data = serialize_request(method, request.url.raw_path, headers) + body
    except _Unsupported as exc:
        raise http.UnsupportedProtocol(str(exc), request=request) from exc
    try:
        answer = await pool.exchange(origin, method, data, request.extensions.get("timeout", {}))
    except StageTimeout as exc:
        kinds = {"pool": http.PoolTimeout, "connect": http.ConnectTimeout}
        raise kinds.get(exc.stage, http.ReadTimeout)(str(exc), request=request) from exc
    except ConnectFailed as exc:
        raise http.ConnectError(str(exc), request=request) from exc
    except ConnectionResetError as exc:
        raise http.ReadError(str(exc), request=request) from exc
    except httptools.HttpParserError as exc:
        raise http.RemoteProtocolError(str(exc), request=request) from exc
    response = http.Response(
        answer.status,
        headers=answer.headers,
        stream=http.ByteStream(answer.body),
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
    )
    if not any(name.lower() == b"content-encoding" for name, _ in answer.headers):
        _as_read(response, answer.body)
    return response


def _as_read(response: Any, body: bytes) -> None:
    """Leave `response` as httpx's `read()` leaves it. Its body is whole and not encoded, so it
    is the content as it came: the read's chain of generators, decoder and chunker per answer
    is skipped (about 5 % of pyloto's CPU per message, docs/performance.md, session 13). An
    encoded one is read by httpx."""
    response._content = body
    response._num_bytes_downloaded = len(body)
    response.is_stream_consumed = True
    response.is_closed = True


def _pool(limits: httpx.Limits | httpx2.Limits, ssl_context: ssl.SSLContext) -> ConnectionPool:
    return ConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        ssl_context=ssl_context,
    )


class Http11Transport(httpx.AsyncBaseTransport):
    """The transport for an `httpx.AsyncClient` (the Graph API's)."""

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = _pool(self.limits, ssl_context or httpx.create_ssl_context())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return cast(httpx.Response, await _handle(self._pool, httpx, request))

    async def aclose(self) -> None:
        self._pool.close()


class Http11Transport2(httpx2.AsyncBaseTransport):
    """The transport for an `httpx2.AsyncClient` (the OpenAI client's)."""

    def __init__(
        self,
        *,
        limits: httpx2.Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limits = limits or httpx2.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = _pool(self.limits, ssl_context or httpx2.create_ssl_context())

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return cast(httpx2.Response, await _handle(self._pool, httpx2, request))

    async def aclose(self) -> None:
        self._pool.close()
