"""One SQLite file behind one writer thread, with group commit.

sqlite3 blocks, so no write runs on the event loop: every operation is a plain function of the
connection, handed to a dedicated thread (the one exception is `read`, a single-statement point
read that WAL lets run at once on the caller's thread). The thread takes everything waiting,
runs it in one transaction (one failing operation does not undo the others: the batch is then
run again with each operation in its own SAVEPOINT), commits once, and then resolves each
caller's future. Concurrent webhook requests therefore share a commit, and a caller hears back
only after its write is durable.

A `lazy` operation (the bookkeeping after a reply is sent: the session append, the done marker,
the queue's ack) does not wake the thread: it goes into the next transaction, ahead of what woke
it, or into one of its own after `lazy_wait_s` (50 ms) if nothing else comes. Its caller still
hears back only once it is committed. At a steady flow each such write saves the thread a
wake-up and a commit (and WAL pages), and an ack committed just before a lease frees the
conversation's next task for it.

The webhook's enqueue takes the same path as every other write: a burst of webhooks shares one
commit, and the event loop never blocks on the file (nor on another process's write lock).

The file is created 0600 in a 0700 dir before SQLite opens it (`pyloto_cli.private_files`):
it holds message text, and SQLite gives its -wal and -shm files the database's own mode.

WAL with `synchronous=NORMAL` survives a process crash (kill -9) but not a power loss; FULL
survives both at a much higher commit cost. Automatic checkpoints are off (they would run inside
a commit, under a request): a second thread with its own connection runs a passive checkpoint
every second while there are new commits. A passive checkpoint never takes the write lock, so
the writer keeps committing while it copies pages, and no webhook waits for it; only when the
log grows long under steady traffic does one take the write lock (see `_checkpoint`).

Several processes may share a file (`pyloto serve --workers N`). SQLite's own busy handler
sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries for another process's write lock, which is
held for well under a millisecond here: those sleeps, not the lock, would be the wait. So the
busy timeout is 0 and `BEGIN IMMEDIATE` is retried here after 50 us, doubling to 1 ms, for up
to `busy_wait_s`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from pyloto_cli.domain.errors import BackendUnavailable, DataDirUnusable, DataFileUnusable
from pyloto_cli.private_files import private_dir, private_file

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]

_CHECKPOINT_EVERY_S = 1.0
_TRUNCATE_AT_FRAMES = 16_384  # 64 MiB of 4 KiB pages
_TRUNCATE_WAIT_MS = 200
_BUSY_FIRST_SLEEP_S = 0.00005
_BUSY_MAX_SLEEP_S = 0.001
LAZY_WAIT_S = 0.05
# SQLITE_CORRUPT, SQLITE_NOTADB: the file, not the moment, is wrong
_DAMAGED = frozenset({11, 26})
_DAMAGED_ADVICE = "is damaged or not a SQLite database; restore it from a backup or move it away"


def _damaged(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DAMAGED


def _quick_check(conn: sqlite3.Connection) -> str | None:
    """What SQLite's quick_check finds wrong with the file, None when nothing: a damaged page
    is reported at start, not to the first webhook or lease that reads it (about 0.1 s for
    100 MB)."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    found = [str(row[0]) for row in rows]
    return None if found == ["ok"] else " ".join("; ".join(found).split())[:200]


def unusable(path: Path, exc: sqlite3.Error) -> DataFileUnusable:
    """The one-line error for a file that cannot be opened or read, naming it."""
    if is_busy(exc) or "locked" in str(exc):
        why = "is locked by another program"
    elif _damaged(exc):
        why = _DAMAGED_ADVICE
    else:
        why = "cannot be opened"
    return DataFileUnusable(f"sqlite: {path} {why} ({exc})")


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's SQLITE_BUSY (another connection holds a lock we need)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF == 5


