"""Send pacing and breaker state shared by processes, on SQLite (one host) and Redis.

Each test opens two adapters on one backing store: they stand for two processes.
"""

from __future__ import annotations

import contextlib
import itertools
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
        waits = []
        for i in range(8):
            granted, wait = await (one if i % 2 else two).take("number:1", interval, 2, 60.0)
            assert granted
            waits.append(wait)
    # the first two are free (the burst); each later one is due one interval after the last,
    # whichever process took it (the calls take a little time, so due times shrink a little)
    assert waits[0] == waits[1] == 0.0
    for earlier, later in itertools.pairwise(waits[1:]):
        assert interval - 0.02 < later - earlier < interval + 0.001
    assert waits[-1] > 5 * interval - 0.1


async def test_a_wait_past_the_limit_reserves_nothing(open_pair: OpenPair) -> None:
    async with open_pair() as (one, two):
        assert (await one.take("number:2", 10.0, 1, 0.5))[0]
        granted, wait = await two.take("number:2", 10.0, 1, 0.5)
        assert not granted
        assert 9.0 < wait <= 10.0
        again_granted, again_wait = await two.take("number:2", 10.0, 1, 0.5)
        assert not again_granted
        assert again_wait <= wait  # the refusal reserved nothing: the wait did not grow
        assert (await one.take("number:other", 10.0, 1, 0.5)) == (True, 0.0)


async def test_a_breaker_opened_in_one_process_stops_calls_in_the_other(
    open_pair: OpenPair,
) -> None:
    async with open_pair() as (one, two):
        opener = SharedBreaker(CircuitBreaker(2, 30.0), one, "llm", 30.0, refresh_s=0.02)
        other = SharedBreaker(CircuitBreaker(2, 30.0), two, "llm", 30.0, refresh_s=0.02)
        graph = SharedBreaker(CircuitBreaker(2, 30.0), two, "graph", 30.0, refresh_s=0.02)
        async with opener, other, graph:
            assert other.allow()
            opener.record_failure()
            opener.record_failure()  # the second failure in a row opens it here ...
            assert opener.state is BreakerState.OPEN
            await wait_until(lambda: not other.allow(), within=5.0, what="the other refuses")
            assert other.state is BreakerState.OPEN  # ... and there, with no failure of its own
            assert other.local.state is BreakerState.CLOSED
            assert graph.allow()  # another breaker's name is its own
