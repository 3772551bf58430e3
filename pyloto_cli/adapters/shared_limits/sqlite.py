"""`SharedBuckets` and `SharedBreakers` in an SQLite file: every process on one host.

Each call is one transaction on the file's `SqliteDatabase` with the write lock held, so the
read-modify-write of a bucket is atomic across the processes of `serve --workers N`. The
processes share the host's clock (`time.time`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.sqlite_db import SqliteAttachment, SqliteDatabase

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, tat REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS breakers (name TEXT PRIMARY KEY, open_until REAL NOT NULL)"
    " WITHOUT ROWID",
)
_SET_TAT = """INSERT INTO rate_buckets (key, tat) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET tat = excluded.tat"""
_SET_OPEN = """INSERT INTO breakers (name, open_until) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET open_until = max(open_until, excluded.open_until)"""


class SqliteSharedLimits(Attached):
    """Buckets and breakers in two small tables of a (shared) SQLite file."""

    def __init__(
        self,
        source: Path | str | SqliteDatabase,
        *,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sql = SqliteAttachment(
            source, synchronous=synchronous, schema=SCHEMA, role="shared limits"
        )
        super().__init__(self._sql)
        self._clock = clock

    async def take(self, key: str, interval_s: float, burst: int) -> float:
        """Take a free token, or say how long until one is (see `SharedBuckets.take`)."""

        def op(conn: sqlite3.Connection) -> float:
            now = self._clock()
            row = conn.execute("SELECT tat FROM rate_buckets WHERE key = ?", (key,)).fetchone()
            tat = float(row["tat"]) if row is not None else 0.0
            wait = tat - interval_s * (burst - 1) - now
            if wait > 0:
                return wait
            conn.execute(_SET_TAT, (key, max(tat, now) + interval_s))
            return 0.0

        return await self._sql.run(op)

    async def open_until(self, name: str) -> float:
        """Until when `name` is open (0: closed)."""

        def op(conn: sqlite3.Connection) -> float:
            row = conn.execute("SELECT open_until FROM breakers WHERE name = ?", (name,)).fetchone()
            return float(row["open_until"]) if row is not None else 0.0

        return await self._sql.run(op, readonly=True)

    async def open(self, name: str, until: float) -> None:
        """Open `name` until `until` (a later time already stored stays)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_SET_OPEN, (name, until))

        await self._sql.run(op)
