"""A real `pyloto serve` on loopback against hostile clients on raw sockets: bytes httpx will
not send in a header, headers and bodies trickled a byte at a time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pyloto_cli.domain.signature import sign
from tests.conftest import HERMETIC_NAMES, HERMETIC_PREFIXES
from tests.e2e.serve_process import ServeProcess
from tests.waiting import poll_until

pytestmark = pytest.mark.e2e

SECRET = "edge-app-secret"
TIMEOUT_S = 1.0  # both the header and the body deadline of the server under test
PACE_S = 0.1  # one trickled byte per pace: the client is slow, never stalled
BODY = b'{"object":"whatsapp_business_account","entry":[]}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `pyloto serve` for the module (no worker: the queue depth is what was stored)."""
    workdir: Path = tmp_path_factory.mktemp("edge")
    serve = ServeProcess(workdir, {})
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(HERMETIC_PREFIXES) and name not in HERMETIC_NAMES
    }
    serve.env = {
        **clean,
        "PYLOTO_PORT": str(serve.port),
        "PYLOTO_LOG_FORMAT": "json",
        "PYLOTO_DATA_DIR": str(workdir / "data"),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "edge-verify",
        "OPENAI_ENABLED": "false",
        "PYLOTO_WORKER_ENABLED": "false",
        "PYLOTO_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "PYLOTO_BODY_TIMEOUT_SECONDS": str(TIMEOUT_S),
    }
    serve.proc = serve.spawn()
    try:
        poll_until(lambda: _ready(serve), within=30, interval=0.05, details=serve.log_tail)
        yield serve
    finally:
        serve.terminate()


def _ready(serve: ServeProcess) -> bool:
    assert serve.proc is not None
    assert serve.proc.poll() is None, serve.log_tail()
    try:
        return httpx.get(f"{serve.url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def depth(server: ServeProcess) -> int:
    stats: int = httpx.get(f"{server.url}/readyz").json()["queue"]["depth"]
    return stats


def request_head(content_length: int, signature: bytes) -> bytes:
    return (
        b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nX-Hub-Signature-256: %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (signature, content_length)
    )


async def trickle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, bytes]:
    """Send `data` a byte per PACE_S until the server answers or hangs up: (bytes sent, what
    it said, b"" when it closed without a word). The pace is the wait for its answer."""
    for sent, byte in enumerate(data):
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return sent, b""
        try:
            answer = await asyncio.wait_for(reader.read(4096), PACE_S)
        except TimeoutError:
            continue
        except ConnectionError:
            return sent, b""
        return sent + 1, answer
    raise AssertionError(f"all {len(data)} bytes sent, the server never cut the client off")


async def wait_for_eof(reader: asyncio.StreamReader, within: float) -> None:
    """The server closes the connection within `within` seconds (what it says before, read)."""
    async with asyncio.timeout(within):
        while await reader.read(4096):
            pass


async def test_non_ascii_byte_in_the_signature_is_401(server: ServeProcess) -> None:
    """`sha256=\\xe9` (no client library sends it; anyone can): 401, not a 500."""
    before = depth(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_head(len(BODY), b"sha256=\xe9") + BODY)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert depth(server) == before


async def test_headers_trickled_past_the_deadline_are_cut_off(server: ServeProcess) -> None:
    """Headers a byte at a time (the whole head would take ~25 s): closed after about the
    header deadline, with nothing stored."""
    before = depth(server)
    signed = request_head(len(BODY), sign(SECRET.encode(), BODY).encode())
    head = signed.removesuffix(b"\r\n") + b"X-Pad: 1\r\n" * 10 + b"\r\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    sent, answer = await trickle(reader, writer, head)
    elapsed = loop.time() - started
    writer.close()
    assert answer == b""  # no request was seen, so no answer: the connection just ends
    assert sent < len(head)
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 3, elapsed
    assert depth(server) == before


async def test_next_request_trickled_on_a_kept_alive_connection_is_cut_off(
    server: ServeProcess,
) -> None:
    """The deadline restarts after each answer: a quick first request does not buy the
    connection an unlimited second one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert first.startswith(b"HTTP/1.1 200"), first
    assert await asyncio.wait_for(reader.readexactly(2), 10) == b"ok"  # the whole answer
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: 1\r\n" * 20
    sent, answer = await trickle(reader, writer, head)
    writer.close()
    assert answer == b""
    assert sent < len(head)


async def test_body_trickled_past_the_deadline_is_408_and_closed(server: ServeProcess) -> None:
    """A signed head, then the body a byte at a time (~30 s for all of it): 408 after about
    the body deadline, the connection closed, nothing stored."""
    before = depth(server)
    body = BODY + b" " * 250
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_head(len(body), sign(SECRET.encode(), body).encode()))
    await writer.drain()
    sent, answer = await trickle(reader, writer, body)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in answer.lower()
    assert sent < len(body)
    await wait_for_eof(reader, within=5)
    writer.close()
    assert depth(server) == before


async def test_a_prompt_client_on_a_kept_alive_connection_is_served(server: ServeProcess) -> None:
    """The deadlines cut slow clients only: several signed webhooks on one connection, each
    sent whole, all answered 200."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        for _ in range(3):
            response = await client.post(
                "/webhooks/whatsapp",
                content=BODY,
                headers={"X-Hub-Signature-256": sign(SECRET.encode(), BODY)},
            )
            assert response.status_code == 200
