"""CPU per Graph send for each public way of calling it, against the fake Graph server.

    .venv/bin/python -m benchmarks.graph_client_cpu [--sends 3000] [--concurrency 64] [--rounds 3]

Each variant is one `httpx.AsyncClient` with pyloto's pool limits and timeouts, on httpx's own
transport (`httpx`) or on `httpx_aiohttp.AiohttpTransport` (`aiohttp`, httpx-aiohttp's
`HttpxAiohttpClient`, as `open_graph_client` builds it), called three ways:
`client.post(url, content=..., headers=...)`; `client.build_request(...)` then `client.send`;
and an `httpx.Request` built from a parsed URL and headers made once, then `client.send` (how
`GraphSender` calls it). `sender` is `GraphSender.send` on `open_graph_client`, the production
path with its JSON encoding, limiter and answer parsing. The figure is the client process's
CPU milliseconds per send (`time.process_time`: the server runs in another process), the best
of `--rounds` interleaved rounds, which is the one least disturbed by other work on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from pyloto_cli.adapters.sender.graph import (
    GraphSender,
    graph_limits,
    graph_timeout,
    open_graph_client,
)
from pyloto_cli.domain import json_codec
from pyloto_cli.settings import Settings

NUMBER = "15550001111"
TOKEN = "bench-token"  # noqa: S105 - the fake server accepts any token
BODY = {"messaging_product": "whatsapp", "to": "+15550001234", "type": "text"}
CALLS = ("post", "build+send", "request+send")
Send = Callable[[int], Awaitable[object]]


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


def _client(transport: str, concurrency: int) -> httpx.AsyncClient:
    limits = graph_limits(concurrency)
    if transport == "aiohttp":
        return HttpxAiohttpClient(limits=limits, timeout=graph_timeout())
    return httpx.AsyncClient(limits=limits, timeout=graph_timeout())


def _call(client: httpx.AsyncClient, call: str, base: str) -> Send:
    """One send of `call`'s kind: the body encoded per send, as the sender does."""
    url = f"{base}/v25.0/{NUMBER}/messages"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    if call == "post":

        async def post(n: int) -> object:
            content = json_codec.dumps({**BODY, "text": {"body": f"m{n}"}})
            return (await client.post(url, content=content, headers=headers)).json()

        return post
    if call == "build+send":

        async def build_send(n: int) -> object:
            content = json_codec.dumps({**BODY, "text": {"body": f"m{n}"}})
            request = client.build_request("POST", url, content=content, headers=headers)
            return (await client.send(request)).json()

        return build_send
    parsed = httpx.URL(url)
    merged = httpx.Headers(client.headers)
    merged.update(headers)
    extensions = {"timeout": client.timeout.as_dict()}

    async def request_send(n: int) -> object:
        content = json_codec.dumps({**BODY, "text": {"body": f"m{n}"}})
        request = httpx.Request(
            "POST", parsed, content=content, headers=merged, extensions=extensions
        )
        return (await client.send(request)).json()

    return request_send


async def _measure(send: Send, sends: int, concurrency: int) -> tuple[float, float]:
    """(CPU ms per send, sends per second) for `sends` sends by `concurrency` tasks."""
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def worker() -> None:
        while not queue.empty():
            await send(queue.get_nowait())

    for n in range(concurrency * 4):  # open and warm the pool first
        queue.put_nowait(n)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for n in range(sends):
        queue.put_nowait(n)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu * 1000 / sends, sends / wall


async def _run(variant: str, base: str, sends: int, concurrency: int) -> tuple[float, float]:
    if variant == "sender":
        settings = Settings(_env_file=None, concurrency=concurrency)
        opened: AbstractAsyncContextManager[httpx.AsyncClient] = open_graph_client(settings)
        async with opened as client:
            sender = GraphSender(client, access_token=TOKEN, api_version="v25.0", base_url=base)
            return await _measure(
                lambda n: sender.send(NUMBER, {**BODY, "text": {"body": f"m{n}"}}),
                sends,
                concurrency,
            )
    transport, call = variant.split(" ", 1)
    async with _client(transport, concurrency) as client:
        return await _measure(_call(client, call, base), sends, concurrency)


def main() -> None:
    """Run every variant `--rounds` times, interleaved, and print each one's best round."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = [f"{t} {c}" for t in ("httpx", "aiohttp") for c in CALLS] + ["sender"]
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pyloto_cli.fakes.graph_server", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    try:
        _wait_ready(port)
        base = f"http://127.0.0.1:{port}"
        for _ in range(args.rounds):
            for variant in variants:
                results[variant].append(
                    asyncio.run(_run(variant, base, args.sends, args.concurrency))
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
    for variant in variants:
        cpu_ms, rate = min(results[variant])
        print(f"{variant:22} {cpu_ms:.3f} ms CPU/send  {rate:7.0f} sends/s")


if __name__ == "__main__":
    main()
