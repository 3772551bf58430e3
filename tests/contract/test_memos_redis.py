"""The `TaskMemos` contract on `RedisTaskMemos` against a real redis-server, plus Redis
specifics."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from pyloto_cli.adapters.memos.redis import RedisTaskMemos
from pyloto_cli.domain.errors import BackendUnavailable, TransientError
from tests.contract.dedupe_contract import KEY
from tests.contract.memos_contract import (
    Advance,
    OpenMemos,
    TaskMemosContract,
    TaskMemosDurabilityContract,
)

pytestmark = pytest.mark.redis


class TestRedisTaskMemos(TaskMemosContract, TaskMemosDurabilityContract):
    """Redis keeps the whole contract; hashes expire by the server's own clock (real sleeps)."""

    @pytest.fixture
    def advance(self) -> Advance:
        return asyncio.sleep

    @pytest.fixture
    def open_memos(self, redis_url: str, redis_prefix: str) -> OpenMemos:
        return lambda: RedisTaskMemos(redis_url, prefix=redis_prefix)


async def test_a_record_is_one_hash_with_its_ttl(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """Each put leaves the hash with the expiry it asked for; a borrowed client stays open."""
    name = f"{redis_prefix}memo:{KEY}"
    async with RedisTaskMemos(redis_client, prefix=redis_prefix) as memos:
        await memos.put(KEY, {"reply": "r"}, 30.0)
        short = await redis_client.pttl(name)
        await memos.put(KEY, {"sent.0": "wamid.X"}, 3600.0)
        long = await redis_client.pttl(name)
        assert await redis_client.hgetall(name) == {b"reply": b"r", b"sent.0": b"wamid.X"}
    assert 0 < short <= 30_000
    assert 3_540_000 < long <= 3_600_000
    assert await redis_client.ping()


async def test_a_refused_write_is_a_transient_error(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """What the server refuses reaches the caller as the error the pipeline retries on."""
    await redis_client.set(f"{redis_prefix}memo:{KEY}", "not a hash")
    async with RedisTaskMemos(redis_client, prefix=redis_prefix) as memos:
        with pytest.raises(
            TransientError, match="task_memos_unavailable: redis: WRONGTYPE"
        ) as raised:
            await memos.put(KEY, {"reply": "r"}, 30.0)
        assert KEY not in str(raised.value)  # the reason reaches logs: no raw wamid in it
        with pytest.raises(TransientError, match="task_memos_unavailable"):
            await memos.get(KEY)


async def test_an_unreachable_server_is_backend_unavailable() -> None:
    """A URL nobody answers on fails on enter, naming the address but not the password."""
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1/0") as raised:
        async with RedisTaskMemos("redis://:hunter2@127.0.0.1:1/0"):
            pass
    assert "hunter2" not in str(raised.value)


async def test_closed_memos_refuse_calls(redis_url: str, redis_prefix: str) -> None:
    async with RedisTaskMemos(redis_url, prefix=redis_prefix) as memos:
        await memos.put(KEY, {"reply": "r"}, 30.0)
    with pytest.raises(BackendUnavailable, match="not open"):
        await memos.get(KEY)


class CuttableLink:
    """A TCP proxy on loopback to the real Redis that can be cut: every connection through it
    is closed, and new ones are refused, as when the network to Redis goes down."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._writers: list[asyncio.StreamWriter] = []
        self._up = True
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def cut(self) -> None:
        self._up = False
        for writer in self._writers:
            writer.close()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_a_server_lost_after_start_is_a_transient_error(
    redis_url: str, redis_prefix: str
) -> None:
    """Redis answered at start, then the link went down: each call fails as the error the
    pipeline retries on (once redis-py's own reconnects are spent), not a ConnectionError."""
    link = CuttableLink(redis_url)
    try:
        async with RedisTaskMemos(await link.start(), prefix=redis_prefix) as memos:
            await memos.get(KEY)
            link.cut()
            with pytest.raises(TransientError, match="task_memos_unavailable: redis"):
                await memos.put(KEY, {"reply": "r"}, 30.0)
            with pytest.raises(TransientError, match="task_memos_unavailable: redis"):
                await memos.get(KEY)
            with pytest.raises(TransientError, match="task_memos_unavailable: redis"):
                await memos.forget(KEY)
    finally:
        await link.stop()
