"""The `DeadLetterStore` contract, on memory, Firestore (real emulator), Redis (real server) and
SQLite, plus each durable store's own behaviour (letters outlive the adapter, shared clients)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pyloto_cli.adapters.deadletters.firestore import FirestoreDeadLetterStore
from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.adapters.deadletters.redis import RedisDeadLetterStore
from pyloto_cli.adapters.deadletters.sqlite import SqliteDeadLetterStore
from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.domain.task import DeadLetter, Task, TaskKind
from pyloto_cli.ports import DeadLetterStore


def dead(n: int, dead_at: float, error: str = "PermanentError: 131026 undeliverable") -> DeadLetter:
    """A dead message task number `n`."""
    wamid = f"wamid.DEAD{n:04d}/+?#%"
    task = Task(
        task_id=wamid,
        kind=TaskKind.MESSAGE,
        conversation_key="106540352242922:US.8431092275",
        phone_number_id="106540352242922",
        received_at=1_700_000_000.0 + n,
        item={"id": wamid, "type": "text", "text": {"body": f"pedido nº {n} ✓"}},
        value={"messaging_product": "whatsapp"},
    )
    return DeadLetter(task=task, error=error, attempts=5, dead_at=dead_at)


class DeadLetterStoreContract:
    """Behaviour every `DeadLetterStore` shares; subclasses provide the `store` fixture."""

    async def test_record_then_get_round_trips(self, store: DeadLetterStore) -> None:
        """The task, error, attempts and time come back unchanged; unknown ids are None."""
        letter = dead(1, 1_700_000_100.25)
        await store.record(letter)
        assert await store.get(letter.task.task_id) == letter
        assert await store.get("wamid.unknown") is None

    async def test_list_is_oldest_first_and_limited(self, store: DeadLetterStore) -> None:
        """Whatever the recording order, listing starts with the oldest dead letter."""
        for n, at in ((1, 30.0), (2, 10.0), (3, 20.0)):
            await store.record(dead(n, at))
        assert [d.dead_at for d in await store.list()] == [10.0, 20.0, 30.0]
        assert [d.task.task_id for d in await store.list(limit=2)] == [
            dead(2, 0).task.task_id,
            dead(3, 0).task.task_id,
        ]
        assert list(await store.list(limit=0)) == []

    async def test_recording_again_replaces_the_entry(self, store: DeadLetterStore) -> None:
        """A task dead-lettered twice is listed once, with the newer error."""
        await store.record(dead(1, 10.0, error="first"))
        await store.record(dead(1, 20.0, error="second"))
        listed = await store.list()
        assert [(d.error, d.dead_at) for d in listed] == [("second", 20.0)]

    async def test_delete_and_purge(self, store: DeadLetterStore) -> None:
        """Delete reports whether the entry existed; purge counts what it removed."""
        for n in range(3):
            await store.record(dead(n, float(n)))
        assert await store.delete(dead(0, 0).task.task_id) is True
        assert await store.delete(dead(0, 0).task.task_id) is False
        assert await store.purge() == 2
        assert list(await store.list()) == []
        assert await store.purge() == 0

    async def test_concurrent_records_are_all_kept(self, store: DeadLetterStore) -> None:
        """Letters recorded at once (e.g. by several handlers) are each stored once."""
        await asyncio.gather(*(store.record(dead(n, 100.0 + n)) for n in range(20)))
        listed = await store.list()
        assert [d.task.task_id for d in listed] == [dead(n, 0).task.task_id for n in range(20)]


class TestMemoryDeadLetterStore(DeadLetterStoreContract):
    """The in-process store keeps the contract."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[DeadLetterStore]:
        async with MemoryDeadLetterStore() as store:
            yield store


@pytest.mark.firestore
class TestFirestoreDeadLetterStore(DeadLetterStoreContract):
    """The Firestore store keeps the contract, on a project of each test's own."""

    @pytest.fixture
    async def store(self, firestore_project: str) -> AsyncIterator[DeadLetterStore]:
        async with FirestoreDeadLetterStore(firestore_project) as store:
            yield store

    async def test_dead_letters_outlive_the_adapter(self, firestore_project: str) -> None:
        """A new adapter on the same project reads what the first recorded."""
        async with FirestoreDeadLetterStore(firestore_project) as first:
            await first.record(dead(1, 5.0))
        async with FirestoreDeadLetterStore(firestore_project) as second:
            assert await second.get(dead(1, 5.0).task.task_id) == dead(1, 5.0)


