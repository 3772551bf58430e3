"""The `SessionStore` contract on `RedisSessionStore` against a real redis-server, plus its
Redis specifics (shared clients, expiry, unreachable servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from pyloto_cli.adapters.sessions.redis import RedisSessionStore
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.domain.session import Session
from pyloto_cli.ports import SessionStore
from tests.contract.session_contract import (
    KEY,
    OpenStore,
    SessionDurabilityContract,
    SessionStoreContract,
    ids,
    user_turn,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.redis


class TestRedisSessionStore(SessionStoreContract, SessionDurabilityContract):
    """Redis keeps the whole contract and outlives the adapter."""

    @pytest.fixture
    def open_store(self, redis_url: str, redis_prefix: str) -> OpenStore:
        return lambda: RedisSessionStore(redis_url, prefix=redis_prefix)

    @pytest.fixture
    async def store(self, open_store: OpenStore) -> AsyncIterator[SessionStore]:
        async with open_store() as store:
            yield store


async def test_appends_from_separate_clients_lose_nothing(
    redis_url: str, redis_prefix: str
) -> None:
    """Writers on their own connections (as separate processes would be) keep every turn."""
    stores = [
        RedisSessionStore(redis_url, prefix=redis_prefix, clock=lambda: 7.0) for _ in range(4)
    ]
    for store in stores:
        await store.__aenter__()
    try:

        async def writer(n: int, store: RedisSessionStore) -> None:
            for i in range(10):
                await store.append(KEY, [user_turn(f"s{n}-m{i}")], max_turns=1000)

        await asyncio.gather(*(writer(n, store) for n, store in enumerate(stores)))
        stored = ids(await stores[0].load(KEY))
    finally:
        for store in stores:
            await store.__aexit__(None, None, None)
    assert sorted(stored) == sorted(f"s{n}-m{i}" for n in range(4) for i in range(10))
    for n in range(4):
        assert [m for m in stored if m.startswith(f"s{n}-")] == [f"s{n}-m{i}" for i in range(10)]


async def test_a_ttl_expires_idle_sessions(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    """With `ttl_s`, every write re-arms the expiry of both keys of the session."""
    async with RedisSessionStore(redis_client, prefix=redis_prefix, ttl_s=0.2) as store:
        await store.append(KEY, [user_turn("a")], 10)
        head_ttl = await redis_client.pttl(f"{redis_prefix}session:{{{KEY}}}")
        turns_ttl = await redis_client.pttl(f"{redis_prefix}session:{{{KEY}}}:turns")
        assert 0 < head_ttl <= 200
        assert 0 < turns_ttl <= 200

        async def expired() -> bool:
            return await store.exists(KEY) is False

        await wait_until(expired, within=5.0, what="the session's expiry")
        await store.save(Session(KEY, (user_turn("b"),)))
        assert 0 < await redis_client.pttl(f"{redis_prefix}session:{{{KEY}}}:turns") <= 200


async def test_without_a_ttl_sessions_do_not_expire(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """The default keeps sessions until deleted."""
    async with RedisSessionStore(redis_client, prefix=redis_prefix) as store:
        await store.append(KEY, [user_turn("a")], 10)
    assert await redis_client.pttl(f"{redis_prefix}session:{{{KEY}}}") == -1
    assert await redis_client.ping()  # a borrowed client stays open


async def test_an_unreachable_server_is_backend_unavailable() -> None:
    """A URL nobody answers on fails on enter, naming the address."""
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1/3"):
        async with RedisSessionStore("redis://127.0.0.1:1/3"):
            pass


async def test_a_closed_store_refuses_calls(redis_url: str, redis_prefix: str) -> None:
    """After exit, calls fail loudly instead of reopening a connection."""
    async with RedisSessionStore(redis_url, prefix=redis_prefix) as store:
        await store.append(KEY, [user_turn("a")], 10)
    with pytest.raises(BackendUnavailable, match="not open"):
        await store.load(KEY)


async def test_a_borrowed_client_that_decodes_responses_works_too(
    redis_url: str, redis_prefix: str
) -> None:
    """The composition root may share a `decode_responses=True` client; replies are str then."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with RedisSessionStore(client, prefix=redis_prefix, clock=lambda: 5.5) as store:
            appended = await store.append(KEY, [user_turn("a", text="olá")], 10, meta={"k": "v"})
            assert appended == Session(KEY, (user_turn("a", text="olá"),), 5.5, {"k": "v"})
            assert await store.load(KEY) == appended
    finally:
        await client.aclose()
