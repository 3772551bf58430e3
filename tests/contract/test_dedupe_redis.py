"""The `Deduper` contract on `RedisDeduper` against a real redis-server, plus Redis specifics."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from pyloto_cli.adapters.dedupe.redis import RedisDeduper
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.ports import ClaimResult
from tests.contract.dedupe_contract import (
    KEY,
    Advance,
    DeduperContract,
    DeduperDurabilityContract,
    OpenDeduper,
)

pytestmark = pytest.mark.redis


class TestRedisDeduper(DeduperContract, DeduperDurabilityContract):
    """Redis keeps the whole contract; keys expire by the server's own clock (real sleeps)."""

    @pytest.fixture
    def advance(self) -> Advance:
        return asyncio.sleep

    @pytest.fixture
    def open_deduper(self, redis_url: str, redis_prefix: str) -> OpenDeduper:
        return lambda: RedisDeduper(redis_url, prefix=redis_prefix)


async def test_markers_carry_their_ttl_on_the_server(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """A claim lives for its short TTL, a done marker for its own (e.g. 7 days)."""
    week = 7 * 24 * 3600.0
    async with RedisDeduper(redis_client, prefix=redis_prefix) as deduper:
        assert await deduper.claim(KEY, 30.0) is ClaimResult.CLAIMED
        claim_ttl = await redis_client.pttl(f"{redis_prefix}dedupe:{KEY}")
        await deduper.mark_done(KEY, week)
        done_ttl = await redis_client.pttl(f"{redis_prefix}dedupe:{KEY}")
    assert 0 < claim_ttl <= 30_000
    assert week * 1000 - 60_000 < done_ttl <= week * 1000
    assert await redis_client.ping()  # a borrowed client stays open


async def test_one_prefix_is_one_namespace(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    """Two adapters on one prefix see each other's claims; another prefix is another namespace."""
    async with (
        RedisDeduper(redis_client, prefix=redis_prefix) as first,
        RedisDeduper(redis_client, prefix=redis_prefix) as second,
        RedisDeduper(redis_client, prefix=f"{redis_prefix}other:") as elsewhere,
    ):
        assert await first.claim(KEY, 30.0) is ClaimResult.CLAIMED
        assert await second.claim(KEY, 30.0) is ClaimResult.IN_PROGRESS
        assert await elsewhere.claim(KEY, 30.0) is ClaimResult.CLAIMED


async def test_an_unreachable_server_is_backend_unavailable() -> None:
    """A URL nobody answers on fails on enter, naming the address but not the password."""
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1/0") as raised:
        async with RedisDeduper("redis://:hunter2@127.0.0.1:1/0"):
            pass
    assert "hunter2" not in str(raised.value)


async def test_a_closed_deduper_refuses_calls(redis_url: str, redis_prefix: str) -> None:
    """After exit, calls fail loudly instead of reopening a connection."""
    async with RedisDeduper(redis_url, prefix=redis_prefix) as deduper:
        await deduper.mark_done(KEY, 30.0)
    with pytest.raises(BackendUnavailable, match="not open"):
        await deduper.claim(KEY, 30.0)
