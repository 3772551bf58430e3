"""benchmarks.wire_acks: the server's ack latency from loopback packets (needs root, as CI is)."""

from __future__ import annotations

import asyncio
import struct

from benchmarks import wire_acks
from pyloto_cli.bench.load import LoadClient, post_webhook
from pyloto_cli.bench.payloads import build_webhooks
from tests.fakes.raw_http import plain, raw_server


def frame(source: int, destination: int, payload: bytes, protocol: int = 6) -> bytes:
    ip = bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0]) + bytes(8)
    tcp = struct.pack("!HH", source, destination) + bytes(8) + bytes([5 << 4]) + bytes(7)
    return bytes(14) + ip + tcp + payload


def test_pairs_each_request_with_the_first_answer_on_its_connection() -> None:
    """Request at 1.000 s, answer at 1.003 s on the same ports: 3 ms. An answer with no
    request before it, a second answer, other paths, another server's port and non-TCP packets
    count for nothing."""
    acks = wire_acks.WireAcks(port=8000)
    acks.feed(frame(5000, 8000, b"HTTP/1.1 200 OK\r\n"), 0.5)  # no request before it
    acks.feed(frame(5002, 9000, b"POST /webhooks/whatsapp HTTP/1.1\r\n"), 0.9)  # other server
    acks.feed(frame(9000, 5002, b"HTTP/1.1 200 OK\r\n"), 0.95)
    acks.feed(frame(5000, 8000, b"POST /webhooks/whatsapp HTTP/1.1\r\n"), 1.000)
    acks.feed(frame(5001, 8000, b"GET /readyz HTTP/1.1\r\n"), 1.001)
    acks.feed(frame(5000, 8000, b"POST /webhooks/whatsapp", protocol=17), 1.002)  # UDP
    acks.feed(frame(8000, 5000, b"HTTP/1.1 200 OK\r\n"), 1.003)
    acks.feed(frame(8000, 5000, b"HTTP/1.1 200 OK\r\n"), 1.004)
    acks.feed(frame(8000, 5001, b"HTTP/1.1 200 OK\r\n"), 1.005)
    assert [round(s, 6) for s in acks.latencies_s] == [0.003]


async def test_captures_the_acks_of_real_posts_on_loopback() -> None:
    """Five webhooks POSTed to a loopback server while capturing: five wire acks, each no
    longer than the client saw it."""
    hooks = build_webhooks(5, 5, b"secret", "wire")
    async with raw_server(lambda _: plain()) as server, LoadClient(2) as client:
        port = int(server.url.rsplit(":", 1)[1])
        capture = asyncio.create_task(asyncio.to_thread(wire_acks.capture, 1.5, "lo", port))
        await asyncio.sleep(0.3)  # the socket is listening
        acks = [
            await post_webhook(client, f"{server.url}/webhooks/whatsapp", hook, i, 0.0)
            for i, hook in enumerate(hooks)
        ]
        seen = await capture
    assert all(a.ok for a in acks)
    assert len(seen.latencies_s) == 5
    client_side = sorted(a.finished - a.started for a in acks)
    assert all(0 < s <= max(client_side) for s in seen.latencies_s)
