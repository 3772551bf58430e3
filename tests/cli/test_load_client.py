"""The load generator's HTTP client against a raw loopback server that answers as told."""

from __future__ import annotations

import asyncio

import pytest

from pyloto_cli.bench.load import LoadClient, get_json, post_webhook
from pyloto_cli.bench.payloads import build_webhooks
from tests.fakes.raw_http import plain, raw_server


async def test_requests_reuse_one_connection_and_go_out_as_written() -> None:
    """Three requests in turn: one connection, each request line, headers and body as given,
    and each answer's status and body back."""
    async with raw_server(lambda _: plain(202, b'{"ok":1}')) as server, LoadClient(4) as client:
        answers = [
            await client.request("POST", f"{server.url}/hook?x=1", b"abc", [("X-A", "1")])
            for _ in range(3)
        ]
    assert answers == [(202, b'{"ok":1}')] * 3
    assert server.connections == 1
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hook?x=1 HTTP/1.1"
    assert {b"X-A: 1", b"Content-Length: 3"} <= set(lines[1:])
    assert body == b"abc"


async def test_chunked_answer_is_read_whole() -> None:
    """An answer in chunks (no Content-Length) comes back whole: get_json parses it."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked = head + b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    async with raw_server(lambda _: chunked) as server, LoadClient(1) as client:
        assert await get_json(client, f"{server.url}/readyz") == {"a": 1}
        assert await get_json(client, f"{server.url}/readyz") == {"a": 1}
    assert server.connections == 1


async def test_connection_close_answer_opens_a_new_connection_next() -> None:
    """The server says `Connection: close`: the client does not reuse that connection."""
    async with raw_server(lambda _: plain(close=True)) as server, LoadClient(2) as client:
        assert (await client.request("GET", server.url))[0] == 200
        assert (await client.request("GET", server.url))[0] == 200
    assert server.connections == 2


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_dropped() -> None:
    """A request the server never answers raises TimeoutError after `timeout_s`; the next one
    goes out on a new connection and succeeds."""
    answers = iter([b"", plain()])  # the first is swallowed (no answer), the second answered

    def answer(_request: bytes) -> bytes:
        return next(answers)

    async with raw_server(answer) as server, LoadClient(2, timeout_s=0.2) as client:
        with pytest.raises(TimeoutError):
            await client.request("GET", server.url)
        assert (await client.request("GET", server.url))[0] == 200
    assert server.connections == 2


async def test_hang_up_before_answering_is_a_failed_ack() -> None:
    """The server closes the connection without an answer: the ack has no status and says
    the server disconnected (aiohttp's name for it)."""
    hook = build_webhooks(1, 1, b"secret", "reset")[0]
    async with raw_server(lambda _: None) as server, LoadClient(2) as client:
        ack = await post_webhook(client, f"{server.url}/webhooks/whatsapp", hook, 0, 0.0)
    assert ack.status is None
    assert ack.error == "ServerDisconnectedError"
    assert not ack.ok


async def test_garbage_answer_is_a_failed_ack() -> None:
    """An answer that is not HTTP: aiohttp's parser refuses it, and that is reported as a
    failed ack, not raised."""
    hook = build_webhooks(1, 1, b"secret", "garbage")[0]
    async with raw_server(lambda _: b"SMTP ready\r\n\r\n") as server, LoadClient(2) as client:
        ack = await post_webhook(client, f"{server.url}/webhooks/whatsapp", hook, 0, 0.0)
    assert ack.status is None
    assert ack.error == "ClientResponseError"


async def test_close_closes_idle_connections() -> None:
    """Leaving the client closes its pooled connections: the server sees them end."""
    async with raw_server(lambda _: plain()) as server:
        async with LoadClient(2) as client:
            await client.request("GET", server.url)
            assert not server.closed.is_set()
        await asyncio.wait_for(server.closed.wait(), 5.0)


async def test_only_plain_http_urls() -> None:
    """The generator speaks plain HTTP to loopback; an https URL is refused before sending."""
    async with LoadClient(1) as client:
        with pytest.raises(ValueError, match="plain HTTP"):
            await client.request("GET", "https://127.0.0.1:1/")
