"""pyloto's HTTP/1.1 transport, through real httpx and httpx2 clients, against loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pyloto_cli.adapters.http11 import (
    Http11Transport,
    Http11Transport2,
    _Unsupported,
    serialize_request,
)
from tests.fakes.raw_http import plain, raw_server


@dataclass(frozen=True)
class Flavour:
    http: ModuleType
    make: Callable[..., Any]

    def client(self, **transport: Any) -> Any:
        limits = transport.pop("limits", None)
        if limits is not None:
            transport["limits"] = self.http.Limits(**limits)
        return self.http.AsyncClient(transport=self.make(**transport), timeout=5.0)


FLAVOURS = [Flavour(httpx, Http11Transport), Flavour(httpx2, Http11Transport2)]


@pytest.fixture(params=FLAVOURS, ids=["httpx", "httpx2"])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return request.param  # type: ignore[no-any-return]


async def test_request_goes_out_as_built_and_connection_is_reused(flavour: Flavour) -> None:
    """Method, target with query, the client's headers, a Content-Length, the body; one
    connection for two requests."""
    async with (
        raw_server(lambda _: plain(200, b'{"ok":true}')) as server,
        flavour.client() as client,
    ):
        first = await client.post(f"{server.url}/v1/x?a=1", content=b"hello", headers={"X-K": "v"})
        second = await client.post(f"{server.url}/v1/y", json={"b": 2})
    assert (first.status_code, first.json(), second.json()) == (200, {"ok": True}, {"ok": True})
    assert first.http_version == "HTTP/1.1"
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/x?a=1 HTTP/1.1"
    assert b"X-K: v" in lines
    assert b"Content-Length: 5" in lines
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)
    assert body == b"hello"
    assert server.requests[1].endswith(b'{"b":2}') or server.requests[1].endswith(b'{"b": 2}')


async def test_chunked_and_gzip_answers_are_read_whole(flavour: Flavour) -> None:
    """A chunked answer is joined; a gzip one is decoded by the client, as with any transport."""
    packed = gzip.compress(b'{"z":1}')
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n',
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(packed), packed),
        ]
    )
    async with raw_server(lambda _: next(answers)) as server, flavour.client() as client:
        chunked = await client.post(server.url, content=b"1")
        zipped = await client.post(server.url, content=b"2")
    assert chunked.json() == {"a": 1}
    assert zipped.json() == {"z": 1}
    assert server.connections == 1


async def test_answer_until_close_and_connection_close(flavour: Flavour) -> None:
    """An answer without a length ends when the server closes; `Connection: close` is honoured:
    the next request opens a new connection."""
    answers = iter([b"HTTP/1.1 200 OK\r\n\r\nto the end", plain(200, b"{}", close=True), plain()])
    async with (
        raw_server(lambda _: next(answers), close_after={0}) as server,
        flavour.client() as client,
    ):
        whole = await client.post(server.url, content=b"1")
        closing = await client.post(server.url, content=b"2")
        after = await client.post(server.url, content=b"3")
    assert whole.content == b"to the end"
    assert (closing.status_code, after.status_code) == (200, 200)
    assert server.connections == 3


async def test_informational_answer_is_skipped(flavour: Flavour) -> None:
    """A 103 Early Hints before the answer is not taken for it."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    async with (
        raw_server(lambda _: early + plain(201, b'{"x":1}')) as server,
        flavour.client() as client,
    ):
        response = await client.post(server.url, content=b"1")
    assert (response.status_code, response.json()) == (201, {"x": 1})


