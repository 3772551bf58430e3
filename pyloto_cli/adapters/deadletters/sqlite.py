"""Dead letters in an SQLite file: table `dead_letters`, one row per task id.

A row holds the task as its stored JSON, the error (cut to 8 KiB), the attempts and `dead_at`
(epoch seconds, indexed for listing oldest first). The table's name keeps it apart from the
SQLite queue's own `queue_tasks`/`queue_dead`, so it can live in the same file as the sessions,
dedupe markers and queue.

Like `SqliteSessionStore`, the adapter owns its database when given a path, or shares an
already-open `SqliteDatabase` (which the caller closes) when given one; it creates its table on
enter. Every call is one operation on the database's writer thread and returns once committed.
"""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.sqlite_db import SqliteAttachment, SqliteDatabase
from pyloto_cli.domain.task import DeadLetter, Task

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dead_letters (
        task_id TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        dead_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS dead_letters_dead_at ON dead_letters (dead_at, task_id)",
)

_MAX_ERROR_CHARS = 8192
_UPSERT = """INSERT INTO dead_letters (task_id, task, error, attempts, dead_at)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (task_id) DO UPDATE SET task = excluded.task, error = excluded.error,
        attempts = excluded.attempts, dead_at = excluded.dead_at"""
_COLUMNS = "task, error, attempts, dead_at"


def _letter(row: sqlite3.Row) -> DeadLetter:
    return DeadLetter(
        task=Task.from_json(row["task"]),
        error=row["error"],
        attempts=int(row["attempts"]),
        dead_at=float(row["dead_at"]),
    )


def _record(conn: sqlite3.Connection, dead: DeadLetter) -> None:
    conn.execute(
        _UPSERT,
        (
            dead.task.task_id,
            dead.task.to_json().decode(),
            dead.error[:_MAX_ERROR_CHARS],
            dead.attempts,
            dead.dead_at,
        ),
    )


def _list(conn: sqlite3.Connection, limit: int) -> list[DeadLetter]:
    sql = f"SELECT {_COLUMNS} FROM dead_letters ORDER BY dead_at, task_id LIMIT ?"  # noqa: S608
    return [_letter(row) for row in conn.execute(sql, (limit,))]


def _get(conn: sqlite3.Connection, task_id: str) -> DeadLetter | None:
    sql = f"SELECT {_COLUMNS} FROM dead_letters WHERE task_id = ?"  # noqa: S608
    row = conn.execute(sql, (task_id,)).fetchone()
    return None if row is None else _letter(row)


class SqliteDeadLetterStore(Attached):
    """`DeadLetterStore` on an SQLite file.

    `source` is a path (the adapter opens and closes its own `SqliteDatabase` with
    `synchronous`) or an already-open `SqliteDatabase` shared with other adapters (`synchronous`
    is then the database's own, and the caller closes it).
    """

    def __init__(self, source: Path | str | SqliteDatabase, *, synchronous: str = "NORMAL") -> None:
        self._sql = SqliteAttachment(
            source, synchronous=synchronous, schema=SCHEMA, role="dead letters"
        )
        super().__init__(self._sql)

    async def record(self, dead: DeadLetter) -> None:
        """Store `dead`, replacing an entry for the same task id."""
        await self._sql.run(lambda conn: _record(conn, dead))

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to `limit` dead letters, oldest first."""
        if limit <= 0:
            return []
        return await self._sql.run(lambda conn: _list(conn, limit))

    async def get(self, task_id: str) -> DeadLetter | None:
        """The dead letter of `task_id`, or None."""
        return await self._sql.run(lambda conn: _get(conn, task_id))

    async def delete(self, task_id: str) -> bool:
        """Delete one; True if it existed."""
        return await self._sql.run(
            lambda conn: (
                conn.execute("DELETE FROM dead_letters WHERE task_id = ?", (task_id,)).rowcount > 0
            )
        )

    async def purge(self) -> int:
        """Delete every dead letter; returns the count."""
        return await self._sql.run(lambda conn: conn.execute("DELETE FROM dead_letters").rowcount)
