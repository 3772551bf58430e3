"""Task memos in an SQLite file: one row per key, its fields as a JSON object, with its expiry.

`put` reads the row and writes the merged fields back inside one operation on the file's
`SqliteDatabase`, that is inside a `BEGIN IMMEDIATE` transaction holding the write lock, so
concurrent puts of different fields (from any process on the file) all keep theirs. A row past
`expires_at` counts as absent: a put after its expiry starts from nothing. Now and then (every
`purge_every_s` of the clock) a put also deletes up to `purge_batch` expired rows through the
index on `expires_at`, so records whose task never said `forget` do not pile up.

`forget` is lazy (`SqliteDatabase.run`): it comes with the rest of a finished task's
bookkeeping, and shares its commit.

Like the other SQLite stores, the adapter owns its database when given a path, or shares an
already-open `SqliteDatabase` (state.db, which the caller closes); it creates its table on
enter with `CREATE TABLE IF NOT EXISTS`, so a data dir made before the table existed gains it
in place.

Errors: a read or write the file refuses (disk full, I/O error, locked past the busy wait)
raises `TransientError` (reason `task_memos_unavailable: ...`), which the pipeline already
turns into a retry; a damaged file raises `DataFileUnusable` (a `BackendUnavailable`), as
every store on the file does; a call before enter or after exit raises `BackendUnavailable`;
a `ttl_s` that is not positive raises `ValueError`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.sqlite_db import Operation, SqliteAttachment, SqliteDatabase
from pyloto_cli.adapters.sqlite_expiry import ExpiryPurge
from pyloto_cli.domain import json_codec
from pyloto_cli.domain.errors import TransientError

T = TypeVar("T")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS task_memos (
        key TEXT PRIMARY KEY,
        fields TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS task_memos_expires_at ON task_memos (expires_at)",
)

_SELECT = "SELECT fields FROM task_memos WHERE key = ? AND expires_at > ?"
_UPSERT = """INSERT INTO task_memos (key, fields, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET fields = excluded.fields, expires_at = excluded.expires_at"""


def _read(conn: sqlite3.Connection, key: str, now: float) -> dict[str, str]:
    row = conn.execute(_SELECT, (key, now)).fetchone()
    if row is None:
        return {}
    stored = json_codec.loads(row["fields"])
    return {str(name): str(value) for name, value in stored.items()}


class SqliteTaskMemos(Attached):
    """A `TaskMemos` on an SQLite file.

    `source` is a path (the adapter opens and closes its own `SqliteDatabase` with
    `synchronous`) or an already-open `SqliteDatabase` shared with other adapters. `clock`
    returns epoch seconds; tests pass a fake one to expire records without sleeping.
    """

    def __init__(
        self,
        source: Path | str | SqliteDatabase,
        *,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        purge_every_s: float = 60.0,
        purge_batch: int = 1000,
    ) -> None:
        self._sql = SqliteAttachment(
            source, synchronous=synchronous, schema=SCHEMA, role="task memos"
        )
        super().__init__(self._sql)
        self._clock = clock
        self._purge = ExpiryPurge("task_memos", clock, purge_every_s, purge_batch)

    async def get(self, key: str) -> dict[str, str]:
        """The fields stored for `key` (empty when there are none or they expired)."""
        now = self._clock()
        return await self._run(lambda conn: _read(conn, key, now), readonly=True)

    async def put(self, key: str, fields: Mapping[str, str], ttl_s: float) -> None:
        """Merge `fields` into `key`'s record and push its expiry to `ttl_s` from now; returns
        once committed."""
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        now, purge = self._purge.begin()
        update = dict(fields)

        def op(conn: sqlite3.Connection) -> None:
            self._purge.run(conn, now, purge)
            merged = {**_read(conn, key, now), **update}
            conn.execute(_UPSERT, (key, json_codec.dumps(merged).decode(), now + ttl_s))

        await self._run(op)

    async def forget(self, key: str) -> None:
        """Drop `key`'s record (lazy: it joins the next commit)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM task_memos WHERE key = ?", (key,))

        await self._run(op, lazy=True)

    async def _run(self, op: Operation[T], *, readonly: bool = False, lazy: bool = False) -> T:
        """`op` on the file; what SQLite refuses becomes a `TransientError` for the pipeline."""
        try:
            return await self._sql.run(op, readonly=readonly, lazy=lazy)
        except sqlite3.Error as exc:
            raise TransientError(f"task_memos_unavailable: sqlite: {exc}") from exc
