"""The load generator: signed webhook POSTs, open-loop on a schedule or closed-loop.

Open loop (the default) is honest about coordinated omission: webhook `i` is due at
`t0 + i / rate` and is sent then whether or not earlier ones were answered, each on its own
task; its ack latency is counted from when it was due, so a stalled server shows up as
latency instead of as a slower sender. Closed loop keeps `concurrency` webhooks in flight, each
sent when the previous one on its lane was answered (a throughput probe, not a latency one).
All requests share one `httpx.AsyncClient` with a pool large enough never to be the limit.
Times are `time.monotonic()`, the clock of the fake Graph server in the same process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from httpx_aiohttp import AiohttpTransport

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


def load_client(connections: int, timeout_s: float = 10.0) -> httpx.AsyncClient:
    """The one client for the run: loopback only, no proxies, waits for a pooled connection.

    It runs on the aiohttp transport (as pyloto's own Graph client does): with hundreds of
    requests in flight httpx's own pool costs the generator more CPU than the server it loads.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(timeout_s, pool=None)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


async def post_webhook(
    client: httpx.AsyncClient, url: str, hook: Webhook, index: int, due: float
) -> Ack:
    """POST one webhook as Meta would and time it."""
    started = time.monotonic()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": hook.signature}
    try:
        response = await client.post(url, content=hook.body, headers=headers)
    except httpx.HTTPError as exc:
        return Ack(index, due, started, time.monotonic(), None, type(exc).__name__)
    return Ack(index, due, started, time.monotonic(), response.status_code)


async def open_loop(
    client: httpx.AsyncClient,
    url: str,
    hooks: Sequence[Webhook],
    rate: float,
    on_ack: AckCallback,
) -> list[Ack]:
    """POST `hooks` to `url` at `rate` per second on schedule, never waiting for answers."""
    t0 = time.monotonic()
    pending: set[asyncio.Task[Ack]] = set()
    acks: list[Ack] = []

    def done(task: asyncio.Task[Ack]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is None:
            acks.append(task.result())
            on_ack(task.result())

    try:
        for index, hook in enumerate(hooks):
            due = t0 + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(post_webhook(client, url, hook, index, due))
            pending.add(task)
            task.add_done_callback(done)
        if pending:
            await asyncio.gather(*pending)
    finally:  # cancelled (Ctrl-C) or failed: do not leave requests behind
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return sorted(acks, key=lambda ack: ack.index)


async def closed_loop(
    client: httpx.AsyncClient,
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
