"""The load generator: signed webhook POSTs, open-loop on a schedule or closed-loop.

Open loop (the default) is honest about coordinated omission: webhook `i` is due at
`t0 + i / rate` and is sent then whether or not earlier ones were answered, each on its own
task; its ack latency is counted from when it was due, so a stalled server shows up as
latency instead of as a slower sender. Closed loop keeps `concurrency` webhooks in flight, each
sent when the previous one on its lane was answered (a throughput probe, not a latency one).
All requests share one aiohttp session with a pool large enough never to be the limit.
Times are `time.monotonic()`, the clock of the fake Graph server in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from pyloto_cli.bench.payloads import Webhook

WEBHOOK_PATH = "/webhooks/whatsapp"
AckCallback = Callable[["Ack"], None]


@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome of one webhook POST; `status` is None when the request itself failed."""

    index: int
    due: float
    started: float
    finished: float
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Meta counts only a 200 as delivered."""
        return self.status == 200

    @property
    def latency_s(self) -> float:
        """From when it was due (open loop) or sent (closed loop) to the answer."""
        return self.finished - self.due


def load_client(connections: int, timeout_s: float = 10.0) -> aiohttp.ClientSession:
    """The one client for the run: loopback only, no proxies, waits for a pooled connection.

    It is aiohttp's own session, with nothing layered over it: the generator's overhead is
    counted in every ack latency, so it is kept as small as a Python client allows (against a
    server that does nothing, `benchmarks/ack_floor.py`, ack p99 was 3.1 ms with httpx over
    aiohttp's transport and an event-loop timer, and is 1.5 ms with this and `_pace`).
    `timeout_s` bounds connecting and each read, not the wait for a pooled connection.
    """
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)


async def get_json(client: aiohttp.ClientSession, url: str) -> Any:
    """GET `url`'s JSON body, or None if the request or the body fails."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with client.get(url) as response:
            return await response.json(content_type=None)
    return None


async def post_webhook(
    client: aiohttp.ClientSession, url: str, hook: Webhook, index: int, due: float
) -> Ack:
    """POST one webhook as Meta would and time it."""
    started = time.monotonic()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": hook.signature}
    try:
        async with client.post(url, data=hook.body, headers=headers) as response:
            await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Ack(index, due, started, time.monotonic(), None, type(exc).__name__)
    return Ack(index, due, started, time.monotonic(), response.status)


def _pace(
    loop: asyncio.AbstractEventLoop,
    count: int,
    rate: float,
    send: Callable[[int, float], None],
    stop: threading.Event,
) -> None:
    """On a thread: hand webhook `i` to `loop` at `t0 + i / rate`, to within the OS's timer
    slack (tens of microseconds). An event loop's own timers round to the millisecond, which
    would add up to a millisecond of the generator's lateness to every ack."""
    t0 = time.monotonic()
    for index in range(count):
        due = t0 + index / rate
        if stop.wait(max(0.0, due - time.monotonic())):  # set: the run is being cancelled
            return
        loop.call_soon_threadsafe(send, index, due)


async def open_loop(
    client: aiohttp.ClientSession,
    url: str,
    hooks: Sequence[Webhook],
    rate: float,
    on_ack: AckCallback,
) -> list[Ack]:
    """POST `hooks` to `url` at `rate` per second on schedule, never waiting for answers."""
    pending: set[asyncio.Task[Ack]] = set()
    acks: list[Ack] = []
    stop = threading.Event()

    def done(task: asyncio.Task[Ack]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is None:
            acks.append(task.result())
            on_ack(task.result())

    def send(index: int, due: float) -> None:
        if stop.is_set():  # handed over as the run was being cancelled
            return
        task = asyncio.create_task(post_webhook(client, url, hooks[index], index, due))
        pending.add(task)
        task.add_done_callback(done)

    loop = asyncio.get_running_loop()
    try:
        await asyncio.to_thread(_pace, loop, len(hooks), rate, send, stop)  # sends go first
        if pending:
            await asyncio.gather(*pending)
    finally:  # cancelled (Ctrl-C) or failed: do not leave requests behind
        stop.set()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return sorted(acks, key=lambda ack: ack.index)


async def closed_loop(
    client: aiohttp.ClientSession,
    url: str,
    hooks: Sequence[Webhook],
    concurrency: int,
    on_ack: AckCallback,
) -> list[Ack]:
    """POST `hooks` to `url` keeping `concurrency` in flight until all are sent."""
    queue = iter(enumerate(hooks))
    acks: list[Ack] = []

    async def lane() -> None:
        for index, hook in queue:  # the shared iterator hands each webhook to one lane
            ack = await post_webhook(client, url, hook, index, time.monotonic())
            acks.append(ack)
            on_ack(ack)

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, concurrency)):
            group.create_task(lane())
    return sorted(acks, key=lambda ack: ack.index)
