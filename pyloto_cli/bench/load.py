"""The load generator: signed webhook POSTs, open-loop on a schedule or closed-loop.

Open loop (the default) is honest about coordinated omission: webhook `i` is due at
`t0 + i / rate` and is sent then whether or not earlier ones were answered, each on its own
task; its ack latency is counted from when it was due, so a stalled server shows up as
latency instead of as a slower sender. Closed loop keeps `concurrency` webhooks in flight, each
sent when the previous one on its lane was answered (a throughput probe, not a latency one).
All requests share one `LoadClient`, with a pool large enough never to be the limit.
Times are `time.monotonic()`, the clock of the fake Graph server in the same process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import aiohttp

from pyloto_cli.bench.payloads import Webhook

WEBHOOK_PATH = "/webhooks/whatsapp"
# what `LoadClient.request` raises for a request that got no answer: refused, reset, timed out,
# or answered with something that is not HTTP
_FAILED = (aiohttp.ClientError, OSError, TimeoutError)
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


@functools.lru_cache(maxsize=64)
def _checked(url: str) -> str:
    """`url`, once checked to be plain HTTP to a host (the generator's target is loopback)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"the load generator speaks plain HTTP to a host: {url!r}")
    return url


def pool_size(rate: float, concurrency: int | None = None) -> int:
    """Connections enough that the pool never paces the sender: one per closed-loop lane, or
    four seconds' worth of an open loop's rate (at least 100)."""
    if concurrency is not None:
        return max(1, concurrency)
    return max(100, int(rate * 4))


def failure_name(exc: BaseException) -> str:
    """What a failed request's ack says: the OS's own error when aiohttp wraps one (a refused
    connection is `ConnectionRefusedError`), else the exception's type."""
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    return type(cause).__name__


class LoadClient:
    """The generator's HTTP client: one aiohttp session, keep-alive connections to loopback.

    Every ack figure counts this client's own work on both ends of the round trip, so it is
    set up to do nothing a load generator does not need: no cookie jar, no automatic headers
    beyond Host and Content-Length, no decompression, no proxy lookup. At most `connections`
    requests at once; `timeout_s` bounds connecting and each read of the answer, not the wait
    for a free connection.
    """

    def __init__(self, connections: int, timeout_s: float = 10.0) -> None:
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections, limit_per_host=0),
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            auto_decompress=False,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, url: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, bytes]:
        """`method url` with `body`; the answer's status and body. Raises one of `_FAILED`."""
        if self._session is None:
            raise RuntimeError("LoadClient is used inside `async with`")
        async with self._session.request(
            method, _checked(url), data=body or None, headers=dict(headers)
        ) as answer:
            return answer.status, await answer.read()


async def get_json(client: LoadClient, url: str) -> Any:
    """GET `url`'s JSON body, or None if the request or the body fails."""
    try:
        status, body = await client.request("GET", url)
        return json.loads(body) if status == 200 else None
    except (*_FAILED, ValueError):
        return None


async def post_webhook(client: LoadClient, url: str, hook: Webhook, index: int, due: float) -> Ack:
    """POST one webhook as Meta would and time it."""
    started = time.monotonic()
    headers = (("Content-Type", "application/json"), ("X-Hub-Signature-256", hook.signature))
    try:
        status, _ = await client.request("POST", url, hook.body, headers)
    except _FAILED as exc:
        return Ack(index, due, started, time.monotonic(), None, failure_name(exc))
    return Ack(index, due, started, time.monotonic(), status)


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
    client: LoadClient,
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
    client: LoadClient,
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
