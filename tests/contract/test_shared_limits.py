"""Send pacing and breaker state shared by processes, on SQLite (one host) and Redis.

Each test opens two adapters on one backing store: they stand for two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.adapters.shared_limits.redis import RedisSharedLimits
from pyloto_cli.adapters.shared_limits.sqlite import SqliteSharedLimits
from pyloto_cli.domain.breaker import BreakerState, CircuitBreaker
from pyloto_cli.pipeline.shared_breaker import SharedBreaker
from tests.waiting import wait_until

OpenPair = Callable[[], contextlib.AbstractAsyncContextManager[tuple[Any, Any]]]


@pytest.fixture(params=["sqlite", "redis"])
def open_pair(request: pytest.FixtureRequest, tmp_path: Path) -> OpenPair:
    @contextlib.asynccontextmanager
    async def sqlite_pair() -> AsyncIterator[tuple[Any, Any]]:
        path = tmp_path / "state.db"
        async with SqliteSharedLimits(path) as one, SqliteSharedLimits(path) as two:
            yield one, two

    @contextlib.asynccontextmanager
    async def redis_pair() -> AsyncIterator[tuple[Any, Any]]:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        async with (
            RedisSharedLimits(url, prefix=prefix) as one,
            RedisSharedLimits(url, prefix=prefix) as two,
        ):
            yield one, two

    return sqlite_pair if request.param == "sqlite" else redis_pair


async def test_two_processes_take_turns_in_one_bucket(open_pair: OpenPair) -> None:
    interval = 0.05  # 20/s, a burst of 2
    async with open_pair() as (one, two):
        assert await one.take("number:1", interval, 2) == 0.0
        assert await two.take("number:1", interval, 2) == 0.0  # the burst: both free
        wait = await one.take("number:1", interval, 2)
        assert 0.0 < wait <= interval  # the next is due one interval after the first
        again = await two.take("number:1", interval, 2)
        assert 0.0 < again <= wait  # the refusal took nothing: the wait did not grow
        assert await two.take("number:other", interval, 2) == 0.0  # a bucket per key


async def test_a_token_is_taken_once_it_is_due(open_pair: OpenPair) -> None:
    interval = 0.05
    async with open_pair() as (one, two):
        assert await one.take("number:2", interval, 1) == 0.0
        wait = await two.take("number:2", interval, 1)
        assert wait > 0.0
        taken = await wait_until_taken(two, "number:2", interval)
        assert taken >= 1
        assert await one.take("number:2", interval, 1) > 0.0  # and then the next waits again


async def wait_until_taken(limits: Any, key: str, interval: float) -> int:
    """Ask until a token is taken; how many refusals came first."""
    refusals = 0
    while (wait := await limits.take(key, interval, 1)) > 0:
        refusals += 1
        await asyncio.sleep(wait)  # the bucket says when; nothing else to wait for
    return refusals + 1


async def test_a_breaker_opened_in_one_process_stops_calls_in_the_other(
    open_pair: OpenPair,
) -> None:
    async with open_pair() as (one, two):
        opener = SharedBreaker(CircuitBreaker(2, 30.0), one, "llm", refresh_s=0.02)
        other = SharedBreaker(CircuitBreaker(2, 30.0), two, "llm", refresh_s=0.02)
        graph = SharedBreaker(CircuitBreaker(2, 30.0), two, "graph", refresh_s=0.02)
        async with opener, other, graph:
            assert other.allow()
            opener.record_failure()
            opener.record_failure()  # the second failure in a row opens it here ...
            assert opener.state is BreakerState.OPEN
            await wait_until(lambda: not other.allow(), within=5.0, what="the other refuses")
            assert other.state is BreakerState.OPEN  # ... and there, with no failure of its own
            assert other.local.state is BreakerState.CLOSED
            assert graph.allow()  # another breaker's name is its own
