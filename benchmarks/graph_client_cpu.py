"""CPU per Graph send for each client flavour, against the fake Graph server in a subprocess.

    .venv/bin/python -m benchmarks.graph_client_cpu [--sends 3000] [--concurrency 64]

Prints the client process's CPU milliseconds per send (time.process_time, so the server's
work is not counted) and the throughput for: httpx defaults, httpx with pyloto's pool limits,
httpx on the aiohttp transport through httpx's full `send`, the same with the send going
straight to the transport (`DirectGraphClient`, what `open_graph_client` uses with
PYLOTO_HTTP_TRANSPORT=aiohttp), and `DirectGraphClient` on pyloto's HTTP/1.1 transport (`http11`,
the default).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

from pyloto_cli.adapters.sender.graph import ClientKind, GraphSender, open_graph_client
from pyloto_cli.settings import Settings

KINDS: tuple[ClientKind, ...] = ("httpx-default", "httpx", "aiohttp-full-send", "aiohttp", "http11")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(port: int, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fake Graph server not listening on {port}")


async def _run(kind: ClientKind, url: str, sends: int, concurrency: int) -> tuple[float, float]:
    settings = Settings(_env_file=None, concurrency=concurrency)
    body = {"messaging_product": "whatsapp", "to": "+15550001234", "type": "text"}
    async with open_graph_client(settings, kind=kind) as client:
        token = "bench-token"  # noqa: S105 - the fake server accepts any token
        sender = GraphSender(client, access_token=token, api_version="v25.0", base_url=url)
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                await sender.send("15550001111", {**body, "text": {"body": f"m{n}"}})

        for n in range(concurrency * 4):  # warm the pool
            queue.put_nowait(n)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        for n in range(sends):
            queue.put_nowait(n)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu * 1000 / sends, sends / wall


def main() -> None:
    """Run each client flavour and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.graph_server", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_ready(port)
        for kind in KINDS:
            cpu_ms, rate = asyncio.run(
                _run(kind, f"http://127.0.0.1:{port}", args.sends, args.concurrency)
            )
            print(f"{kind:14} {cpu_ms:.3f} ms CPU/send  {rate:7.0f} sends/s")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
