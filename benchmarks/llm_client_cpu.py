"""CPU per chat completion of the openai SDK's public call paths, against the fake OpenAI server.

    .venv/bin/python -m benchmarks.llm_client_cpu [--calls 2000] [--in-flight 50]
        [--latency-ms 20] [--rounds 3] [--only post-raw/aiohttp,pyloto]

Starts `pyloto_cli.fakes.openai_server` as a subprocess on 127.0.0.1 (so its CPU is not
counted), then runs `--calls` completions per variant, `--in-flight` at a time, and prints this
process's CPU milliseconds per call (`time.process_time`), the median over `--rounds` rounds
that visit the variants in turn (so a neighbour's load hits every variant alike).

Every variant ends with the first choice's content as a string. The call paths:

- create:     `chat.completions.create()`, the typed `ChatCompletion`
- raw-create: `chat.completions.with_raw_response.create()`, the body read as JSON
- post-model: `client.post("/chat/completions", cast_to=ChatCompletion, body=...)`
- post-object: the same with `cast_to=object` (the SDK's parsed JSON, no model)
- post-raw:   the same with `cast_to=httpx2.Response`, the body read as JSON
- post-bytes: the same with the body sent as JSON bytes (`content=`)

each on the SDK's default httpx2 transport (`/default`) and on `DefaultAioHttpClient`
(`/aiohttp`); `pyloto` is `OpenAIChatModel.complete` on `open_openai_client`, what the worker runs.

The figure depends on the call rate as much as on the path: `--latency-ms 20 --in-flight 50`
(about 2 000 calls/s) shares each event-loop wake-up among many answers, while
`--latency-ms 500 --in-flight 100` (about 200 calls/s, what the worker sees at 100 messages/s)
pays it for nearly every answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import httpx2
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

from pyloto_cli.adapters.llm.openai import OpenAIChatModel, open_openai_client
from pyloto_cli.domain import json_codec
from pyloto_cli.domain.llm import ChatMessage, ChatRequest
from pyloto_cli.settings import Settings

MODEL = "gpt-4o-mini"
TIMEOUT_S = 30.0
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Hello, what are your opening hours on Sunday?"},
]
BODY = {"model": MODEL, "messages": MESSAGES}
Call = Callable[[], Awaitable[str]]
MakeCall = Callable[[AsyncOpenAI], Call]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fake_server(port: int, latency_ms: float) -> Iterator[None]:
    """The fake OpenAI server as a subprocess, ready when its health check answers."""
    cmd = [sys.executable, "-m", "pyloto_cli.fakes.openai_server", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--latency-ms", str(latency_ms)], stdout=subprocess.DEVNULL)
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


def _first_content(data: Any) -> str:
    return str(data["choices"][0]["message"]["content"])


def via_create(client: AsyncOpenAI) -> Call:
    async def call() -> str:
        completion = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, timeout=TIMEOUT_S
        )
        return completion.choices[0].message.content or ""

    return call


def via_raw_create(client: AsyncOpenAI) -> Call:
    async def call() -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, timeout=TIMEOUT_S
        )
        return _first_content(json_codec.loads(raw.content))

    return call


def via_post_model(client: AsyncOpenAI) -> Call:
    async def call() -> str:
        completion = await client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body=BODY,
            options={"timeout": TIMEOUT_S},
        )
        return completion.choices[0].message.content or ""

    return call


def via_post_object(client: AsyncOpenAI) -> Call:
    async def call() -> str:
        data = await client.post(
            "/chat/completions", cast_to=object, body=BODY, options={"timeout": TIMEOUT_S}
        )
        return _first_content(data)

    return call


def via_post_raw(client: AsyncOpenAI) -> Call:
    async def call() -> str:
        response = await client.post(
            "/chat/completions",
            cast_to=httpx2.Response,
            body=BODY,
            options={"timeout": TIMEOUT_S},
        )
        return _first_content(json_codec.loads(response.content))

    return call


def via_post_bytes(client: AsyncOpenAI) -> Call:
    async def call() -> str:
        response = await client.post(
            "/chat/completions",
            cast_to=httpx2.Response,
            content=json_codec.dumps(BODY),
            options={"timeout": TIMEOUT_S},
        )
        return _first_content(json_codec.loads(response.content))

    return call


PATHS: dict[str, MakeCall] = {
    "create": via_create,
    "raw-create": via_raw_create,
    "post-model": via_post_model,
    "post-object": via_post_object,
    "post-raw": via_post_raw,
    "post-bytes": via_post_bytes,
}


@contextlib.asynccontextmanager
async def sdk_variant(base_url: str, path: str, transport: str) -> AsyncIterator[Call]:
    """One SDK call path on a fresh client with the default or the aiohttp transport."""
    http_client = DefaultAioHttpClient() if transport == "aiohttp" else None
    async with AsyncOpenAI(
        api_key="bench", base_url=base_url, max_retries=0, http_client=http_client
    ) as client:
        yield PATHS[path](client)


@contextlib.asynccontextmanager
async def pyloto_variant(base_url: str) -> AsyncIterator[Call]:
    """pyloto's adapter as the worker opens it."""
    settings = Settings(openai_api_key="bench", openai_base_url=base_url, llm_max_retries=0)
    messages = tuple(ChatMessage(m["role"], m["content"]) for m in MESSAGES)
    request = ChatRequest("response", MODEL, messages, TIMEOUT_S)
    async with open_openai_client(settings) as client:
        model = OpenAIChatModel(client)
        yield lambda: model.complete(request)


def variants() -> list[str]:
    """Every variant name, in the order the rounds visit them."""
    names = [f"{path}/{transport}" for transport in ("default", "aiohttp") for path in PATHS]
    return [*names, "pyloto"]


def open_variant(name: str, base_url: str) -> contextlib.AbstractAsyncContextManager[Call]:
    """The named variant's call, on its own client."""
    if name == "pyloto":
        return pyloto_variant(base_url)
    path, transport = name.split("/")
    return sdk_variant(base_url, path, transport)


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


async def run(base_url: str, names: list[str], args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            async with open_variant(name, base_url) as call:
                results[name].append(await measure(call, args.calls, args.in_flight))
    for name, figures in results.items():
        spread = " ".join(f"{ms:.3f}" for ms in figures)
        print(f"{name:20} {statistics.median(figures):6.3f} CPU ms/call  [{spread}]")
    print(f"({args.calls} calls per round, {args.in_flight} in flight)")


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU per call of the openai SDK's call paths.")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated variant names")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or variants()
    unknown = set(names) - set(variants())
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {variants()}")
    port = free_port()
    with fake_server(port, args.latency_ms):
        asyncio.run(run(f"http://127.0.0.1:{port}/v1", names, args))


if __name__ == "__main__":
    main()
