"""The SQLite queue shared with a real second process, and its group commit.

Process B is the project's Python running a few lines that lease from the same file. The
ordering and lease rules live in SQL (under BEGIN IMMEDIATE), so they hold across processes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.adapters.queue import sqlite as sqlite_queue
from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue
from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.errors import StaleLeaseError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import Leased
from tests.contract.queue_contract import FakeClock, ids, make_task
from tests.waiting import poll_until

LEASE_S = 30.0
DEADLINE_S = 20.0

# Process B: lease what it can, print [[task_id, token, attempt], ...]; with "hold", keep the
# leases (never ack) until it is killed.
LEASER = """
import asyncio, json, sys
from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue
from pyloto_cli.domain.retry import RetryPolicy

async def main(path: str, hold: bool) -> None:
    async with SqliteMessageQueue(path, RetryPolicy()) as queue:
        leases = await queue.lease(10, 30.0)
        print(json.dumps([[l.task.task_id, l.token, l.attempt] for l in leases]), flush=True)
        if hold:
            sys.stdin.readline()

asyncio.run(main(sys.argv[1], sys.argv[2] == "hold"))
"""


async def lease_in_other_process(path: Path) -> list[list[str]]:
    """Run process B once (it exits holding its leases); what it leased."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LEASER,
        str(path),
        "once",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    if proc.returncode != 0:
        pytest.fail(f"process B failed ({proc.returncode}): {err.decode()}")
    leased: list[list[str]] = json.loads(out)
    return leased


async def hold_in_other_process(path: Path) -> tuple[asyncio.subprocess.Process, list[list[Any]]]:
    """Start process B, which keeps what it leased until it is killed; it and what it leased."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LEASER,
        str(path),
        "hold",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    leased: list[list[Any]] = json.loads(await asyncio.wait_for(proc.stdout.readline(), DEADLINE_S))
    return proc, leased


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())  # real time, shared with process B, moved on by hand


@pytest.fixture
async def queue(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SqliteMessageQueue]:
    # every lease looks for leases of ended processes (not at most every half second)
    path = tmp_path / "queue.db"
    async with SqliteMessageQueue(path, RetryPolicy(), clock=clock, owner_check_s=0) as queue:
        yield queue


async def test_other_process_waits_for_a_held_conversation_but_takes_others(
    queue: SqliteMessageQueue,
) -> None:
    """While A leases c1's first task, a live B gets c2 but not c1's next; after A's ack, another
    B gets it; that B exits holding it, so A takes it back at once, and not the live B's."""
    await queue.enqueue([make_task("c1-m1", "c1"), make_task("c1-m2", "c1")])
    await queue.enqueue([make_task("c2-m1", "c2")])
    [held] = await queue.lease(1, LEASE_S)
    assert held.task.task_id == "c1-m1"
    live, leased = await hold_in_other_process(queue.path)
    try:
        assert [row[0] for row in leased] == ["c2-m1"]
        assert [row[0] for row in await lease_in_other_process(queue.path)] == []
        await queue.ack(held)
        assert [row[0] for row in await lease_in_other_process(queue.path)] == ["c1-m2"]
        [retaken] = await queue.lease(10, LEASE_S)  # its holder has exited; the live B's stays
        assert (retaken.task.task_id, retaken.attempt) == ("c1-m2", 2)
    finally:
        await kill(live)


