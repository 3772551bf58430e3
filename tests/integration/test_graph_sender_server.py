"""GraphSender on the production client (httpx on aiohttp) against servers on 127.0.0.1.

The fake Graph server answers like Meta; `RawServer` does to a connection what a server or the
network can (refuse it, hang up after reading a request, never answer, close it while idle),
so that each way a send can fail is classified as it really happens: never sent (retried at
once, plain TransientError) or maybe sent (AmbiguousSendError).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Literal, Self

import aiohttp
import httpx
import pytest

from pyloto_cli.adapters.sender.graph import GraphSender, open_graph_client
from pyloto_cli.adapters.sender.limiter import SendLimiter
from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.errors import AmbiguousSendError, SendPaused, TransientError
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.domain.webhook import Recipient
from pyloto_cli.settings import Settings
from tests.fakes.graph_server import FakeGraphServer

NUMBER = "106540352242922"
WARM_UP_NUMBER = "106540352249999"  # another number: its own rate budget
PEER = Recipient(to="+15550001234")


Mode = Literal["answer", "answer_then_close", "close", "hold"]


class RawServer:
    """HTTP/1.1 on asyncio streams, one `mode` for every request it reads.

    `answer`: a Graph-like 200, the connection kept; `answer_then_close`: the same, then the
    server closes the connection while the client holds it idle; `close`: hang up after
    reading the request, without an answer; `hold`: answer only once `release` is set.
    """

    def __init__(self) -> None:
        self.mode: Mode = "answer"
        self.release = asyncio.Event()
        self.hung_up = asyncio.Event()  # a connection ended (closed on the server's side)
        self.connections = 0
        self.targets: list[str] = []  # request targets, in arrival order
        self.bodies: list[bytes] = []
        self._arrived = asyncio.Condition()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def wait_for_requests(self, count: int, within_s: float = 5.0) -> None:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.bodies) >= count), within_s
            )

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.release.set()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.hung_up.set()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and do what `mode` says; False once the connection is to end."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
        mode = self.mode
        async with self._arrived:
            self.targets.append(lines[0].split(" ")[1])
            self.bodies.append(body)
            self._arrived.notify_all()
        if mode == "close":
            return False
        if mode == "hold":
            await self.release.wait()
        answer = b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.raw.%d"}]}' % len(
            self.bodies
        )
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()
        return mode != "answer_then_close"


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    async with RawServer() as server:
        yield server


def closed_port_url() -> str:
    """The URL of a port on 127.0.0.1 that nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def full_listen_backlog() -> Iterator[str]:
    """The URL of a listener that never accepts and whose backlog is full: Linux drops
    further SYNs, so a connect there hangs until the client's connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield f"http://127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()


def raw_sender(client: httpx.AsyncClient, url: str) -> GraphSender:
    """A sender without a rate limiter: only the connection decides what happens."""
    return GraphSender(client, access_token="good-token", api_version="v25.0", base_url=url)


def text(n: int | str) -> JsonObject:
    return ob.text_body(PEER, f"message {n}")


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


async def test_small_pool_makes_sends_wait_not_fail(
    fake_graph: FakeGraphServer, make_settings: Callable[..., Settings]
) -> None:
    """64 concurrent sends through 8 connections to a slow server: every one is delivered."""
    fake_graph.delay_s = 0.02
    async with open_graph_client(make_settings(concurrency=4)) as http:
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
    await asyncio.gather(*(sender.mark_read(WARM_UP_NUMBER, f"wamid.{n}") for n in range(64)))
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


# --- how a failed send is classified, on real connections ----------------------------------


async def test_refused_connection_is_never_sent(make_settings: Callable[..., Settings]) -> None:
    """Nobody listening: a plain TransientError (retried freely), from aiohttp's connector."""
    async with open_graph_client(make_settings()) as http:
        with pytest.raises(TransientError) as info:
            await raw_sender(http, closed_port_url()).send(NUMBER, text(1))
    assert not isinstance(info.value, AmbiguousSendError)
    assert isinstance(info.value.__cause__, httpx.TransportError)
    assert isinstance(info.value.__cause__.__cause__, aiohttp.ClientConnectorError)


async def test_connect_timeout_is_never_sent(make_settings: Callable[..., Settings]) -> None:
    """A connect that never completes times out as never sent."""
    timeout = httpx.Timeout(connect=0.2, read=5.0, write=5.0, pool=5.0)
    with full_listen_backlog() as url:
        async with open_graph_client(make_settings(), timeouts=timeout) as http:
            with pytest.raises(TransientError) as info:
                await raw_sender(http, url).send(NUMBER, text(1))
    assert not isinstance(info.value, AmbiguousSendError)


