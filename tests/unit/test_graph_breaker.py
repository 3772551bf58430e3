"""The Graph API circuit breaker: sends wait while Meta is unreachable, one probe reopens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from pyloto_cli.adapters.sender.graph import GraphSender
from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.breaker import BreakerState, CircuitBreaker
from pyloto_cli.domain.errors import CircuitOpen, Deferral, PermanentError, TransientError
from tests.unit.test_graph_sender import BASE, NUMBER, PEER, TOKEN, URL, Clock, graph_error, ok
from tests.waiting import wait_until

BODY = ob.text_body(PEER, "hello", callback_data="wamid.IN")


def state(sender: GraphSender) -> BreakerState:
    """The breaker's state, read fresh (mypy would keep an earlier assert's narrowing)."""
    assert sender.breaker is not None
    return sender.breaker.state


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sender(client: httpx.AsyncClient, clock: Clock) -> GraphSender:
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    return GraphSender(
        client, access_token=TOKEN, api_version="v25.0", base_url=BASE, breaker=breaker
    )


@pytest.fixture
def graph() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


async def test_connection_errors_open_the_breaker_and_sends_fail_fast(
    sender: GraphSender, graph: respx.MockRouter
) -> None:
    route = graph.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    for _ in range(3):
        with pytest.raises(TransientError, match="graph_unreachable"):
            await sender.send(NUMBER, BODY)
    tried = route.call_count
    with pytest.raises(CircuitOpen) as refused:
        await sender.send(NUMBER, BODY)
    assert isinstance(refused.value, Deferral)  # the task waits, spending no attempt
    assert refused.value.retry_after == pytest.approx(10.0)
    assert route.call_count == tried  # no request while open


async def test_5xx_answers_open_it_and_other_answers_do_not(
    sender: GraphSender, graph: respx.MockRouter
) -> None:
    graph.post(URL).mock(
        side_effect=[graph_error(131026), graph_error(131026), graph_error(131026)]
    )
    for _ in range(3):  # Meta answered (a 4xx): it is reachable
        with pytest.raises(PermanentError):
            await sender.send(NUMBER, BODY)
    assert state(sender) is BreakerState.CLOSED
    graph.post(URL).mock(return_value=httpx.Response(503, text="upstream down"))
    for _ in range(3):
        with pytest.raises(TransientError):
            await sender.send(NUMBER, BODY)
    assert state(sender) is BreakerState.OPEN


async def test_after_the_cool_down_one_probe_goes_first_then_the_backlog_at_full_speed(
    sender: GraphSender, graph: respx.MockRouter, clock: Clock
) -> None:
    graph.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    for _ in range(3):
        with pytest.raises(TransientError):
            await sender.send(NUMBER, BODY)
    clock.now += 10.0
    release, started = asyncio.Event(), asyncio.Event()

    async def slow_ok(request: httpx.Request) -> httpx.Response:
        started.set()
        await release.wait()
        return ok()

    route = graph.post(URL).mock(side_effect=slow_ok)
    tried = route.call_count  # the failed connects so far
    probe = asyncio.create_task(sender.send(NUMBER, BODY))
    await wait_until(started.is_set, what="the probe's request")
    with pytest.raises(CircuitOpen) as held:  # the others wait for the probe, briefly
        await sender.send(NUMBER, BODY)
    assert held.value.retry_after is not None
    assert held.value.retry_after <= 1.0
    release.set()
    await probe
    assert state(sender) is BreakerState.CLOSED
    await asyncio.gather(*(sender.send(NUMBER, BODY) for _ in range(20)))
    assert route.call_count == tried + 21
