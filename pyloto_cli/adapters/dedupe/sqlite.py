"""Dedupe markers in an SQLite file: one row per key, a claim or a done marker, with its expiry.

Every call is one operation on the file's `SqliteDatabase` (one writer thread, group commit), run
inside a `BEGIN IMMEDIATE` transaction, so `claim` reads and writes with the write lock held:
of many concurrent claims, across processes too, exactly one wins. Expired rows count as absent
when read; now and then (every `purge_every_s` of the clock) a call also deletes up to
`purge_batch` expired rows, using the index on `expires_at`, so the table holds about a week of
done markers rather than every message ever seen.

Like `SqliteSessionStore`, the adapter owns its database when given a path, or shares an
already-open `SqliteDatabase` (which the caller closes) when given one; it creates its table on
enter.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.sqlite_db import SqliteAttachment, SqliteDatabase
from pyloto_cli.adapters.sqlite_expiry import ExpiryPurge
from pyloto_cli.ports import ClaimResult

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dedupe (
        key TEXT PRIMARY KEY,
        done INTEGER NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS dedupe_expires_at ON dedupe (expires_at)",
)

_UPSERT = """INSERT INTO dedupe (key, done, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET done = excluded.done, expires_at = excluded.expires_at"""


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")


def _claim(conn: sqlite3.Connection, key: str, now: float, ttl_s: float) -> ClaimResult:
    row = conn.execute(
        "SELECT done FROM dedupe WHERE key = ? AND expires_at > ?", (key, now)
    ).fetchone()
    if row is not None:
        return ClaimResult.DONE if row["done"] else ClaimResult.IN_PROGRESS
    conn.execute(_UPSERT, (key, 0, now + ttl_s))
    return ClaimResult.CLAIMED


class SqliteDeduper(Attached):
    """A `Deduper` on an SQLite file.

    `source` is a path (the adapter opens and closes its own `SqliteDatabase` with
    `synchronous`) or an already-open `SqliteDatabase` shared with other adapters. `clock`
    returns epoch seconds; tests pass a fake one to expire markers without sleeping.
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
        self._sql = SqliteAttachment(source, synchronous=synchronous, schema=SCHEMA, role="dedupe")
        super().__init__(self._sql)
        self._purge = ExpiryPurge("dedupe", clock, purge_every_s, purge_batch)

    async def claim(self, key: str, ttl_s: float) -> ClaimResult:
        """Claim `key` for `ttl_s` seconds unless it is done or claimed by someone else."""
        _check_ttl(ttl_s)
        now, purge = self._purge.begin()

        def op(conn: sqlite3.Connection) -> ClaimResult:
            self._purge.run(conn, now, purge)
            return _claim(conn, key, now, ttl_s)

        return await self._sql.run(op)

    async def mark_done(self, key: str, ttl_s: float) -> None:
        """Record `key` as processed for `ttl_s` seconds, replacing any claim (lazy, like the
        session append it goes with: `SqliteDatabase.run`)."""
        _check_ttl(ttl_s)
        now, purge = self._purge.begin()

        def op(conn: sqlite3.Connection) -> None:
            self._purge.run(conn, now, purge)
            conn.execute(_UPSERT, (key, 1, now + ttl_s))

        await self._sql.run(op, lazy=True)

    async def release(self, key: str) -> None:
        """Drop an unfinished claim on `key`; a done marker stays."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM dedupe WHERE key = ? AND done = 0", (key,))

        await self._sql.run(op)