@pytest.mark.redis
class TestRedisDeadLetterStore(DeadLetterStoreContract):
    """The Redis store keeps the contract, under a key prefix of each test's own."""

    @pytest.fixture
    async def store(self, redis_url: str, redis_prefix: str) -> AsyncIterator[DeadLetterStore]:
        async with RedisDeadLetterStore(redis_url, prefix=redis_prefix) as store:
            yield store

    async def test_dead_letters_outlive_the_adapter(
        self, redis_url: str, redis_prefix: str
    ) -> None:
        """A new adapter with the same prefix reads what the first recorded."""
        async with RedisDeadLetterStore(redis_url, prefix=redis_prefix) as first:
            await first.record(dead(1, 5.0))
        async with RedisDeadLetterStore(redis_url, prefix=redis_prefix) as second:
            assert await second.get(dead(1, 5.0).task.task_id) == dead(1, 5.0)
            assert list(await second.list()) == [dead(1, 5.0)]

    async def test_a_borrowed_client_stays_open_and_prefixes_separate(
        self, redis_client: aioredis.Redis, redis_prefix: str
    ) -> None:
        """A shared client is the caller's to close; another prefix is another namespace."""
        async with (
            RedisDeadLetterStore(redis_client, prefix=redis_prefix) as store,
            RedisDeadLetterStore(redis_client, prefix=f"{redis_prefix}other:") as elsewhere,
        ):
            await store.record(dead(1, 5.0))
            assert list(await elsewhere.list()) == []
            assert await elsewhere.purge() == 0
        assert await redis_client.ping()
        keys = sorted([k.decode() async for k in redis_client.scan_iter(match=f"{redis_prefix}*")])
        assert keys == [
            f"{redis_prefix}{{dead_letters}}:index",
            f"{redis_prefix}{{dead_letters}}:items",
        ]

    async def test_a_decoding_client_works_too(self, redis_url: str, redis_prefix: str) -> None:
        """A borrowed client with `decode_responses=True` reads the same letters."""
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            async with RedisDeadLetterStore(client, prefix=redis_prefix) as store:
                await store.record(dead(1, 5.0))
                assert list(await store.list()) == [dead(1, 5.0)]
                assert await store.get(dead(1, 5.0).task.task_id) == dead(1, 5.0)
        finally:
            await client.aclose()

    async def test_an_unreachable_server_is_backend_unavailable(self) -> None:
        """A URL nobody answers on fails on enter, naming the address but not the password."""
        with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1/0") as raised:
            async with RedisDeadLetterStore("redis://:hunter2@127.0.0.1:1/0"):
                pass
        assert "hunter2" not in str(raised.value)


class TestSqliteDeadLetterStore(DeadLetterStoreContract):
    """The SQLite store keeps the contract, and its letters survive a reopen of the file."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[DeadLetterStore]:
        async with SqliteDeadLetterStore(tmp_path / "dead.db") as store:
            yield store

    async def test_dead_letters_outlive_the_adapter(self, tmp_path: Path) -> None:
        """A new adapter on the same file reads what the first recorded, in order."""
        path = tmp_path / "dead.db"
        async with SqliteDeadLetterStore(path, synchronous="FULL") as first:
            await first.record(dead(2, 20.0))
            await first.record(dead(1, 10.0))
        async with SqliteDeadLetterStore(str(path)) as second:
            assert list(await second.list()) == [dead(1, 10.0), dead(2, 20.0)]
            assert await second.delete(dead(1, 0).task.task_id) is True
        async with SqliteDeadLetterStore(path) as third:
            assert list(await third.list()) == [dead(2, 20.0)]

    async def test_a_shared_database_stays_open_and_keeps_other_tables(
        self, tmp_path: Path
    ) -> None:
        """A store given an open database leaves closing it to the caller, and its own table
        (`dead_letters`) apart from the queue's, sessions' and dedupe's tables."""
        async with SqliteDatabase(tmp_path / "state.db") as db:
            async with SqliteDeadLetterStore(db) as store:
                await store.record(dead(1, 5.0))
                assert await store.purge() == 1
            tables = await db.run(
                lambda conn: [
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
            )
        assert tables == ["dead_letters"]

    async def test_a_closed_store_refuses_calls(self, tmp_path: Path) -> None:
        """After exit, calls fail loudly instead of touching a closed file."""
        async with SqliteDeadLetterStore(tmp_path / "dead.db") as store:
            await store.record(dead(1, 5.0))
        with pytest.raises(BackendUnavailable, match="not open"):
            await store.list()
