"""The SQLite writer: group commit, per-operation failure isolation, checkpoints off the writer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyloto_cli.adapters import sqlite_db
from pyloto_cli.adapters.sqlite_db import SqliteDatabase, begin, is_busy
from pyloto_cli.domain.errors import BackendUnavailable, DataFileUnusable
from tests.waiting import wait_until

SCHEMA = ("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT)",)


def insert(key: str, value: str = "x") -> Callable[[sqlite3.Connection], object]:
    return lambda conn: conn.execute("INSERT INTO t VALUES (?, ?)", (key, value))


async def test_one_failing_operation_does_not_undo_its_batch(tmp_path: Path) -> None:
    """A duplicate key fails alone; the other writes of the same transaction are committed."""
    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA) as db:
        await db.run(insert("a"))
        results = await asyncio.gather(
            db.run(insert("b")), db.run(insert("a")), db.run(insert("c")), return_exceptions=True
        )
        assert isinstance(results[1], sqlite3.IntegrityError)
        rows = await db.run(lambda conn: [r[0] for r in conn.execute("SELECT k FROM t ORDER BY k")])
    assert rows == ["a", "b", "c"]


async def test_an_operation_that_fails_undoes_its_own_writes(tmp_path: Path) -> None:
    """Alone in its transaction or in a batch, a failing operation leaves nothing behind."""

    def write_then_fail(key: str) -> Callable[[sqlite3.Connection], object]:
        def op(conn: sqlite3.Connection) -> object:
            conn.execute("INSERT INTO t VALUES (?, 'x')", (key,))
            raise ValueError(f"{key} failed after writing")

        return op

    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA) as db:
        with pytest.raises(ValueError, match="alone failed"):
            await db.run(write_then_fail("alone"))
        results = await asyncio.gather(
            db.run(insert("b")), db.run(write_then_fail("batched")), return_exceptions=True
        )
        assert isinstance(results[1], ValueError)
        rows = await db.run(lambda conn: [r[0] for r in conn.execute("SELECT k FROM t ORDER BY k")])
    assert rows == ["b"]


async def test_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """Committed frames reach the main file without any caller running a checkpoint."""
    path = tmp_path / "db.sqlite"
    async with SqliteDatabase(path, schema=SCHEMA) as db:
        for i in range(50):
            await db.run(insert(f"k{i}"))

        def copied() -> bool:
            probe = sqlite3.connect(path)
            try:
                busy, log, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                probe.close()
            # a background checkpoint already copied every frame when this one found none new
            return bool(log > 0 and done == log and busy == 0 and db.checkpoints > 0)

        await wait_until(copied, within=5.0, interval=0.1, what="a background checkpoint")


async def test_closed_database_refuses_work(tmp_path: Path) -> None:
    """After close, a call fails loudly instead of hanging."""
    db = SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA)
    async with db:
        await db.run(insert("a"))
    with pytest.raises(BackendUnavailable):
        await db.run(insert("b"))


async def test_readonly_operations_do_not_wait_for_another_writer(tmp_path: Path) -> None:
    """While another connection holds the write lock, a read-only poll still answers at once."""
    path = tmp_path / "db.sqlite"
    async with SqliteDatabase(path, schema=SCHEMA) as db:
        await db.run(insert("a"))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
            count = await asyncio.wait_for(
                db.run(
                    lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0], readonly=True
                ),
                timeout=1.0,
            )
            assert count == 1
            other.execute("COMMIT")
        finally:
            other.close()


def test_begin_waits_for_another_connections_write_lock_then_gives_up(tmp_path: Path) -> None:
    """SQLite's busy handler is off (timeout=0); `begin` retries SQLITE_BUSY itself."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as raised:
            other.execute("BEGIN IMMEDIATE")  # no busy handler: refused at once
        assert is_busy(raised.value)
        release = threading.Timer(0.05, lambda: holder.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        begin(other, "BEGIN IMMEDIATE", 5.0)  # waits for the holder's commit
        assert time.monotonic() - started >= 0.04
        other.execute("INSERT INTO t VALUES (1)")
        other.execute("COMMIT")
        release.join()
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            begin(other, "BEGIN IMMEDIATE", 0.05)  # never released: it gives up
        holder.execute("ROLLBACK")
        assert other.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)
    finally:
        holder.close()
        other.close()


