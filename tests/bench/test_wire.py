"""benchmarks/wire.py: the server's ack latency from loopback packets (capturing needs root, as CI
has; without it the capture says so and the comparison goes on without the figure)."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from benchmarks import wire
from benchmarks.systems import wire_capture
from pyloto_cli.bench.load import LoadClient, post_webhook
from pyloto_cli.bench.payloads import build_webhooks
from tests.fakes.raw_http import plain, raw_server


def frame(source: int, destination: int, payload: bytes, protocol: int = 6) -> bytes:
    ip = bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0]) + bytes(8)
    tcp = struct.pack("!HH", source, destination) + bytes(8) + bytes([5 << 4]) + bytes(7)
    return bytes(14) + ip + tcp + payload


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def post_all(url: str, count: int) -> list[float]:
    """POST `count` webhooks to `url` one after another; the client's round trips (s)."""
    hooks = build_webhooks(count, count, b"secret", f"wire-{port_of(url)}")
    async with LoadClient(2) as client:
        acks = [
            await post_webhook(client, f"{url}/webhooks/whatsapp", hook, i, 0.0)
            for i, hook in enumerate(hooks)
        ]
    assert all(a.ok for a in acks)
    return [a.finished - a.started for a in acks]


def test_pairs_each_request_with_the_first_answer_on_its_connection() -> None:
    """Request at 1.000 s, answer at 1.003 s on the same ports: 3 ms. An answer with no
    request before it, a second answer, other paths, another server's port and non-TCP packets
    count for nothing."""
    acks = wire.WireAcks(port=8000)
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


def test_the_port_filter_is_tcpdumps_program() -> None:
    """`tcpdump -dd 'ip and tcp port 8000'`, instruction by instruction: the jumps land on
    keep (11) and drop (12)."""
    program = wire.port_filter(8000)
    assert len(program) == 13
    assert program[8] == (0x15, 2, 0, 8000)
    assert program[10] == (0x15, 0, 1, 8000)
    assert program[11] == (0x06, 0, 0, 0x40000)
    assert program[12] == (0x06, 0, 0, 0)
    for at, (code, jt, jf, _k) in enumerate(program):
        if code & 0x07 == 0x05:  # a jump: both targets inside the program
            assert at + 1 + jt < len(program)
            assert at + 1 + jf < len(program)


async def test_captures_the_acks_of_real_posts_on_loopback() -> None:
    """Five webhooks POSTed to a loopback server while capturing: five wire acks, each no
    longer than the client saw it (as root; otherwise the capture refuses with
    PermissionError)."""
    async with raw_server(lambda _: plain()) as server:
        port = port_of(server.url)
        if not wire.may_capture():
            with pytest.raises(PermissionError):
                wire.capture(0.1, "lo", port)
            return
        capture = asyncio.create_task(asyncio.to_thread(wire.capture, 1.5, "lo", port))
        await asyncio.sleep(0.3)  # the socket is listening
        client_side = await post_all(server.url, 5)
        seen = await capture
    assert len(seen.latencies_s) == 5
    assert all(0 < s <= max(client_side) for s in seen.latencies_s)


async def test_the_kernel_drops_other_ports_and_what_was_received_is_read_at_the_end() -> None:
    """With the filter for server A, traffic to servers A and B: every frame read is A's, and
    the frames received before the stop are still read (`done` true from the start)."""
    if not wire.may_capture():
        with pytest.raises(PermissionError):
            wire.open_capture("lo", 1)
        return
    async with raw_server(lambda _: plain()) as a, raw_server(lambda _: plain()) as b:
        port = port_of(a.url)
        with wire.open_capture("lo", port) as sock:
            await post_all(b.url, 3)
            await post_all(a.url, 3)
            await asyncio.sleep(0.1)
            frames: list[bytes] = []
            sock.setblocking(False)
            while True:
                try:
                    frames.append(sock.recv(512))
                except BlockingIOError:
                    break
        with wire.open_capture("lo", port) as sock:
            await post_all(a.url, 4)
            await asyncio.sleep(0.1)
            drained = wire.read_frames(sock, wire.WireAcks(port), lambda: True)
    ports = [struct.unpack("!HH", f[34:38]) for f in frames]
    assert ports
    assert all(port in pair for pair in ports)
    assert len(drained.latencies_s) == 4


async def test_wire_capture_runs_the_capture_as_a_child_and_reads_its_figures(
    tmp_path: Path,
) -> None:
    """`wire_capture` around six POSTs: six latencies as root, None without the privilege
    (the child says why and the block still runs)."""
    async with (
        raw_server(lambda _: plain()) as server,
        wire_capture(tmp_path, port_of(server.url)) as record,
    ):
        client_side = await post_all(server.url, 6)
    if not wire.may_capture():
        assert record.latencies_s is None
        return
    assert record.latencies_s is not None
    assert len(record.latencies_s) == 6
    assert all(0 < s <= max(client_side) for s in record.latencies_s)


def test_the_child_without_the_privilege_exits_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No CAP_NET_RAW: `no capture: ...` on stdout, status 3, no figures file."""

    def refuse(_interface: str, _port: int | None) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(wire, "open_capture", refuse)
    out = tmp_path / "acks.json"
    with pytest.raises(SystemExit) as exited:
        wire.main(["--port", "8000", "--out", str(out)])
    assert exited.value.code == wire.NO_CAPTURE_EXIT
    assert capsys.readouterr().out.startswith("no capture: it needs CAP_NET_RAW")
    assert not out.exists()


async def test_wire_capture_is_off_unless_asked_for(tmp_path: Path) -> None:
    """`on=False` (a comparison without --wire): no capture child, no figures."""
    async with (
        raw_server(lambda _: plain()) as server,
        wire_capture(tmp_path, port_of(server.url), on=False) as record,
    ):
        await post_all(server.url, 2)
    assert record.latencies_s is None
    assert not (tmp_path / "wire.log").exists()