async def test_head_answer_has_no_body(flavour: Flavour) -> None:
    """A HEAD answer's Content-Length announces a body that never comes: it is not awaited."""
    async with (
        raw_server(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n") as srv,
        flavour.client() as client,
    ):
        response = await client.head(srv.url)
    assert (response.status_code, response.content) == (200, b"")


async def test_streamed_body_goes_whole_with_a_length(flavour: Flavour) -> None:
    """A body given as an async stream (httpx would send it chunked) is sent with its length."""

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async with raw_server(lambda _: plain()) as server, flavour.client() as client:
        await client.post(server.url, content=parts())
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert b"Content-Length: 4" in head.split(b"\r\n")
    assert b"chunked" not in head.lower()
    assert body == b"abcd"


async def test_header_with_line_break_is_refused_unsent(flavour: Flavour) -> None:
    """A header value smuggling a second header is refused before anything is written."""
    async with raw_server(lambda _: plain()) as server, flavour.client() as client:
        with pytest.raises(flavour.http.UnsupportedProtocol):
            await client.post(server.url, content=b"1", headers={"X-Bad": "a\r\nX-Evil: 1"})
    assert server.requests == []


@pytest.mark.parametrize(
    "header",
    [(b"X-A", b"1\n"), (b"X-A", b"\r1"), (b"X-A\r", b"1"), (b"X\nA", b"1"), (b"X-A", b"a\r\nB: 1")],
)
def test_any_cr_or_lf_in_a_header_is_refused(header: tuple[bytes, bytes]) -> None:
    good = [(b"Host", b"example.test"), (b"Content-Length", b"2")]
    assert serialize_request(b"POST", b"/v1/x", good) == (
        b"POST /v1/x HTTP/1.1\r\nHost: example.test\r\nContent-Length: 2\r\n\r\n"
    )
    for headers in ([header], [*good, header], [header, *good]):
        with pytest.raises(_Unsupported, match="line break"):
            serialize_request(b"POST", b"/v1/x", headers)


async def test_other_schemes_are_refused(flavour: Flavour) -> None:
    """Only http and https: anything else is UnsupportedProtocol, with nothing sent."""
    transport = flavour.make()
    request = flavour.http.Request("POST", "ftp://127.0.0.1:21/", content=b"1")
    with pytest.raises(flavour.http.UnsupportedProtocol, match="ftp"):
        await transport.handle_async_request(request)
    await transport.aclose()


async def test_refused_connection_is_connect_error(flavour: Flavour, unused_port: int) -> None:
    """Nobody listening: ConnectError, the kind callers know was never sent."""
    async with flavour.client() as client:
        with pytest.raises(flavour.http.ConnectError):
            await client.post(f"http://127.0.0.1:{unused_port}/", content=b"1")


async def test_hang_up_without_answer_is_read_error(flavour: Flavour) -> None:
    """The server takes the request and closes: ReadError (it may have been acted on)."""
    async with raw_server(lambda _: None) as server, flavour.client() as client:
        with pytest.raises(flavour.http.ReadError):
            await client.post(server.url, content=b"1")
    assert len(server.requests) == 1  # sent once, not retried here


async def test_no_answer_in_time_is_read_timeout(flavour: Flavour) -> None:
    """Silence past the read timeout: ReadTimeout, and that connection is not reused."""
    answers = iter([b"", plain()])
    async with raw_server(lambda _: next(answers)) as server, flavour.client() as client:
        with pytest.raises(flavour.http.ReadTimeout):
            await client.post(server.url, content=b"1", timeout=0.2)
        assert (await client.post(server.url, content=b"2")).status_code == 200
    assert server.connections == 2


async def test_malformed_answer_is_protocol_error(flavour: Flavour) -> None:
    """Bytes that are not HTTP: RemoteProtocolError."""
    async with (
        raw_server(lambda _: b"SMTP ready\r\n\r\n") as server,
        flavour.client() as client,
    ):
        with pytest.raises(flavour.http.RemoteProtocolError):
            await client.post(server.url, content=b"1")


async def test_pool_limit_makes_requests_wait_then_pool_timeout(flavour: Flavour) -> None:
    """One connection allowed: a second request waits for it, and past `pool` gives up with
    PoolTimeout (never sent): only the first request reached the server."""
    async with (
        raw_server(lambda _: b"") as server,
        flavour.client(limits={"max_connections": 1}) as client,
    ):
        first = asyncio.create_task(client.post(server.url, content=b"1"))
        await _until(lambda: len(server.requests) == 1)
        timeout = flavour.http.Timeout(5.0, pool=0.1)
        with pytest.raises(flavour.http.PoolTimeout):
            await client.post(server.url, content=b"2", timeout=timeout)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
    assert len(server.requests) == 1


async def test_idle_connection_closed_by_server_is_not_used(flavour: Flavour) -> None:
    """The server closes a kept-alive connection while it is idle: the next request opens a new
    one and succeeds (nothing is written to the dead one)."""
    async with (
        raw_server(lambda _: plain(), close_after={0}) as server,
        flavour.client() as client,
    ):
        await client.post(server.url, content=b"1")
        await asyncio.wait_for(server.closed.wait(), 5.0)
        await asyncio.sleep(0.05)  # the loop sees the close
        response = await client.post(server.url, content=b"2")
    assert response.status_code == 200
    assert server.connections == 2


async def test_idle_connections_expire(flavour: Flavour) -> None:
    """Past `keepalive_expiry` an idle connection is closed instead of reused."""
    async with (
        raw_server(lambda _: plain()) as server,
        flavour.client(limits={"keepalive_expiry": 0.05}) as client,
    ):
        await client.post(server.url, content=b"1")
        await asyncio.sleep(0.1)
        await client.post(server.url, content=b"2")
    assert server.connections == 2


async def test_cancelled_request_closes_its_connection(flavour: Flavour) -> None:
    """A caller cancelled mid-request: its connection (whose answer may still come) is closed,
    and the next request uses a new one."""
    answers = iter([b"", plain()])
    async with raw_server(lambda _: next(answers)) as server, flavour.client() as client:
        task = asyncio.create_task(client.post(server.url, content=b"1"))
        await _until(lambda: len(server.requests) == 1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert (await client.post(server.url, content=b"2")).status_code == 200
    assert server.connections == 2


async def test_tls_with_the_clients_certificate_check(flavour: Flavour, tmp_path: Path) -> None:
    """https: the server's certificate is checked (an unknown CA is a ConnectError); trusted,
    the request goes through."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with raw_server(lambda _: plain(200, b'{"tls":1}'), ssl=server_ctx) as server:
        url = server.url
        async with flavour.client() as client:
            with pytest.raises(flavour.http.ConnectError):
                await client.post(url, content=b"1")
        trusting = ssl.create_default_context(cafile=str(cert))
        async with flavour.client(ssl_context=trusting) as client:
            response = await client.post(url, content=b"2")
    assert response.json() == {"tls": 1}
    assert server.requests[-1].endswith(b"2")


async def test_closed_transport_refuses_requests(flavour: Flavour) -> None:
    """After the client closes, its transport sends nothing more."""
    transport = flavour.make()
    await transport.aclose()
    request = flavour.http.Request("POST", "http://127.0.0.1:9/", content=b"1")
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(request)


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(check: Callable[[], bool]) -> None:
    """Poll `check` (a server's counter, which has no event to wait on) for up to 5 s."""
    async with asyncio.timeout(5.0):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_an_answer_comes_back_as_httpx_reads_it(flavour: Flavour) -> None:
    """Not encoded: already read, in the state httpx's own read leaves an answer in; encoded:
    read and decoded by httpx. Either way the client sees what any transport would give it."""
    packed = gzip.compress(b'{"z":1}')
    answers = iter(
        [
            plain(200, b'{"ok":true}'),
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(packed), packed),
        ]
    )
    http = flavour.http
    async with raw_server(lambda _: next(answers)) as server, flavour.client() as client:
        for body, wire, read in (
            (b'{"ok":true}', b'{"ok":true}', True),
            (b'{"z":1}', packed, False),
        ):
            request = client.build_request("POST", server.url, content=b"1")
            answer = await client._transport.handle_async_request(request)
            assert answer.is_stream_consumed is read  # read by the transport when not encoded
            encoded = answer.headers.get("content-encoding")
            reference = http.Response(
                200,
                headers={"content-encoding": encoded} if encoded else {},
                stream=http.ByteStream(wire),
            )
            await reference.aread()
            await answer.aread()
            assert answer.content == reference.content == body
            assert answer.num_bytes_downloaded == reference.num_bytes_downloaded == len(wire)
            assert (answer.is_stream_consumed, answer.is_closed) == (True, True)
            assert [part async for part in answer.aiter_bytes()] == [body]