async def test_under_steady_writes_the_log_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passive checkpoint never reaches the end of a log that is written every few ms; once
    the log is long a truncating checkpoint empties it, so the -wal file stays bounded."""
    monkeypatch.setattr(sqlite_db, "_TRUNCATE_AT_FRAMES", 256)  # 1 MiB instead of 64
    path = tmp_path / "busy.sqlite"
    big = "x" * 3000  # about a page per row
    async with SqliteDatabase(path, schema=SCHEMA) as db:
        deadline = time.monotonic() + 3.5
        i = 0
        while time.monotonic() < deadline:  # a commit every 5 ms or so
            await db.run(insert(str(i), big))
            i += 1
            await asyncio.sleep(0.005)  # the load's pace: a writer that never stops is the case
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert db.truncations >= 2
        (rows,) = await db.run(
            lambda conn: tuple(conn.execute("SELECT COUNT(*) FROM t").fetchone())
        )
    assert rows == i  # nothing written was lost to a truncation
    assert wal < i * len(big), (wal, i)  # less than the rows alone would take in the log


def keys(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT k FROM t ORDER BY k")]


async def test_a_lazy_write_waits_for_the_next_transaction_and_goes_first(tmp_path: Path) -> None:
    """It does not wake the writer; the next operation's transaction runs it, ahead of that
    operation (which sees its write), and both share one commit."""
    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA, lazy_wait_s=30.0) as db:
        lazy = asyncio.create_task(db.run(insert("lazy"), lazy=True))
        await asyncio.sleep(0.2)  # a window in which it must not commit on its own
        assert not lazy.done()
        assert db.pending == 1
        commits = db.commits
        seen = await db.run(keys)
        await lazy
        assert seen == ["lazy"]
        assert db.commits == commits + 1
        assert db.pending == 0


async def test_a_lazy_write_alone_is_committed_after_its_wait(tmp_path: Path) -> None:
    """With nothing else to join, it gets a transaction of its own within `lazy_wait_s`."""
    path = tmp_path / "db.sqlite"
    async with SqliteDatabase(path, schema=SCHEMA, lazy_wait_s=0.02) as db:
        await asyncio.wait_for(db.run(insert("alone"), lazy=True), timeout=10)
        with sqlite3.connect(path) as other:  # committed: another connection reads it
            assert keys(other) == ["alone"]


async def test_a_failing_lazy_write_fails_alone(tmp_path: Path) -> None:
    """It is isolated like any operation of a batch: its error reaches its caller only."""
    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA, lazy_wait_s=30.0) as db:
        await db.run(insert("a"))
        duplicate = asyncio.create_task(db.run(insert("a"), lazy=True))
        await asyncio.sleep(0)  # one loop turn: the task hands its write to the database
        await db.run(insert("b"))
        with pytest.raises(sqlite3.IntegrityError):
            await duplicate
        assert await db.run(keys) == ["a", "b"]


async def test_close_commits_the_lazy_writes_still_waiting(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = SqliteDatabase(path, schema=SCHEMA, lazy_wait_s=30.0)
    async with db:
        lazy = asyncio.create_task(db.run(insert("last"), lazy=True))
        await asyncio.sleep(0)  # one loop turn: the task hands its write to the database
    await asyncio.wait_for(lazy, timeout=10)
    with sqlite3.connect(path) as other:
        assert keys(other) == ["last"]


@contextlib.contextmanager
def another_writer(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection (another process, to SQLite) holding the write lock until it
    commits; closed at the end of the block."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        other.close()


def on_thread(key: str, threads: list[int]) -> Callable[[sqlite3.Connection], object]:
    """`insert(key)` that also records which thread ran it."""

    def op(conn: sqlite3.Connection) -> object:
        threads.append(threading.get_ident())
        return conn.execute("INSERT INTO t VALUES (?, 'x')", (key,))

    return op


async def _taken_by_writer(db: SqliteDatabase) -> None:
    """Wait (with a deadline) until the writer thread took every queued operation."""
    await asyncio.sleep(0)  # the tasks just created hand their operations over first
    deadline = time.monotonic() + 10
    while db.pending:
        assert time.monotonic() < deadline, "the writer thread never took the batch"
        await asyncio.sleep(0.005)


async def test_writes_wait_in_the_writer_thread_while_another_process_writes(
    tmp_path: Path,
) -> None:
    """Another connection holds the write lock: nothing blocks this loop; the writer thread
    waits for the lock, runs the writes in order, and only then do the callers hear back."""
    path = tmp_path / "db.sqlite"
    threads: list[int] = []
    async with SqliteDatabase(path, schema=SCHEMA, busy_wait_s=30.0) as db:
        with another_writer(path) as other:
            first = asyncio.create_task(db.run(on_thread("first", threads)))
            await _taken_by_writer(db)  # the writer holds its batch, waiting for the lock
            second = asyncio.create_task(db.run(on_thread("second", threads)))
            done, _ = await asyncio.wait({first, second}, timeout=0.1)  # this loop runs
            assert not done
            other.execute("COMMIT")
            await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        order = await db.run(
            lambda conn: [r[0] for r in conn.execute("SELECT k FROM t ORDER BY rowid")]
        )
    assert order == ["first", "second"]
    assert threading.get_ident() not in threads  # both ran on the writer thread


async def test_concurrent_writes_share_a_commit_on_the_writer_thread(tmp_path: Path) -> None:
    """Concurrent requests' writes go into one transaction, not one each; a failing one among
    them fails alone."""
    threads: list[int] = []
    path = tmp_path / "db.sqlite"
    async with SqliteDatabase(path, schema=SCHEMA, busy_wait_s=30.0) as db:
        await db.run(insert("taken"))
        commits = db.commits
        with another_writer(path) as other:  # holds the writer while all of them queue
            blocker = asyncio.create_task(db.run(insert("blocker")))
            await _taken_by_writer(db)
            writes = [db.run(on_thread(f"k{i}", threads)) for i in range(20)]
            gathered = asyncio.gather(*writes, db.run(insert("taken")), return_exceptions=True)
            await asyncio.sleep(0)  # one loop turn: every write is handed to the writer
            assert db.pending == 21
            other.execute("COMMIT")
            await blocker
            results = await gathered
        assert db.commits == commits + 2  # the blocker's, then one for the 21 behind it
        assert isinstance(results[-1], sqlite3.IntegrityError)
        assert len(await db.run(keys)) == 22
    assert threading.get_ident() not in threads


async def test_close_commits_a_write_made_just_before_it(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = SqliteDatabase(path, schema=SCHEMA)
    async with db:
        write = asyncio.create_task(db.run(insert("last")))
        await asyncio.sleep(0)  # it is queued when the close begins
    await asyncio.wait_for(write, timeout=10)
    with sqlite3.connect(path) as other:
        assert keys(other) == ["last"]


def count_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


async def test_a_read_runs_on_the_calling_thread_and_sees_the_last_commit(tmp_path: Path) -> None:
    """`read` answers on the caller's thread (no trip to the writer) with what is committed."""
    seen: list[str] = []

    def rows(conn: sqlite3.Connection) -> int:
        seen.append(threading.current_thread().name)
        return count_rows(conn)

    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA) as db:
        commits = db.commits
        assert await db.read(rows) == 0
        await db.run(insert("a"))
        assert await db.read(rows) == 1
        assert db.commits == commits + 1  # the reads took no transaction of the writer's
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.read(insert("b"))  # the reading connection cannot write
    assert seen == [threading.current_thread().name] * 2
    with pytest.raises(BackendUnavailable):
        await db.read(rows)


