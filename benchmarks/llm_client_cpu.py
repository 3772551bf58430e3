"""CPU cost per chat completion of the openai SDK's public call paths, against the fake server.

    .venv/bin/python -m benchmarks.llm_client_cpu [--calls 2000] [--in-flight 50] [--latency-ms 20]

Starts `pyloto_cli.fakes.openai_server` as a subprocess on 127.0.0.1 (so its CPU is not
counted), then, per variant, runs `--calls` completions with `--in-flight` concurrent and prints
this process's CPU milliseconds per call (`time.process_time`):

- create/default: `chat.completions.create()` on the SDK's default HTTP client
- create/aiohttp: `chat.completions.create()` on `DefaultAioHttpClient`
- post/aiohttp:   the lower-level `client.post("/chat/completions", cast_to=ChatCompletion)`
- raw/aiohttp:    `client.post(..., cast_to=httpx2.Response)`, the answer's JSON read with
  orjson instead of being built into `ChatCompletion` models

The figure depends on the call rate as much as on the path: `--latency-ms 20 --in-flight 50`
(about 2 000 calls/s) shares each event-loop wake-up among many answers, while
`--latency-ms 500 --in-flight 100` (about 200 calls/s, what a worker sees at 100 messages/s)
pays it for nearly every answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import orjson
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

ROOT = Path(__file__).resolve().parent.parent
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Hello, what are your opening hours on Sunday?"},
]
Call = Callable[[], Awaitable[object]]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fake_server(port: int, latency_ms: float) -> Any:
    """The fake OpenAI server as a subprocess, ready when its health check answers."""
    cmd = [sys.executable, "-m", "pyloto_cli.fakes.openai_server", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--latency-ms", str(latency_ms)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_fake/health", timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the fake OpenAI server did not start") from None
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def client_for(base_url: str, http: str) -> AsyncIterator[AsyncOpenAI]:
    """An AsyncOpenAI client on the SDK's default HTTP client or on the aiohttp one."""
    http_client = DefaultAioHttpClient() if http == "aiohttp" else None
    async with AsyncOpenAI(
        api_key="bench", base_url=base_url, max_retries=0, timeout=30, http_client=http_client
    ) as client:
        yield client


def via_create(client: AsyncOpenAI) -> Call:
    return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def via_post(client: AsyncOpenAI) -> Call:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    return lambda: client.post(
        "/chat/completions", cast_to=ChatCompletion, body=body, options={"timeout": 30}
    )


def via_raw(client: AsyncOpenAI) -> Call:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}

    async def call() -> object:
        response = await client.post(
            "/chat/completions", cast_to=httpx2.Response, body=body, options={"timeout": 30}
        )
        return orjson.loads(response.content)["choices"][0]["message"]["content"]

    return call


async def measure(call: Call, calls: int, in_flight: int) -> float:
    """CPU ms per call over `calls` calls, `in_flight` at a time (after a warm-up)."""
    await asyncio.gather(*(call() for _ in range(in_flight)))
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await call()

    cpu = time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    return (time.process_time() - cpu) * 1000.0 / calls


async def run(base_url: str, calls: int, in_flight: int) -> None:
    variants: list[tuple[str, str, Callable[[AsyncOpenAI], Call]]] = [
        ("create/default", "default", via_create),
        ("create/aiohttp", "aiohttp", via_create),
        ("post/aiohttp", "aiohttp", via_post),
        ("raw/aiohttp", "aiohttp", via_raw),
    ]
    for name, http, make_call in variants:
        async with client_for(base_url, http) as client:
            ms = await measure(make_call(client), calls, in_flight)
        print(f"{name:16} {ms:6.3f} CPU ms/call  ({calls} calls, {in_flight} in flight)")


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU per call of the openai client paths.")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    port = free_port()
    with fake_server(port, args.latency_ms):
        asyncio.run(run(f"http://127.0.0.1:{port}/v1", args.calls, args.in_flight))


if __name__ == "__main__":
    main()
