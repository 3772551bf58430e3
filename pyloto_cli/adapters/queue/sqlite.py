"""The embedded queue: one SQLite file in WAL mode that several processes can share.

Live tasks (ready, leased, waiting for a retry) sit in `queue_tasks`; dead letters have their
own table, so the lease query never reads past them. `seq` orders tasks (FIFO). `head` marks
the oldest live task of each conversation; it is set and moved in the same transactions that
insert and delete tasks, and only a head can be leased, so a conversation never has two
leased tasks (but for the followers the head's holder takes with `lease_followers`). A partial
index over the heads keeps `lease` cheap however long a conversation's backlog is, and
(conversation_key, seq) finds the next head when one is acked or dead-lettered.

Every operation runs in the `SqliteDatabase` writer thread inside `BEGIN IMMEDIATE`, which
serializes writers across processes: two processes cannot lease the same task, nor two tasks
of one conversation. There is no in-memory lock map. A lease records its owner process
(`owner.ProcessOwner`: host, pid, start time); a lease looks, at most every `owner_check_s`,
for leases whose owner process on this host has ended (a `kill -9`, a crash) and releases
them at once, so the next lease takes those tasks again, attempt counted, without waiting out
the lease time. A lease of a process on another host expires as before. Time comes from the
caller's clock and is passed into each operation.

Lease tokens: a lease is honoured while its token is the task's current token. Expiry only
makes the task leasable again; until another worker leases it, the late worker's ack, nack or
renew still succeeds (the work is done, and refusing it would cause a needless redelivery).
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from pyloto_cli.adapters.queue.owner import ProcessOwner, is_gone, this_process
from pyloto_cli.adapters.sqlite_db import Operation, SqliteAttachment, SqliteDatabase
from pyloto_cli.domain.errors import StaleLeaseError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import (
    DeadLetter,
    EnqueueResult,
    FailureKind,
    Leased,
    NackOutcome,
    QueueStats,
    Task,
    read_stored,
)
from pyloto_cli.logs import get_logger, log_event

_log = get_logger("queue.sqlite")

T = TypeVar("T")

# how often a lease looks for leases of ended processes: recovery after a crash takes at most
# this plus a poll, and the look (a read of the few owners) costs nothing in between
OWNER_CHECK_S = 0.5
_SYNCHRONOUS = frozenset({"NORMAL", "FULL", "EXTRA"})

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queue_tasks (
        seq INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL UNIQUE,
        conversation_key TEXT NOT NULL,
        head INTEGER NOT NULL,
        payload BLOB NOT NULL,
        enqueued_at REAL NOT NULL,
        available_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_token TEXT,
        lease_expires REAL,
        last_error TEXT,
        previous_failure TEXT,
        lease_owner TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS queue_tasks_conversation ON queue_tasks (conversation_key, seq)",
    "CREATE INDEX IF NOT EXISTS queue_tasks_heads ON queue_tasks (seq) WHERE head = 1",
    """CREATE TABLE IF NOT EXISTS queue_dead (
        seq INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL UNIQUE,
        conversation_key TEXT NOT NULL,
        payload BLOB NOT NULL,
        error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        dead_at REAL NOT NULL
    )""",
)

_INSERT = """
INSERT OR IGNORE INTO queue_tasks
    (task_id, conversation_key, head, payload, enqueued_at, available_at, last_error)
SELECT ?1, ?2, NOT EXISTS (SELECT 1 FROM queue_tasks WHERE conversation_key = ?2), ?3, ?4, ?4, ?5
"""
_LEASABLE = """
SELECT seq, task_id, conversation_key, payload, attempts, lease_token, previous_failure
FROM queue_tasks
WHERE head = 1 AND available_at <= :now AND (lease_expires IS NULL OR lease_expires <= :now)
ORDER BY seq LIMIT :limit
"""
_FOLLOWERS = """
SELECT seq, task_id, conversation_key, payload, attempts, available_at, lease_expires,
       previous_failure
