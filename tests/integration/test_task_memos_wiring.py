"""The composition root gives the pipeline task memos in the deduper's backend (DEDUPE_BACKEND):
what one process memoised, the next one on the same storage reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from pyloto_cli.adapters.memos.firestore import FirestoreTaskMemos
from pyloto_cli.adapters.memos.memory import MemoryTaskMemos
from pyloto_cli.adapters.memos.redis import RedisTaskMemos
from pyloto_cli.adapters.memos.sqlite import SqliteTaskMemos
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.settings import Settings
from tests.contract.dedupe_contract import KEY

FIELDS = {"reply": "Olá! 👋", "sent.0": "wamid.OUT"}


async def test_the_memory_backend_keeps_memos_in_the_process(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        queue_backend="memory", session_store_backend="memory", dedupe_backend="memory"
    )
    async with open_roles(settings) as roles:
        pipeline = await roles.pipeline()
        assert isinstance(pipeline.memos, MemoryTaskMemos)
        assert (await roles.worker()).pipeline.memos is pipeline.memos


async def test_the_sqlite_backend_keeps_memos_in_state_db(
    make_settings: Callable[..., Settings],
) -> None:
    """On the default backends the memos share state.db (one writer thread) and outlive the
    process; the session store's backend does not decide where they go."""
    settings = make_settings(session_store_backend="memory")  # dedupe stays on SQLite
    async with open_roles(settings) as roles:
        memos = (await roles.pipeline()).memos
        assert isinstance(memos, SqliteTaskMemos)
        assert roles.sqlite.paths() == {
            settings.data_dir / "queue.db",
            settings.data_dir / "state.db",
        }
        await memos.put(KEY, FIELDS, 3600.0)
    async with SqliteTaskMemos(settings.data_dir / "state.db") as reopened:
        assert await reopened.get(KEY) == FIELDS


@pytest.mark.redis
async def test_the_redis_backend_keeps_memos_under_the_prefix(
    make_settings: Callable[..., Settings],
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    settings = make_settings(dedupe_backend="redis", redis_url=redis_url, redis_prefix=redis_prefix)
    async with open_roles(settings) as roles:
        memos = (await roles.pipeline()).memos
        assert isinstance(memos, RedisTaskMemos)
        await memos.put(KEY, FIELDS, 3600.0)
    stored = await redis_client.hgetall(f"{redis_prefix}memo:{KEY}")
    assert stored == {name.encode(): value.encode() for name, value in FIELDS.items()}


@pytest.mark.firestore
async def test_the_firestore_backend_keeps_memos_in_their_collection(
    make_settings: Callable[..., Settings], firestore_project: str
) -> None:
    settings = make_settings(dedupe_backend="firestore", google_cloud_project=firestore_project)
    async with open_roles(settings) as roles:
        memos = (await roles.pipeline()).memos
        assert isinstance(memos, FirestoreTaskMemos)
        await memos.put(KEY, FIELDS, 3600.0)
    async with FirestoreTaskMemos(firestore_project) as reopened:
        assert await reopened.get(KEY) == FIELDS
