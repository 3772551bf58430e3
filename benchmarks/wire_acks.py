"""The server's own ack latency, read off the loopback interface: no client in the figure.

    sudo .venv/bin/python -m benchmarks.wire_acks --seconds 30 [--json]   # then, meanwhile:
    pyloto bench -n 1000 --rate 100 --llm-jitter-ms 0

`python -m benchmarks.compare --wire` takes this figure itself for each system, as root (the
"ack ms p99, wire" row); this script takes it beside any other run. The capture is
`benchmarks.wire`: the kernel's receive timestamps of each `POST /webhooks/whatsapp`
request packet and of the server's first answer packet on that connection. Linux only, and it
needs CAP_NET_RAW (root). Run it on the load generator's CPU (`taskset -c 1`), not the
server's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from benchmarks.wire import capture
from pyloto_cli.bench.report import latency_ms


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