FROM queue_tasks WHERE conversation_key = ? AND seq > ? ORDER BY seq LIMIT ?
"""
_PROMOTE = """
UPDATE queue_tasks SET head = 1
WHERE seq = (SELECT MIN(seq) FROM queue_tasks WHERE conversation_key = ?)
"""
_OWNERS_INDEX = (
    "CREATE INDEX IF NOT EXISTS queue_tasks_owners ON queue_tasks (lease_owner)"
    " WHERE lease_owner IS NOT NULL"
)
_OWNERS = "SELECT DISTINCT lease_owner FROM queue_tasks WHERE lease_owner IS NOT NULL"
_RELEASE_OWNER = """
UPDATE queue_tasks SET lease_expires = MIN(lease_expires, :now), lease_owner = NULL
WHERE lease_owner = :tag
"""
_STATS = """
SELECT
    COALESCE(SUM(leased), 0),
    COALESCE(SUM(NOT leased AND (attempts > 0 OR available_at > :now)), 0),
    COUNT(*),
    MIN(enqueued_at)
FROM (
    SELECT attempts, available_at, enqueued_at,
           (lease_token IS NOT NULL AND lease_expires > :now) AS leased
    FROM queue_tasks
)
"""


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a queue file made by an older version up to this schema (tasks keep waiting)."""
    columns = {row["name"] for row in conn.execute("PRAGMA table_info(queue_tasks)")}
    if "previous_failure" not in columns:
        conn.execute("ALTER TABLE queue_tasks ADD COLUMN previous_failure TEXT")
    if "lease_owner" not in columns:
        conn.execute("ALTER TABLE queue_tasks ADD COLUMN lease_owner TEXT")
    conn.execute(_OWNERS_INDEX)


def _owners(conn: sqlite3.Connection) -> list[str]:
    """The owners of the leases held now (few: one per worker process)."""
    return [row[0] for row in conn.execute(_OWNERS)]


def _release_owner(conn: sqlite3.Connection, tag: str, now: float) -> int:
    """Make every lease `tag` holds leasable now (tokens kept: the retake counts the attempt)."""
    return int(conn.execute(_RELEASE_OWNER, {"tag": tag, "now": now}).rowcount)


def _insert(conn: sqlite3.Connection, row: tuple[str, str, bytes, float, str | None]) -> bool:
    """Insert (task_id, conversation_key, payload, now, last_error) unless the id is live."""
    return conn.execute(_INSERT, row).rowcount == 1


def _enqueue(conn: sqlite3.Connection, tasks: Sequence[Task], now: float) -> EnqueueResult:
    enqueued: list[str] = []
    duplicates: list[str] = []
    for task in tasks:
        dead = conn.execute("SELECT 1 FROM queue_dead WHERE task_id = ?", (task.task_id,))
        row = (task.task_id, task.conversation_key, task.to_json(), now, None)
        if dead.fetchone() is None and _insert(conn, row):
            enqueued.append(task.task_id)
        else:
            duplicates.append(task.task_id)
    return EnqueueResult(enqueued=tuple(enqueued), duplicates=tuple(duplicates))


@dataclass(slots=True)
class _Leasing:
    """What one lease transaction did: the new leases, those of them taken over from an
    expired lease, and the stored tasks it dead-lettered because they cannot be read."""

    owner: str
    leased: list[Leased] = field(default_factory=list)
    retaken: list[Leased] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _readable(conn: sqlite3.Connection, row: sqlite3.Row, now: float, did: _Leasing) -> Task | None:
    """The task of `row`; None once a row that holds no task is dead-lettered (attempt 1)."""
    task, problem = read_stored(row["task_id"], row["conversation_key"], row["payload"])
    if problem is None:
        return task
    _bury(conn, row, problem, now, attempts=row["attempts"] + 1)
    did.unreadable.append((row["task_id"], problem))
    return None


def _lease(
    conn: sqlite3.Connection, limit: int, lease_s: float, now: float, owner: str
) -> _Leasing:
    """Lease up to `limit` heads, dead-lettering any that holds no task."""
    did = _Leasing(owner=owner)
    for row in conn.execute(_LEASABLE, {"now": now, "limit": limit}).fetchall():
        task = _readable(conn, row, now, did)
        if task is None:
            continue
        did.leased.append(_grant(conn, row, task, now + lease_s, did.owner))
        if row["lease_token"] is not None:
            did.retaken.append(did.leased[-1])
    return did