async def test_pool_timeout_is_never_sent(
    raw_server: RawServer, make_settings: Callable[..., Settings]
) -> None:
    """Every pooled connection busy past the pool timeout: never sent, the server never sees it."""
    raw_server.mode = "hold"
    timeout = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=0.2)
    async with open_graph_client(make_settings(concurrency=1), timeouts=timeout) as http:  # 8
        sender = raw_sender(http, raw_server.url)
        held = [asyncio.create_task(sender.send(NUMBER, text(n))) for n in range(8)]
        await raw_server.wait_for_requests(8)
        with pytest.raises(TransientError) as info:
            await sender.send(NUMBER, text("late"))
        raw_server.release.set()
        answered = await asyncio.gather(*held)
    assert not isinstance(info.value, AmbiguousSendError)
    assert len(raw_server.bodies) == 8
    assert all(result.message_id for result in answered)


async def test_hang_up_after_the_request_is_ambiguous(
    raw_server: RawServer, make_settings: Callable[..., Settings]
) -> None:
    """The server read the request and closed without answering: maybe sent, not repeated."""
    raw_server.mode = "close"
    async with open_graph_client(make_settings()) as http:
        with pytest.raises(AmbiguousSendError):
            await raw_sender(http, raw_server.url).send(NUMBER, text(1))
    assert len(raw_server.bodies) == 1


async def test_read_timeout_is_ambiguous(
    raw_server: RawServer, make_settings: Callable[..., Settings]
) -> None:
    """No answer within the read timeout: maybe sent, not repeated."""
    raw_server.mode = "hold"
    timeout = httpx.Timeout(connect=2.0, read=0.2, write=2.0, pool=2.0)
    async with open_graph_client(make_settings(), timeouts=timeout) as http:
        with pytest.raises(AmbiguousSendError):
            await raw_sender(http, raw_server.url).send(NUMBER, text(1))
    assert len(raw_server.bodies) == 1


async def test_idle_connection_closed_by_the_server_is_not_a_failure(
    raw_server: RawServer, make_settings: Callable[..., Settings]
) -> None:
    """The server closes a kept-alive connection between two sends: the second send goes out
    once, on a new connection (the closed one is dropped from the pool, or it fails as
    never sent when written to and the send is tried again at once)."""
    raw_server.mode = "answer_then_close"
    async with open_graph_client(make_settings()) as http:
        sender = raw_sender(http, raw_server.url)
        first = await sender.send(NUMBER, text(1))
        await asyncio.wait_for(raw_server.hung_up.wait(), 5.0)
        raw_server.mode = "answer"
        second = await sender.send(NUMBER, text(2))
    assert (first.message_id, second.message_id) == ("wamid.raw.1", "wamid.raw.2")
    assert [b.count(b"message 2") for b in raw_server.bodies] == [0, 1]
    assert raw_server.connections == 2


async def test_connection_closing_as_the_next_send_starts_is_retried_at_once(
    raw_server: RawServer, make_settings: Callable[..., Settings]
) -> None:
    """The server closes the connection right after its answer and the next send starts at
    once: writing to it fails (never sent), and the send goes out once on a new connection."""
    raw_server.mode = "answer_then_close"
    async with open_graph_client(make_settings()) as http:
        sender = raw_sender(http, raw_server.url)
        await sender.send(NUMBER, text(1))
        raw_server.mode = "answer"
        second = await sender.send(NUMBER, text(2))
    assert second.message_id == "wamid.raw.2"
    assert [b.count(b"message 2") for b in raw_server.bodies] == [0, 1]
    assert raw_server.connections == 2


async def test_pool_holds_two_connections_per_task_and_keeps_them(
    raw_server: RawServer, make_settings: Callable[..., Settings]
) -> None:
    """Concurrency 20: 40 sends in flight at once each get a connection, and the next 40
    reuse them."""
    raw_server.mode = "hold"
    async with open_graph_client(make_settings(concurrency=20)) as http:
        sender = raw_sender(http, raw_server.url)
        first = [asyncio.create_task(sender.send(NUMBER, text(n))) for n in range(40)]
        await raw_server.wait_for_requests(40)  # all in flight together, none answered yet
        raw_server.mode = "answer"
        raw_server.release.set()
        await asyncio.gather(*first)
        await asyncio.gather(*(sender.send(NUMBER, text(n)) for n in range(40, 80)))
    assert raw_server.connections == 40
    assert len(raw_server.bodies) == 80


async def test_a_proxy_named_in_the_environment_carries_the_sends(
    raw_server: RawServer, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY routes Graph sends through the proxy (here the raw server, on loopback)."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", raw_server.url)
    async with open_graph_client(make_settings()) as http:
        result = await raw_sender(http, "http://graph.test").send(NUMBER, text(1))
    assert result.message_id == "wamid.raw.1"
    assert raw_server.targets == [f"http://graph.test/v25.0/{NUMBER}/messages"]
