"""The server's own ack latency, read off the loopback interface: no client in the figure.

    sudo .venv/bin/python -m benchmarks.wire_acks --seconds 30 [--json]   # then, meanwhile:
    pyloto bench --compare pyloto -n 1000 --rate 100 --llm-jitter-ms 0

Every ack figure of `pyloto bench` is taken by its load generator, so it counts the generator's
own work and its waits for a CPU it shares with the fakes. This takes the kernel's receive
timestamps instead (a packet socket on `lo`, `SO_TIMESTAMPNS`): from the packet that carried a
`POST /webhooks/whatsapp` request line to the server's first answer packet on that connection.
That is the time the server held the webhook, from the wire's point of view. Linux only, and
it needs CAP_NET_RAW (root). Run it on the load generator's CPU (`taskset -c 1`), not the
server's.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from dataclasses import asdict

from pyloto_cli.bench.report import latency_ms

_ETH_P_ALL = 0x0003
_SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>
_PACKET_HOST = 0  # a packet addressed to this host; on lo each one is also seen as OUTGOING
_ETH_HEADER = 14
_REQUEST = b"POST /webhooks/whatsapp"
_ANSWER = b"HTTP/1."


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds + nanoseconds / 1e9)
    return None


def _tcp(frame: bytes) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of an IPv4 TCP frame, else None."""
    ip = frame[_ETH_HEADER:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
        return None
    tcp = ip[(ip[0] & 0x0F) * 4 :]
    if len(tcp) < 20:
        return None
    source, destination = struct.unpack("!HH", tcp[:4])
    return source, destination, tcp[(tcp[12] >> 4) * 4 :]


class WireAcks:
    """Pairs each webhook request packet with the first answer on its connection."""

    def __init__(self, port: int | None = None) -> None:
        self._port = port  # the server's; None: any
        self._asked: dict[tuple[int, int], float] = {}  # (client port, server port) -> time
        self.latencies_s: list[float] = []

    def feed(self, frame: bytes, at: float) -> None:
        """Take one captured frame received at `at` (seconds)."""
        parsed = _tcp(frame)
        if parsed is None:
            return
        source, destination, payload = parsed
        if self._port is not None and self._port not in (source, destination):
            return
        if payload.startswith(_REQUEST):
            self._asked[(source, destination)] = at
        elif payload.startswith(_ANSWER):
            asked = self._asked.pop((destination, source), None)
            if asked is not None:
                self.latencies_s.append(at - asked)


def capture(seconds: float, interface: str = "lo", port: int | None = None) -> WireAcks:
    """Listen on `interface` for `seconds` (to servers on `port`, or any); raises
    PermissionError without CAP_NET_RAW."""
    acks = WireAcks(port)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL)) as sock:
        sock.bind((interface, 0))
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame, ancillary, _flags, address = sock.recvmsg(512, 64)
            except TimeoutError:
                continue
            at = _stamp(ancillary)
            if address[2] == _PACKET_HOST and at is not None:
                acks.feed(frame, at)
    return acks


def main(argv: list[str] | None = None) -> None:
    """Capture for `--seconds` and print the server-side ack latencies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interface", default="lo")
    parser.add_argument("--port", type=int, help="the server's port (default: any)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a line")
    args = parser.parse_args(argv)
    try:
        acks = capture(args.seconds, args.interface, args.port)
    except PermissionError:
        sys.exit("wire_acks needs CAP_NET_RAW (run it as root)")
    figures = asdict(latency_ms(acks.latencies_s))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"wire ack ms: n={figures['count']} p50 {figures['p50']} p95 {figures['p95']} "
        f"p99 {figures['p99']} max {figures['max']}"
    )


if __name__ == "__main__":
    main()