def busy_error(path: Path) -> sqlite3.OperationalError:
    """A real SQLITE_BUSY, as SQLite raises it to a connection that finds the file locked."""
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as raised:
            other.execute("BEGIN IMMEDIATE")
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        other.close()
    assert is_busy(raised.value)
    return raised.value


async def test_a_read_refused_as_busy_goes_through_the_writer_thread(tmp_path: Path) -> None:
    """When SQLite answers busy on the caller's thread (a checkpoint resetting the log), the
    read is run again in the writer thread, which waits for the lock, instead of failing."""
    path = tmp_path / "db.sqlite"
    seen: list[str] = []

    async with SqliteDatabase(path, schema=SCHEMA) as db:
        await db.run(insert("a"))
        busy = busy_error(path)

        def rows(conn: sqlite3.Connection) -> int:
            seen.append(threading.current_thread().name)
            if len(seen) == 1:
                raise busy
            return count_rows(conn)

        assert await db.read(rows) == 1
    assert seen[0] == threading.current_thread().name
    assert seen[1].startswith("sqlite-writer")


async def test_a_read_that_fails_otherwise_is_not_retried(tmp_path: Path) -> None:
    """Any other error reaches the caller as it was raised, once."""
    calls: list[int] = []

    def broken(conn: sqlite3.Connection) -> int:
        calls.append(1)
        return int(conn.execute("SELECT nope FROM t").fetchone()[0])

    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA) as db:
        with pytest.raises(sqlite3.OperationalError, match="no such column"):
            await db.read(broken)
    assert calls == [1]