async def test_an_ack_joins_the_next_lease_which_then_takes_the_conversations_next_task(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The ack is lazy: it waits for the next transaction and runs ahead of the lease in it, so
    that lease finds the conversation's next task, and the two share one commit."""
    async with (
        SqliteDatabase(tmp_path / "queue.db", lazy_wait_s=30.0) as db,
        SqliteMessageQueue(db, RetryPolicy(), clock=clock) as queue,
    ):
        await queue.enqueue([make_task("c1-m1", "c1"), make_task("c1-m2", "c1")])
        [first] = await queue.lease(10, LEASE_S)
        commits = db.commits
        ack = asyncio.create_task(queue.ack(first))
        await asyncio.sleep(0.2)  # a window in which the lazy ack must not commit on its own
        assert not ack.done()
        assert ids(await queue.lease(10, LEASE_S)) == ["c1-m2"]
        await ack
        assert db.commits == commits + 1


async def test_lease_of_a_killed_process_returns_at_once(queue: SqliteMessageQueue) -> None:
    """kill -9 while B holds a lease: A cannot take it while B lives; once B is killed, A takes
    it at once (its lease time is far off), and B's token is dead."""
    await queue.enqueue([make_task("m1", "c1")])
    proc, leased = await hold_in_other_process(queue.path)
    try:
        [[task_id, token, attempt]] = leased
        assert (task_id, attempt) == ("m1", 1)
        assert await queue.lease(10, LEASE_S) == []
    finally:
        await kill(proc)
    assert proc.returncode == -signal.SIGKILL
    [lease] = await queue.lease(10, LEASE_S)
    assert (lease.task.task_id, lease.attempt) == ("m1", 2)
    with pytest.raises(StaleLeaseError):
        await queue.ack(Leased(lease.task, token, 1, 0.0))
    await queue.ack(lease)


async def test_concurrent_enqueues_share_a_commit(queue: SqliteMessageQueue) -> None:
    """50 enqueues waiting together are committed in one transaction, not 50."""

    entered = threading.Event()

    def hold_writer_until_all_wait(conn: sqlite3.Connection) -> None:
        entered.set()
        poll_until(lambda: queue.db.pending >= 50, within=DEADLINE_S, interval=0.001)

    before = queue.db.commits
    gate = asyncio.ensure_future(queue.db.run(hold_writer_until_all_wait))
    assert await asyncio.to_thread(entered.wait, DEADLINE_S)
    results = await asyncio.gather(
        *(queue.enqueue([make_task(f"t{i}", f"c{i}")]) for i in range(50))
    )
    await gate
    assert [r.enqueued for r in results] == [(f"t{i}",) for i in range(50)]
    assert queue.db.commits - before <= 2  # the gate's transaction and one for all 50
    assert ids(await queue.lease(100, LEASE_S)) == [f"t{i}" for i in range(50)]


@pytest.mark.parametrize(("synchronous", "pragma_value"), [("NORMAL", 1), ("FULL", 2)])
async def test_file_is_wal_with_the_given_synchronous_setting(
    tmp_path: Path, synchronous: str, pragma_value: int
) -> None:
    """WAL journal, and `synchronous` as configured (FULL survives power loss)."""
    path = tmp_path / "queue.db"
    async with SqliteMessageQueue(path, RetryPolicy(), synchronous=synchronous) as queue:
        value = await queue.db.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert value == pragma_value
        mode = await queue.db.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"


def test_unknown_synchronous_setting_is_refused(tmp_path: Path) -> None:
    """Only real pragma values reach the SQL."""
    with pytest.raises(ValueError, match="synchronous"):
        SqliteMessageQueue(tmp_path / "q.db", RetryPolicy(), synchronous="OFF; DROP TABLE x")


async def test_an_idle_poll_does_not_wait_for_another_process_writing(
    queue: SqliteMessageQueue, tmp_path: Path
) -> None:
    """Another process holds the write lock: a poll that finds nothing answers at once (its
    look is lock-free), while a poll with work waits for the lock and then leases."""
    other = sqlite3.connect(tmp_path / "queue.db", timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert await asyncio.wait_for(queue.lease(10, LEASE_S), 1.0) == []
        other.execute("COMMIT")
        await queue.enqueue([make_task("a", "c1"), make_task("b", "c2")])
        assert ids(await queue.lease(1, LEASE_S)) == ["a"]
        other.execute("BEGIN IMMEDIATE")
        leasing = asyncio.create_task(queue.lease(10, LEASE_S))
        await asyncio.sleep(0.1)  # a window in which it may not finish: the lock is held
        assert not leasing.done()  # it found work last time: it went straight for the lock
        other.execute("COMMIT")
        assert ids(await asyncio.wait_for(leasing, 2.0)) == ["b"]
        assert await asyncio.wait_for(queue.lease(10, LEASE_S), 1.0) == []
        other.execute("BEGIN IMMEDIATE")  # and after a lease found nothing, it looks first
        assert await asyncio.wait_for(queue.lease(10, LEASE_S), 1.0) == []
        other.execute("COMMIT")
    finally:
        other.close()


async def test_an_enqueue_commits_on_the_writer_thread_and_waits_there_for_another_process(
    queue: SqliteMessageQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook's enqueue is committed by the writer thread, never on the caller's loop;
    while another process holds the write lock it waits there, and the caller's loop goes on
    running meanwhile."""
    threads: list[int] = []
    real = sqlite_queue._enqueue

    def recording(conn: sqlite3.Connection, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return real(conn, *args)

    monkeypatch.setattr(sqlite_queue, "_enqueue", recording)
    await queue.enqueue([make_task("here", "c1")])
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    other = sqlite3.connect(tmp_path / "queue.db", timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        waiting = asyncio.create_task(queue.enqueue([make_task("later", "c1")]))
        await asyncio.sleep(0.1)  # a window in which it may not finish: the lock is held
        assert not waiting.done()
        other.execute("COMMIT")
        result = await asyncio.wait_for(waiting, DEADLINE_S)
    finally:
        other.close()
    assert result.enqueued == ("later",)
    assert threads[1] != threading.get_ident()
    assert ids(await queue.lease(10, LEASE_S)) == ["here"]  # one conversation: its head