def _any_leasable(conn: sqlite3.Connection, now: float) -> bool:
    """Whether `_lease` would find anything (a read: no write lock)."""
    row = conn.execute(_LEASABLE, {"now": now, "limit": 1}).fetchone()
    return row is not None


def _grant(
    conn: sqlite3.Connection, row: sqlite3.Row, task: Task, expires: float, owner: str
) -> Leased:
    """Lease the task of `row` to `owner` until `expires` with a new token, counting the attempt."""
    token = secrets.token_hex(16)
    attempt = row["attempts"] + 1
    conn.execute(
        "UPDATE queue_tasks SET attempts = ?, lease_token = ?, lease_expires = ?, lease_owner = ?"
        " WHERE seq = ?",
        (attempt, token, expires, owner, row["seq"]),
    )
    return Leased(task, token, attempt, expires, FailureKind.parse(row["previous_failure"]))


def _followers(
    conn: sqlite3.Connection,
    lease: Leased,
    window_s: float,
    limit: int,
    lease_s: float,
    now: float,
    did: _Leasing,
) -> list[Leased]:
    """Lease the available tasks right behind `lease` in its conversation, within the window."""
    head = _owned(conn, lease)
    rows = conn.execute(_FOLLOWERS, (head["conversation_key"], head["seq"], limit)).fetchall()
    last = lease.task.received_at + window_s
    leased: list[Leased] = []
    for row in rows:
        task = _readable(conn, row, now, did)
        if task is None:
            continue
        busy = row["lease_expires"] is not None and row["lease_expires"] > now
        if busy or row["available_at"] > now or task.received_at > last:
            break
        leased.append(_grant(conn, row, task, now + lease_s, did.owner))
    return leased


def _owned(conn: sqlite3.Connection, lease: Leased) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM queue_tasks WHERE task_id = ? AND lease_token = ?",
        (lease.task.task_id, lease.token),
    ).fetchone()
    if row is None:
        raise StaleLeaseError(f"lease on task {lease.task.task_id} is no longer held")
    return row


