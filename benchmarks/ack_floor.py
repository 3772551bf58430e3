"""The ack latency of a server that does nothing, as the bench's load generator measures it.

    .venv/bin/python -m benchmarks.ack_floor [-n 1000] [--rate 100] [--json]

Every ack figure of `pyloto bench` counts the load generator's own work: its lateness in
sending (from when a webhook was due to when its POST began) and its HTTP client's time on
both ends of the round trip. This runs the same generator, pinned the same way (the server on
the first CPU, the generator on the others), against an ASGI app on the same server stack as
`pyloto serve` (uvicorn, uvloop, httptools) that answers 200 without reading anything. What it
measures is the floor under every ack figure: what no server can go below on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.systems import pin_process, pinned_here, source_root, split_cpus
from pyloto_cli.bench.load import WEBHOOK_PATH, Ack, LoadClient, open_loop, pool_size
from pyloto_cli.bench.payloads import build_webhooks
from pyloto_cli.bench.procs import child, free_port, wait_ready
from pyloto_cli.bench.report import latency_ms
from pyloto_cli.loops import loop_factory

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """200 `{}` to every request, once its body has arrived."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


def _figures(acks: list[Ack]) -> dict[str, Any]:
    ok = [a for a in acks if a.ok]
    return {
        "acked": len(ok),
        "lag_ms": asdict(latency_ms([a.started - a.due for a in ok])),
        "round_trip_ms": asdict(latency_ms([a.finished - a.started for a in ok])),
        "ack_ms": asdict(latency_ms([a.latency_s for a in ok])),
    }


async def measure(messages: int, rate: float) -> dict[str, Any]:
    """Start the app pinned like a system under test and send it `messages` at `rate`/s."""
    pinning = split_cpus()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "uvicorn", "benchmarks.ack_floor:app", "--port", str(port)]
    args += ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
    hooks = build_webhooks(messages, messages, b"floor", "floor")
    with tempfile.TemporaryDirectory() as tmp, pinned_here(pinning):
        log = Path(tmp) / "floor.log"
        async with child(args, log=log, cwd=source_root(), env=os.environ) as proc:
            await wait_ready(proc, url, log, 20.0, "the floor app")
            if pinning is not None:
                pin_process(proc.pid, pinning.server)
            async with LoadClient(pool_size(rate)) as client:
                acks = await open_loop(client, url + WEBHOOK_PATH, hooks, rate, lambda _: None)
    return {"messages": messages, "rate": rate, "pinned": pinning is not None, **_figures(acks)}


def main(argv: list[str] | None = None) -> None:
    """Measure the floor once and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(measure(args.messages, args.rate))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"acked {result['acked']} of {result['messages']} at {result['rate']}/s")
    for name in ("lag_ms", "round_trip_ms", "ack_ms"):
        p50, p99, top = (result[name][k] for k in ("p50", "p99", "max"))
        print(f"{name:14} p50 {p50:6.2f}  p99 {p99:6.2f}  max {top:6.2f}")


if __name__ == "__main__":
    main()
