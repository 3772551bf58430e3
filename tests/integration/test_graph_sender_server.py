"""GraphSender on the production client (httpx on aiohttp) against the fake Graph server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from pyloto_cli.adapters.direct_http import DirectGraphClient
from pyloto_cli.adapters.sender.graph import GraphSender, graph_limits, open_graph_client
from pyloto_cli.adapters.sender.limiter import SendLimiter
from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.errors import AmbiguousSendError, SendPaused, TransientError
from pyloto_cli.domain.webhook import Recipient
from pyloto_cli.settings import Settings
from tests.fakes.graph_server import FakeGraphServer

NUMBER = "106540352242922"
PEER = Recipient(to="+15550001234")


@pytest.fixture
async def fake_graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        yield server


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with open_graph_client(make_settings(concurrency=64)) as http:
        yield http


def make_sender(client: httpx.AsyncClient, url: str, *, rate: float = 1000.0) -> GraphSender:
    return GraphSender(
        client,
        access_token="good-token",
        api_version="v25.0",
        base_url=url,
        limiter=SendLimiter(rate),
    )


async def test_send_reaches_graph_and_returns_wamid(
    client: httpx.AsyncClient, fake_graph: FakeGraphServer
) -> None:
    """A reply body is posted as sent, with the token, to /v25.0/{number}/messages."""
    sender = make_sender(client, fake_graph.url)
    body = ob.text_body(PEER, "olá 👋", reply_to="wamid.IN", callback_data="wamid.IN")
    result = await sender.send(NUMBER, body)
    await sender.mark_read(NUMBER, "wamid.IN", typing=True)
    first, second = fake_graph.requests
    assert result.message_id.startswith("wamid.fake.")
    assert (first.path, first.body) == (f"/v25.0/{NUMBER}/messages", body)
    assert first.authorization == "Bearer good-token"
    assert second.body == ob.typing_indicator_body("wamid.IN")


async def test_throttling_raises_transient_with_retry_after(
    client: httpx.AsyncClient, fake_graph: FakeGraphServer
) -> None:
    """130429 (as HTTP 400) and a bare 500 are retryable; the send after them goes through."""
    sender = make_sender(client, fake_graph.url)
    fake_graph.fail(130429, times=2)
    fake_graph.fail(http_status=500, times=1)
    outcomes = []
    for _ in range(3):
        with pytest.raises(TransientError) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        outcomes.append((info.value.code, info.value.retry_after))
    assert outcomes == [(130429, 1.0), (130429, 1.0), (None, None)]
    assert (await sender.send(NUMBER, ob.text_body(PEER, "hi"))).message_id
    assert [r.answered for r in fake_graph.requests] == [400, 400, 500, 200]


async def test_pair_rate_limit_hits_only_that_recipient(
    client: httpx.AsyncClient, fake_graph: FakeGraphServer
) -> None:
    """131056 for one user: retry_after 1 s, that user is held, another user is unaffected."""
    sender = make_sender(client, fake_graph.url)
    sender.limiter = SendLimiter(1000.0, max_wait_s=0.5)
    fake_graph.fail(131056, to="+15550001234")
    with pytest.raises(TransientError) as info:
        await sender.send(NUMBER, ob.text_body(PEER, "hi"))
    assert (info.value.code, info.value.retry_after) == (131056, 1.0)
    with pytest.raises(TransientError) as held:
        await sender.send(NUMBER, ob.text_body(PEER, "again"))
    assert held.value.retry_after is not None
    other = await sender.send(NUMBER, ob.text_body(Recipient(to="+15550009999"), "hi"))
    assert other.message_id
    assert len(fake_graph.requests) == 2


async def test_auth_pause_and_probe(client: httpx.AsyncClient, fake_graph: FakeGraphServer) -> None:
    """A rejected token pauses sends without requests; after the pause one probe resumes."""
    now = [0.0]
    sender = GraphSender(
        client,
        access_token="good-token",
        api_version="v25.0",
        base_url=fake_graph.url,
        auth_pause_s=60.0,
        clock=lambda: now[0],
    )
    fake_graph.require_token("rotated-token")
    with pytest.raises(SendPaused) as info:
        await sender.send(NUMBER, ob.text_body(PEER, "hi"))
    assert (info.value.code, info.value.retry_after) == (190, 60.0)
    for _ in range(5):
        with pytest.raises(SendPaused):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
    assert len(fake_graph.requests) == 1
    fake_graph.require_token(None)  # the operator fixed the token
    now[0] += 61
    assert (await sender.send(NUMBER, ob.text_body(PEER, "probe"))).message_id
    assert (await sender.send(NUMBER, ob.text_body(PEER, "after"))).message_id
    assert [r.answered for r in fake_graph.requests] == [401, 200, 200]


async def test_read_timeout_is_ambiguous_and_refused_connection_is_not(
    fake_graph: FakeGraphServer,
) -> None:
    """No answer in time after sending: AmbiguousSendError; nobody listening: plain transient."""
    timeout = httpx.Timeout(connect=2.0, read=0.1, write=2.0, pool=2.0)
    transport = AiohttpTransport(limits=graph_limits(4))
    async with DirectGraphClient(transport=transport, timeout=timeout) as http:
        sender = make_sender(http, fake_graph.url)
        fake_graph.fail(delay_s=0.4)
        with pytest.raises(AmbiguousSendError):
            await sender.send(NUMBER, ob.text_body(PEER, "slow"))
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            closed_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(TransientError) as info:
            await make_sender(http, closed_url).send(NUMBER, ob.text_body(PEER, "hi"))
        assert not isinstance(info.value, AmbiguousSendError)
    await fake_graph.wait_for_requests(1)  # the slow one did reach the server


async def test_small_pool_makes_sends_wait_not_fail(
    fake_graph: FakeGraphServer, make_settings: Callable[..., Settings]
) -> None:
    """64 concurrent sends through 8 connections to a slow server: every one is delivered."""
    fake_graph.delay_s = 0.02
    transport = AiohttpTransport(limits=graph_limits(4))
    async with DirectGraphClient(transport=transport) as http:
        sender = make_sender(http, fake_graph.url)
        results = await asyncio.gather(
            *(
                sender.send(NUMBER, ob.text_body(Recipient(to=f"+1555000{n:04d}"), "m"))
                for n in range(64)
            )
        )
    assert len({r.message_id for r in results}) == 64
    assert len(fake_graph.messages()) == 64


async def test_burst_of_500_none_lost_and_rate_held(
    client: httpx.AsyncClient, fake_graph: FakeGraphServer
) -> None:
    """500 sends by 64 workers through a slow server: all delivered once, at ≤ the number's rate."""
    rate = 400.0
    sender = make_sender(client, fake_graph.url, rate=rate)
    assert sender.limiter is not None
    # open the 64 connections first (another number: its own rate budget), so that connection
    # set-up does not bunch the first sends together
    await asyncio.gather(*(sender.mark_read("warm-up", f"wamid.{n}") for n in range(64)))
    fake_graph.reset()
    fake_graph.delay_s = 0.02
    pending: asyncio.Queue[int] = asyncio.Queue()
    for n in range(500):
        pending.put_nowait(n)

    async def worker() -> None:
        while not pending.empty():
            n = pending.get_nowait()
            peer = Recipient(to=f"+1555{n:07d}")  # distinct users: only the number limit applies
            await sender.send(NUMBER, ob.text_body(peer, f"message {n}"))

    await asyncio.gather(*(worker() for _ in range(64)))
    sent = fake_graph.messages()
    assert sorted(r.body["text"]["body"] for r in sent) == sorted(
        f"message {n}" for n in range(500)
    )
    times = sorted(r.at for r in sent)
    burst = sender.limiter.number_burst
    span = times[-1] - times[0]
    # tolerance: arrival times at the server carry scheduling jitter on a busy 2-core machine
    assert (len(times) - burst) / span <= rate * 1.3
    window = 0.25
    busiest = max(sum(1 for t in times[i:] if t < t0 + window) for i, t0 in enumerate(times))
    # unlimited, 64 workers on a 20 ms server would put ~800 in a window; allowed: 140 + jitter
    assert busiest <= rate * window + burst + 60