def _remove(conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    conn.execute("DELETE FROM queue_tasks WHERE seq = ?", (row["seq"],))
    conn.execute(_PROMOTE, (row["conversation_key"],))


def _bury(
    conn: sqlite3.Connection, row: sqlite3.Row, error: str, now: float, attempts: int | None = None
) -> None:
    _remove(conn, row)
    tries = row["attempts"] if attempts is None else attempts
    conn.execute(
        "INSERT INTO queue_dead (task_id, conversation_key, payload, error, attempts, dead_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (row["task_id"], row["conversation_key"], row["payload"], error, tries, now),
    )


def _requeue(conn: sqlite3.Connection, task_ids: Sequence[str] | None, now: float) -> int:
    if task_ids is None:
        rows = conn.execute("SELECT * FROM queue_dead ORDER BY seq").fetchall()
    else:
        found = (
            conn.execute("SELECT * FROM queue_dead WHERE task_id = ?", (i,)).fetchone()
            for i in task_ids
        )
        rows = sorted((r for r in found if r is not None), key=lambda r: r["seq"])
    count = 0
    for row in rows:
        args = (row["task_id"], row["conversation_key"], row["payload"], now, row["error"])
        if _insert(conn, args):
            conn.execute("DELETE FROM queue_dead WHERE seq = ?", (row["seq"],))
            count += 1
    return count


def _stats(conn: sqlite3.Connection, now: float) -> tuple[int, int, int, float | None, int]:
    leased, retrying, live, oldest = conn.execute(_STATS, {"now": now}).fetchone()
    (dead,) = conn.execute("SELECT COUNT(*) FROM queue_dead").fetchone()
    return int(leased), int(retrying), int(live), oldest, int(dead)


def _log_unreadable(did: _Leasing) -> None:
    for task_id, reason in did.unreadable:
        log_event(_log, "task_dead_lettered", logging.WARNING, task_id=task_id, reason=reason)


class SqliteMessageQueue:
    """`MessageQueue` + `QueueAdmin` on one SQLite file, safe to share between processes.

    `source` is a path (the queue opens and closes its own `SqliteDatabase` with
    `synchronous`, NORMAL or FULL) or an open `SqliteDatabase` shared with other adapters
    (its own `synchronous` applies, and the caller closes it). `clock` gives epoch seconds.
    `owner` is recorded with the leases taken (this process by default); leases of owners
    that have ended are looked for at most every `owner_check_s` seconds.
    """

    def __init__(
        self,
        source: Path | str | SqliteDatabase,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.time,
        synchronous: str = "NORMAL",
        owner: ProcessOwner | None = None,
        owner_check_s: float = OWNER_CHECK_S,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._owner = owner or this_process()
        self._owner_check_s = owner_check_s
        self._owners_checked = -math.inf  # monotonic time of the last look
        if not isinstance(source, SqliteDatabase) and synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}: {synchronous!r}")
        self._sql = SqliteAttachment(
            source, synchronous=synchronous.upper(), schema=_SCHEMA, role="queue"
        )
        self.db = self._sql.db
        self._found_work = False  # the last lease found something

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self.db.path

    async def __aenter__(self) -> Self:
        await self._sql.open()
        await self._run(_add_missing_columns)
        log_event(_log, "queue_opened", logging.DEBUG, backend="sqlite", path=str(self.path))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop taking calls (they raise BackendUnavailable); close the file if it is ours."""
        await self._sql.close()

    async def _run(self, op: Operation[T], *, readonly: bool = False, lazy: bool = False) -> T:
        return await self._sql.run(op, readonly=readonly, lazy=lazy)

    # --- MessageQueue ------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Store `tasks` in one transaction; returns once committed (shared group commit)."""
        batch, now = list(tasks), self._clock()
        return await self._run(lambda conn: _enqueue(conn, batch, now))

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        """Lease the oldest leasable head of each conversation, FIFO, up to `max_items`."""
        if max_items <= 0:
            return []
        now = self._clock()
        await self._release_gone_owners(now)
        # a lock-free look first, unless the last lease found work (then this one likely will
        # too, and the look would be one more round trip): an idle poll never takes the write
        # lock other processes need
        if not self._found_work and not await self._run(
            lambda conn: _any_leasable(conn, now), readonly=True
        ):
            return []
        owner = self._owner.tag
        did = await self._run(lambda conn: _lease(conn, max_items, lease_s, now, owner))
        leased = did.leased
        self._found_work = bool(leased or did.unreadable)
        _log_unreadable(did)
        for lease in did.retaken:  # a worker died or stalled past its lease
            log_event(
                _log,
                "queue_lease_expired",
                logging.WARNING,
                task_id=lease.task.task_id,
                attempt=lease.attempt,
            )
        return leased

    async def _release_gone_owners(self, now: float) -> None:
        """Release the leases of owner processes that have ended (a read, and a write only
        when one has); at most every `owner_check_s`."""
        if time.monotonic() - self._owners_checked < self._owner_check_s:
            return
        self._owners_checked = time.monotonic()
        tags = await self._run(_owners, readonly=True)
        for tag in tags:
            owner = ProcessOwner.parse(tag)
            if owner is None or tag == self._owner.tag or not is_gone(owner):
                continue
            count = await self._run(functools.partial(_release_owner, tag=tag, now=now))
            self._found_work = self._found_work or count > 0
            log_event(
                _log,
                "queue_lease_owner_gone",
                logging.WARNING,
                backend="sqlite",
                owner_pid=owner.pid,
                released=count,
            )

    async def renew(self, lease: Leased, lease_s: float) -> Leased:
        """Extend the lease from now; StaleLeaseError if the token is no longer current."""
        expires = self._clock() + lease_s

        def op(conn: sqlite3.Connection) -> None:
            row = _owned(conn, lease)
            conn.execute(
                "UPDATE queue_tasks SET lease_expires = ? WHERE seq = ?", (expires, row["seq"])
            )

        await self._run(op)
        return replace(lease, expires_at=expires)

    async def ack(self, lease: Leased) -> None:
        """Remove the task; the next task of its conversation becomes leasable.

        Lazy (`SqliteDatabase.run`): committed with the next transaction, ahead of the lease
        that then finds the conversation's next task, or within 50 ms on its own.
        """
        await self._run(lambda conn: _remove(conn, _owned(conn, lease)), lazy=True)

    async def nack(
        self,
        lease: Leased,
        error: str,
        delay_s: float | None = None,
        failure: FailureKind | None = None,
    ) -> NackOutcome:
        """Retry after `delay_s` (or the policy's delay), or dead-letter once attempts are spent."""
        now = self._clock()
        if self._policy.exhausted(lease.attempt):
            await self._run(lambda conn: _bury(conn, _owned(conn, lease), error, now))
            return NackOutcome.DEAD
        delay = delay_s if delay_s is not None else self._policy.delay(lease.attempt)

        def op(conn: sqlite3.Connection) -> None:
            row = _owned(conn, lease)
            conn.execute(
                "UPDATE queue_tasks SET available_at = ?, lease_token = NULL, lease_expires = NULL,"
                " lease_owner = NULL, last_error = ?, previous_failure = ? WHERE seq = ?",
                (now + delay, error, failure and failure.value, row["seq"]),
            )

        await self._run(op)
        return NackOutcome.RETRY

    async def defer(self, lease: Leased, delay_s: float, reason: str) -> None:
        """Put the task back for `delay_s`, giving this attempt back; never dead-letters."""
        available = self._clock() + delay_s

        def op(conn: sqlite3.Connection) -> None:
            row = _owned(conn, lease)
            conn.execute(
                "UPDATE queue_tasks SET available_at = ?, attempts = MAX(attempts - 1, 0),"
                " lease_token = NULL, lease_expires = NULL, lease_owner = NULL, last_error = ?"
                " WHERE seq = ?",
                (available, reason, row["seq"]),
            )

        await self._run(op)

    async def dead_letter(self, lease: Leased, error: str) -> None:
        """Dead-letter now, keeping the payload, the error and the attempt count."""
        now = self._clock()
        await self._run(lambda conn: _bury(conn, _owned(conn, lease), error, now))

    async def lease_followers(
        self, lease: Leased, window_s: float, max_items: int, lease_s: float
    ) -> list[Leased]:
        """Lease the available tasks right behind `lease` in its conversation, within the window."""
        limit, now, did = max(0, max_items), self._clock(), _Leasing(owner=self._owner.tag)
        followers = await self._run(
            lambda conn: _followers(conn, lease, window_s, limit, lease_s, now, did)
        )
        _log_unreadable(did)
        return followers

    # --- QueueAdmin --------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """ready = never tried and available; retrying = tried before or delayed."""
        now = self._clock()
        leased, retrying, live, oldest, dead = await self._run(lambda conn: _stats(conn, now))
        extra: dict[str, Any] = {"path": str(self.path), "commits": self.db.commits}
        return QueueStats(
            backend="sqlite",
            ready=live - leased - retrying,
            leased=leased,
            retrying=retrying,
            dead=dead,
            oldest_age_s=None if oldest is None else max(0.0, now - oldest),
            extra=extra,
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""

        def op(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            sql = (
                "SELECT task_id, conversation_key, payload, error, attempts, dead_at"
                " FROM queue_dead ORDER BY seq LIMIT ?"
            )
            return conn.execute(sql, (max(0, limit),)).fetchall()

        rows = await self._run(op)
        return [
            DeadLetter(
                read_stored(r["task_id"], r["conversation_key"], r["payload"])[0],
                r["error"],
                r["attempts"],
                r["dead_at"],
            )
            for r in rows
        ]

    async def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Queue dead letters again at the end of their conversations, attempts reset to 0."""
        ids, now = None if task_ids is None else list(task_ids), self._clock()
        count = await self._run(lambda conn: _requeue(conn, ids, now))
        log_event(_log, "queue_dead_requeued", backend="sqlite", count=count)
        return count

    async def purge_dead(self) -> int:
        """Delete every dead letter."""
        count = await self._run(lambda conn: conn.execute("DELETE FROM queue_dead").rowcount)
        log_event(_log, "queue_dead_purged", backend="sqlite", count=count)
        return int(count)