def begin(conn: sqlite3.Connection, statement: str, wait_s: float) -> None:
    """Run `statement` (a BEGIN, or anything else that needs a lock another connection may
    hold), retrying SQLITE_BUSY with short sleeps for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    pause = _BUSY_FIRST_SLEEP_S
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _BUSY_MAX_SLEEP_S)


@dataclass(slots=True)
class _Job(Generic[T]):
    op: Operation[T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    readonly: bool = False


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the write happened anyway
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_Outcome = tuple[_Job[Any], Any, BaseException | None]


def _settle_all(outcomes: list[_Outcome]) -> None:
    for job, result, error in outcomes:
        _settle(job.future, result, error)


def _rolled_back() -> sqlite3.OperationalError:
    return sqlite3.OperationalError("the transaction was rolled back by SQLite")


def _failed(batch: list[_Job[Any]], error: BaseException) -> list[_Outcome]:
    return [(job, None, error) for job in batch]


def _run_one(conn: sqlite3.Connection, job: _Job[Any]) -> _Outcome:
    try:
        return job, job.op(conn), None
    except Exception as exc:  # the caller gets it
        return job, None, exc


def _run_isolated(conn: sqlite3.Connection, job: _Job[Any]) -> _Outcome:
    """`job` inside its own SAVEPOINT: its failure undoes only its own writes (unless SQLite
    rolled back the whole transaction, as it does on SQLITE_FULL: the caller checks)."""
    conn.execute("SAVEPOINT op")
    outcome = _run_one(conn, job)
    if conn.in_transaction:
        if outcome[2] is not None:
            conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
    return outcome


def _run_all_isolated(conn: sqlite3.Connection, batch: list[_Job[Any]]) -> list[_Outcome]:
    """Each job in its SAVEPOINT; if SQLite undid the whole transaction (SQLITE_FULL does),
    every job failed, those before it too: nothing of the batch is stored."""
    outcomes: list[_Outcome] = []
    for job in batch:
        outcomes.append(_run_isolated(conn, job))
        if not conn.in_transaction:
            return _failed(batch, outcomes[-1][2] or _rolled_back())
    return outcomes


class SqliteDatabase:
    """An async front for one SQLite file: `await db.run(op)` runs `op(conn)` and commits."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "NORMAL",
        schema: Sequence[str] = (),
        max_batch: int = 512,
        busy_wait_s: float = 5.0,
        lazy_wait_s: float = LAZY_WAIT_S,
    ) -> None:
        self.path = Path(path)
        self._lazy: collections.deque[_Job[Any]] = collections.deque()
        self._lazy_wait_s = lazy_wait_s
        self._synchronous = synchronous
        self._schema = tuple(schema)
        self._max_batch = max_batch
        self._busy_wait_s = busy_wait_s
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._readers: dict[int, sqlite3.Connection] = {}  # by thread: see `read`
        self.commits = 0  # transactions committed (group commit shows here)
        self.checkpoints = 0  # background checkpoints run so far
        self.truncations = 0  # of them, those that also emptied the log

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("SqliteDatabase cannot be reopened once closed")
        try:
            directory = private_dir(self.path.parent)
        except OSError as exc:
            raise DataDirUnusable.because(self.path.parent, "cannot create it", exc) from exc
        try:  # before SQLite creates it: the -wal and -shm files take the database's mode
            private_file(directory / self.path.name)
        except PermissionError as exc:
            what = f"cannot write {self.path.name}"
            raise DataDirUnusable.because(self.path.parent, what, exc) from exc
        except OSError as exc:
            raise BackendUnavailable(f"sqlite: cannot open {self.path}: {exc}") from exc
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main,
            args=(ready, loop),
            daemon=True,
            name=f"sqlite-writer:{self.path.name}",
        )
        self._thread.start()
        try:
            await ready
        except sqlite3.Error as exc:
            raise unusable(self.path, exc) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Operations handed to the writer thread and not yet taken into a transaction."""
        return self._jobs.qsize() + len(self._lazy)

    async def close(self) -> None:
        """Finish the queued work, checkpoint, close the file."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            reader.close()

    async def run(self, op: Operation[T], *, readonly: bool = False, lazy: bool = False) -> T:
        """Run `op(conn)` in the writer thread inside a transaction; return once committed.

        `op` may run more than once (the batch it shares a transaction with is run again when
        another of its operations fails), so it acts only on the connection it is given.

        A batch made only of `readonly` operations opens a deferred transaction, which takes no
        write lock: a poll that finds nothing does not contend with other processes' writers.
        A `lazy` operation does not wake the writer: it joins the next transaction, or one of
        its own within `lazy_wait_s`. The caller still hears back only once it is committed.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(op, future, loop, readonly)
        if lazy:
            self._lazy.append(job)
        else:
            self._jobs.put(job)
        try:
            return await future
        except sqlite3.DatabaseError as exc:
            if _damaged(exc):  # a damaged page found by a read: one line naming the file
                raise unusable(self.path, exc) from exc
            raise

    def _check_open(self) -> None:
        if self._closed or self._thread is None:
            raise BackendUnavailable(f"sqlite: {self.path} is not open")

    async def read(self, op: Operation[T]) -> T:
        """Run the one-statement read `op(conn)` at once, on the calling thread's own read-only
        connection, not in the writer thread.

        A point read just before a send (is the conversation still the assistant's?) is worth
        less than the trip: two thread wake-ups and a transaction of its own. In WAL mode a
        reader never waits for the writer and sees every commit made before it starts, so the
        statement takes microseconds on the calling thread. When SQLite answers busy (a
        checkpoint is resetting the log), the read goes through the writer thread instead.
        """
        self._check_open()
        try:
            return op(self._reader())
        except sqlite3.DatabaseError as exc:
            if _damaged(exc):
                raise unusable(self.path, exc) from exc
            if not is_busy(exc):
                raise
        return await self.run(op, readonly=True)

    def _reader(self) -> sqlite3.Connection:
        thread = threading.get_ident()
        reader = self._readers.get(thread)
        if reader is None:
            reader = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            reader.row_factory = sqlite3.Row
            reader.execute("PRAGMA query_only=ON")
            self._readers[thread] = reader
        return reader

    # --- the writer thread ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # timeout=0: no busy handler; `begin` waits for other processes' write locks
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        begin(conn, "PRAGMA journal_mode=WAL", self._busy_wait_s)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for statement in self._schema:
            begin(conn, statement, self._busy_wait_s)
        return conn

    def _main(self, ready: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = self._connect()
            damage = _quick_check(conn)
        except sqlite3.Error as exc:
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        if damage is not None:
            conn.close()
            error = DataFileUnusable(f"sqlite: {self.path} {_DAMAGED_ADVICE} ({damage})")
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        checkpointer = threading.Thread(
            target=self._checkpoint_loop, daemon=True, name=f"sqlite-checkpoint:{self.path.name}"
        )
        checkpointer.start()
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while True:
                batch, stop = self._drain()
                if batch:
                    self._commit(conn, batch)
                if stop:
                    break
            while self._lazy:  # those queued while the last batch ran
                self._commit(conn, self._take_lazy())
        finally:
            self._stopping.set()
            self._dirty.set()
            checkpointer.join()
            self._checkpoint(conn)
            conn.close()

    def _checkpoint_loop(self) -> None:
        """Checkpoints from a connection of its own, at most once a second (see `_checkpoint`)."""
        try:
            conn = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error:
            return
        try:
            while not self._stopping.is_set():
                self._dirty.wait()
                if self._stopping.is_set():
                    break
                self._dirty.clear()
                self._checkpoint(conn)
                self.checkpoints += 1
                self._stopping.wait(_CHECKPOINT_EVERY_S)
        finally:
            conn.close()

    def _take_lazy(self) -> list[_Job[Any]]:
        count = min(len(self._lazy), self._max_batch)  # only this thread takes from it
        return [self._lazy.popleft() for _ in range(count)]

    def _drain(self) -> tuple[list[_Job[Any]], bool]:
        """The next batch, lazy jobs first (an ack frees the next task before a lease looks),
        and whether to stop after it. A job is awaited at most `lazy_wait_s`: lazy jobs may be
        waiting for one."""
        try:
            first = self._jobs.get(timeout=self._lazy_wait_s)
        except queue.Empty:
            return self._take_lazy(), False
        batch = self._take_lazy()
        if first is None:
            return batch, True
        batch.append(first)
        while len(batch) < self._max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        """`batch` in one transaction, then its callers answered."""
        outcomes = self._run_batch(conn, batch)
        self._dirty.set()
        self._deliver(outcomes)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> list[_Outcome]:
        statement = "BEGIN" if all(job.readonly for job in batch) else "BEGIN IMMEDIATE"
        try:
            begin(conn, statement, self._busy_wait_s)
        except sqlite3.Error as exc:
            return _failed(batch, exc)
        return self._execute(conn, batch, statement)

    def _execute(
        self, conn: sqlite3.Connection, batch: list[_Job[Any]], statement: str
    ) -> list[_Outcome]:
        """`batch` in the transaction just begun with `statement`, committed (or rolled back
        if it alone failed); each job's outcome."""
        outcomes: list[_Outcome]
        try:
            if len(batch) == 1:  # nothing to isolate it from: its failure rolls back
                outcomes = [_run_one(conn, batch[0])]
                if outcomes[0][2] is None:
                    conn.execute("COMMIT")
                elif conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    conn.execute("ROLLBACK")
            else:
                outcomes = self._run_all(conn, batch, statement)
                if conn.in_transaction:
                    conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:  # the commit itself failed: nobody's write is durable
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            outcomes = _failed(batch, exc)
        return outcomes

    def _run_all(
        self, conn: sqlite3.Connection, batch: list[_Job[Any]], statement: str
    ) -> list[_Outcome]:
        """Every job of `batch`, each one's failure undoing only its own writes.

        A SAVEPOINT per job costs two more statements a job, for a failure that seldom comes.
        So the batch runs without them first; only when a job fails is the transaction rolled
        back and begun again, and the batch run again with each job in its SAVEPOINT (which
        is why an operation may run more than once, and acts only on the connection).
        """
        outcomes: list[_Outcome] = []
        for job in batch:
            outcome = _run_one(conn, job)
            if outcome[2] is not None:
                break
            outcomes.append(outcome)
        else:
            return outcomes
        if conn.in_transaction:  # SQLite may have rolled back already (disk full)
            conn.execute("ROLLBACK")
        begin(conn, statement, self._busy_wait_s)
        return _run_all_isolated(conn, batch)

    def _deliver(self, outcomes: list[_Outcome]) -> None:
        """From the writer thread: resolve each caller's future, with one wake-up per caller
        loop, not one per operation."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_settle_all, settled)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """A passive checkpoint; then, if the log is still long, a truncating one.

        A passive checkpoint never waits and never blocks the writer, but it copies only what
        was committed when it began, so under steady writes it never reaches the end of the
        log, and SQLite starts the log over only then: the -wal file, and the memory that reads
        through it, would grow as long as the traffic lasts (64 MB a minute at 200 messages a
        second here). So once the log passes `_TRUNCATE_AT_FRAMES`, a TRUNCATE checkpoint takes
        the write lock to copy the frames committed since the passive one began, and empties
        the file. The writer waits for it (`begin` retries), a few times a minute at most under
        load; it waits at most `_TRUNCATE_WAIT_MS` for readers, else it tries next time.
        """
        try:
            busy, log, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or log < _TRUNCATE_AT_FRAMES:
                return
            conn.execute(f"PRAGMA busy_timeout={_TRUNCATE_WAIT_MS}")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                self.truncations += 1
            finally:
                conn.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error:
            return


class SqliteAttachment:
    """One adapter's use of a `SqliteDatabase`: owned (opened and closed here) or shared.

    Given a path, it opens its own database on `open()` and closes it on `close()`; given an
    open `SqliteDatabase`, it only uses it (the caller closes it). `open()` runs the adapter's
    schema; `run()` refuses work before `open()` and after `close()`.
    """

    def __init__(
        self,
        source: Path | str | SqliteDatabase,
        *,
        synchronous: str,
        schema: Sequence[str],
        role: str,
    ) -> None:
        self._owned = not isinstance(source, SqliteDatabase)
        self.db = (
            source
            if isinstance(source, SqliteDatabase)
            else SqliteDatabase(source, synchronous=synchronous)
        )
        self._schema = tuple(schema)
        self._role = role
        self._open = False

    async def open(self) -> None:
        """Open the database if owned, then create the adapter's tables."""
        if self._owned:
            await self.db.__aenter__()
        try:
            await self.db.run(self._create_schema)
        except BaseException:
            if self._owned:
                await self.db.close()
            raise
        self._open = True

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for statement in self._schema:
            conn.execute(statement)

    async def close(self) -> None:
        """Stop serving calls; close the database if owned."""
        self._open = False
        if self._owned:
            await self.db.close()

    def _check_open(self) -> None:
        if not self._open:
            raise BackendUnavailable(f"sqlite {self._role}: {self.db.path} is not open")

    async def run(self, op: Operation[T], *, readonly: bool = False, lazy: bool = False) -> T:
        """`op(conn)` in the database's writer thread, committed (see `SqliteDatabase.run`)."""
        self._check_open()
        return await self.db.run(op, readonly=readonly, lazy=lazy)

    async def read(self, op: Operation[T]) -> T:
        """`op(conn)`, one statement, read at once on this thread (see `SqliteDatabase.read`)."""
        self._check_open()
        return await self.db.read(op)