async def test_a_read_that_finds_the_file_damaged_is_one_line_naming_it(tmp_path: Path) -> None:
    """SQLite's "not a database" from a read becomes the same one-line error as from the writer."""
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 300)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        sqlite3.connect(garbage).execute("SELECT 1 FROM sqlite_master").fetchone()

    def spoiled(conn: sqlite3.Connection) -> int:
        raise raised.value

    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA) as db:
        with pytest.raises(DataFileUnusable, match=r"db\.sqlite is damaged"):
            await db.read(spoiled)


async def test_a_batch_runs_once_without_savepoints_and_again_isolated_after_a_failure(
    tmp_path: Path,
) -> None:
    """A batch whose operations all succeed runs each once, with no SAVEPOINT statement; when
    one fails, the transaction is undone and the batch run again with each in its SAVEPOINT:
    the others' writes are committed once, the failing one's not at all."""
    statements: list[str] = []
    runs: list[str] = []

    def counted(key: str) -> Callable[[sqlite3.Connection], object]:
        def op(conn: sqlite3.Connection) -> object:
            runs.append(key)
            conn.set_trace_callback(statements.append)
            return conn.execute("INSERT INTO t VALUES (?, 'x')", (key,))

        return op

    async with SqliteDatabase(tmp_path / "db.sqlite", schema=SCHEMA, lazy_wait_s=30.0) as db:
        await db.run(insert("a"))
        first = asyncio.create_task(db.run(counted("b"), lazy=True))
        await asyncio.sleep(0)  # one loop turn: the task hands its write to the database
        await db.run(counted("c"))
        await first
        assert runs == ["b", "c"]
        assert not [s for s in statements if "SAVEPOINT" in s]
        runs.clear()
        kept = asyncio.create_task(db.run(counted("d"), lazy=True))
        await asyncio.sleep(0)
        with pytest.raises(sqlite3.IntegrityError):
            await db.run(insert("a"))
        await kept
        assert runs == ["d", "d"]
        assert [s for s in statements if "SAVEPOINT" in s]
        assert await db.run(keys) == ["a", "b", "c", "d"]
