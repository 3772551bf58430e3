"""The server's own ack latency, read off the loopback interface: no load generator in it.

Every ack the load generator times counts its own work and its waits for the CPU it shares
with the fakes. This takes the kernel's receive timestamps instead (a packet socket on `lo`
with `SO_TIMESTAMPNS`): from the packet that carried a `POST /webhooks/whatsapp` request line
to the server's first answer packet on that connection. That is the time the server held the
webhook, from the wire's point of view. Linux only, and it needs CAP_NET_RAW (root).

A classic BPF filter keeps only the server port's TCP packets, so the capture is not woken for
the LLM and Graph traffic of the same run.

The comparison runs it as a child process for each system (`python -m benchmarks.wire
--port P --out FILE`): ready when it prints `capturing`, and on SIGTERM it writes the
latencies (seconds, JSON) to FILE. Without CAP_NET_RAW it prints why and exits with status 3.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

_ETH_P_ALL = 0x0003
_SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>
_SO_ATTACH_FILTER = 26
_PACKET_HOST = 0  # a packet addressed to this host; on lo each one is also seen as OUTGOING
_ETH_HEADER = 14
_REQUEST = b"POST /webhooks/whatsapp"
_ANSWER = b"HTTP/1."
NO_CAPTURE_EXIT = 3


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


def port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF (code, jt, jf, k) for `tcp port <port>` over IPv4 on an Ethernet-framed
    interface (`lo` is one): what `tcpdump -dd` prints for it, without the IPv6 half."""
    return [
        (0x28, 0, 0, 12),  # ldh [12]: the EtherType
        (0x15, 0, 10, 0x0800),  # IPv4, else drop
        (0x30, 0, 0, 23),  # ldb [23]: the IP protocol
        (0x15, 0, 8, 6),  # TCP, else drop
        (0x28, 0, 0, 20),  # ldh [20]: flags and fragment offset
        (0x45, 6, 0, 0x1FFF),  # a later fragment (no TCP header): drop
        (0xB1, 0, 0, 14),  # x = the IP header's length
        (0x48, 0, 0, 14),  # ldh [x + 14]: the source port
        (0x15, 2, 0, port),  # ours: keep
        (0x48, 0, 0, 16),  # ldh [x + 16]: the destination port
        (0x15, 0, 1, port),  # ours: keep, else drop
        (0x06, 0, 0, 0x40000),  # keep (the whole packet)
        (0x06, 0, 0, 0),  # drop
    ]


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer may go after the call."""
    code = b"".join(struct.pack("HBBI", *op) for op in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def may_capture() -> bool:
    """Whether this process may open a packet socket (Linux, CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
    except (PermissionError, AttributeError):  # AttributeError: no AF_PACKET (not Linux)
        return False
    return True


def open_capture(interface: str = "lo", port: int | None = None) -> socket.socket:
    """A packet socket on `interface` with receive timestamps (and only `port`'s TCP packets
    when given); raises PermissionError without CAP_NET_RAW."""
    # protocol 0 receives nothing until the bind names one: a socket opened for every protocol
    # would queue other traffic, unfiltered, in the moment before the filter is attached
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if port is not None:
            _attach(sock, port_filter(port))
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((interface, _ETH_P_ALL))  # Python puts the protocol in network order here
        sock.settimeout(0.2)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_one(sock: socket.socket, into: WireAcks) -> None:
    frame, ancillary, _flags, address = sock.recvmsg(512, 64)
    at = _stamp(ancillary)
    if address[2] == _PACKET_HOST and at is not None:
        into.feed(frame, at)


def read_frames(sock: socket.socket, into: WireAcks, done: Callable[[], bool]) -> WireAcks:
    """Feed what `sock` receives into `into` until `done()` (checked at least every 0.2 s),
    then what it had already received."""
    while not done():
        with contextlib.suppress(TimeoutError):
            _read_one(sock, into)
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            _read_one(sock, into)
    return into


def capture(seconds: float, interface: str = "lo", port: int | None = None) -> WireAcks:
    """Listen on `interface` for `seconds` (to servers on `port`, or any); raises
    PermissionError without CAP_NET_RAW."""
    deadline = time.monotonic() + seconds
    with open_capture(interface, port) as sock:
        return read_frames(sock, WireAcks(port), lambda: time.monotonic() >= deadline)


def main(argv: list[str] | None = None) -> None:
    """Capture the acks of the server on `--port` until SIGTERM, then write them to `--out`."""
    parser = argparse.ArgumentParser(description="the server's acks, from loopback packets")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interface", default="lo")
    args = parser.parse_args(argv)
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        sock = open_capture(args.interface, args.port)
    except PermissionError:
        print("no capture: it needs CAP_NET_RAW (root)", flush=True)
        sys.exit(NO_CAPTURE_EXIT)
    with sock:
        print("capturing", flush=True)
        acks = read_frames(sock, WireAcks(args.port), lambda: stopping)
    args.out.write_text(json.dumps(acks.latencies_s))


if __name__ == "__main__":
    main()
