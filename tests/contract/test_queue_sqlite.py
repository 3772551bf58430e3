"""The queue contract against `SqliteMessageQueue`, durability included."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyloto_cli.adapters.queue.owner import ProcessOwner, this_process
from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue
from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import FailureKind
from tests.contract.queue_contract import (
    ContractQueue,
    DurableQueueContract,
    FakeClock,
    MakeQueue,
    MakeQueueOfGoneOwner,
    Spoil,
    make_task,
)


def ended_process() -> ProcessOwner:
    """An owner whose process has ended: this pid as a process started earlier had it (the
    record a killed worker leaves once its pid is reused; a pid nobody has is gone too)."""
    me = this_process()
    return ProcessOwner(me.host, me.pid, me.started - 3600)


async def spoil_row(queue: ContractQueue, task_id: str) -> None:
    assert isinstance(queue, SqliteMessageQueue)
    sql = "UPDATE queue_tasks SET payload = ? WHERE task_id = ?"
    await queue.db.run(lambda conn: conn.execute(sql, (b"\xff{not a task", task_id)))


class TestSqliteQueue(DurableQueueContract):
    """SQLite queue on a fresh file per test; each `make_queue()` opens that same file."""

    @pytest.fixture
    def spoil(self) -> Spoil:
        return spoil_row

    @pytest.fixture
    def make_queue(self, policy: RetryPolicy, clock: FakeClock, tmp_path: Path) -> MakeQueue:
        def make() -> ContractQueue:
            return SqliteMessageQueue(tmp_path / "queue.db", policy, clock=clock)

        return make

    @pytest.fixture
    def make_queue_of_gone_owner(
        self, policy: RetryPolicy, clock: FakeClock, tmp_path: Path
    ) -> MakeQueueOfGoneOwner:
        def make() -> ContractQueue:
            path = tmp_path / "queue.db"
            return SqliteMessageQueue(path, policy, clock=clock, owner=ended_process())

        return make


class TestSqliteQueueOnSharedDatabase(DurableQueueContract):
    """The queue on a `SqliteDatabase` it does not own (one file and writer for all stores)."""

    @pytest.fixture
    def spoil(self) -> Spoil:
        return spoil_row

    @pytest.fixture
    async def database(self, tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
        async with SqliteDatabase(tmp_path / "pyloto.db") as database:
            yield database

    @pytest.fixture
    def make_queue(
        self, policy: RetryPolicy, clock: FakeClock, database: SqliteDatabase
    ) -> MakeQueue:
        def make() -> ContractQueue:
            return SqliteMessageQueue(database, policy, clock=clock)

        return make

    @pytest.fixture
    def make_queue_of_gone_owner(
        self, policy: RetryPolicy, clock: FakeClock, database: SqliteDatabase
    ) -> MakeQueueOfGoneOwner:
        def make() -> ContractQueue:
            return SqliteMessageQueue(database, policy, clock=clock, owner=ended_process())

        return make

    async def test_closing_the_queue_leaves_the_shared_database_open(
        self, make_queue: MakeQueue, database: SqliteDatabase
    ) -> None:
        """The caller owns a shared database; the queue's close does not end it."""
        async with make_queue():
            pass
        assert await database.run(lambda conn: conn.execute("SELECT 1").fetchone()[0]) == 1


async def test_a_queue_file_from_before_the_failure_kind_column_opens_and_keeps_its_tasks(
    tmp_path: Path,
) -> None:
    """Upgrading pyloto leaves the waiting tasks of an older queue.db leasable."""
    path, policy = tmp_path / "queue.db", RetryPolicy(base_s=0.0, jitter=0.0)
    async with SqliteMessageQueue(path, policy) as queue:
        await queue.enqueue([make_task("m1", "c1")])
    with sqlite3.connect(path) as conn:  # as an older version left it
        conn.execute("ALTER TABLE queue_tasks DROP COLUMN previous_failure")
    async with SqliteMessageQueue(path, policy) as queue:
        [lease] = await queue.lease(1, 30.0)
        assert (lease.task.task_id, lease.previous_failure) == ("m1", None)
        await queue.nack(lease, "read timeout", delay_s=0, failure=FailureKind.AMBIGUOUS_SEND)
        [again] = await queue.lease(1, 30.0)
        assert again.previous_failure is FailureKind.AMBIGUOUS_SEND
