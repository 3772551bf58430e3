"""CPU per Graph send for each public httpx client set-up, against the fake Graph server.

    .venv/bin/python -m benchmarks.graph_client_cpu [--sends 3000] [--concurrency 64]

The fake Graph server runs in a subprocess; this prints the client process's CPU milliseconds
per send (time.process_time, so the server's work is not counted) and the throughput for:
httpx with its defaults, httpx with a pool as large as the concurrency, and httpx on
httpx-aiohttp's transport with that pool. Each send is what a Graph sender does: a POST of a
JSON text message with a Bearer token, the answer's JSON read.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from typing import Literal

import httpx
from httpx_aiohttp import AiohttpTransport

ClientKind = Literal["httpx-default", "httpx", "aiohttp"]
KINDS: tuple[ClientKind, ...] = ("httpx-default", "httpx", "aiohttp")


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


def client_for(kind: ClientKind, concurrency: int) -> httpx.AsyncClient:
    """The client of `kind`, its pool as large as `concurrency` unless it keeps the defaults."""
    if kind == "httpx-default":
        return httpx.AsyncClient(trust_env=False)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if kind == "httpx":
        return httpx.AsyncClient(limits=limits, trust_env=False)
    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits), trust_env=False)


async def _run(kind: ClientKind, url: str, sends: int, concurrency: int) -> tuple[float, float]:
    body = {"messaging_product": "whatsapp", "to": "+15550001234", "type": "text"}
    endpoint = f"{url}/v25.0/15550001111/messages"
    headers = {"Authorization": "Bearer bench-token"}  # the fake server accepts any token
    async with client_for(kind, concurrency) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                payload = {**body, "text": {"body": f"m{n}"}}
                answer = await client.post(endpoint, json=payload, headers=headers)
                answer.raise_for_status()
                answer.json()

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
        [sys.executable, "-m", "pyloto_cli.fakes.graph_server", "--port", str(port)],
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
