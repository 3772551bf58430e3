"""Sessions in an SQLite file: one row per conversation, the session as JSON.

Every call is an operation on the file's `SqliteDatabase` (one writer thread, group commit), so
it runs inside a `BEGIN IMMEDIATE` transaction: `append` reads, extends and writes the row with
the file's write lock held, which keeps concurrent appends (from this process or another one on
the same file) from losing turns. A call returns once its write is committed.

The adapter either owns its database (give it a path: it opens the file on enter and closes it
on exit) or shares one the caller has already opened (give it the `SqliteDatabase`: several
adapters, e.g. sessions and dedupe, then use one file and one writer thread, and the caller
closes it after the adapters). Either way the adapter creates its table on enter.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.sqlite_db import SqliteAttachment, SqliteDatabase
from pyloto_cli.domain import json_codec
from pyloto_cli.domain.session import Session, Turn
from pyloto_cli.ports import SessionHead

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sessions (
        key TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID""",
)

_UPSERT = """INSERT INTO sessions (key, data, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at"""


def _read(conn: sqlite3.Connection, key: str) -> Session | None:
    row = conn.execute("SELECT data FROM sessions WHERE key = ?", (key,)).fetchone()
    return None if row is None else Session.from_dict(json_codec.loads(row["data"]))


# json_extract reads the meta out of the stored JSON in SQLite: the turns are not decoded
_HEADS = """SELECT key, updated_at, json_extract(data, '$.meta') AS meta FROM sessions
    ORDER BY updated_at DESC, key LIMIT ?"""
_HEAD = "SELECT key, updated_at, json_extract(data, '$.meta') AS meta FROM sessions WHERE key = ?"


def _session_head(row: sqlite3.Row) -> SessionHead:
    meta = json_codec.loads(row["meta"]) if row["meta"] else {}
    return SessionHead(
        row["key"], float(row["updated_at"]), {str(k): str(v) for k, v in meta.items()}
    )


def _heads(conn: sqlite3.Connection, limit: int) -> list[SessionHead]:
    return [_session_head(row) for row in conn.execute(_HEADS, (limit,)).fetchall()]


def _head(conn: sqlite3.Connection, key: str) -> SessionHead | None:
    row = conn.execute(_HEAD, (key,)).fetchone()
    return None if row is None else _session_head(row)


def _write(conn: sqlite3.Connection, session: Session) -> None:
    data = json_codec.dumps(session.to_dict()).decode()
    conn.execute(_UPSERT, (session.key, data, session.updated_at))


class SqliteSessionStore(Attached):
    """A `SessionStore` on an SQLite file.

    `source` is a path (the adapter opens and closes its own `SqliteDatabase` with
    `synchronous`) or an already-open `SqliteDatabase` shared with other adapters (`synchronous`
    is then the database's own, and the caller closes it). `clock` (epoch seconds) stamps
    `updated_at` on append.
    """

    def __init__(
        self,
        source: Path | str | SqliteDatabase,
        *,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sql = SqliteAttachment(
            source, synchronous=synchronous, schema=SCHEMA, role="sessions"
        )
        super().__init__(self._sql)
        self._clock = clock

    async def load(self, key: str) -> Session | None:
        """The session, or None if there is none."""
        return await self._sql.run(lambda conn: _read(conn, key))

    async def save(self, session: Session) -> None:
        """Replace the stored session."""
        await self._sql.run(lambda conn: _write(conn, session))

    async def append(
        self, key: str, turns: Sequence[Turn], max_turns: int, meta: dict[str, str] | None = None
    ) -> Session:
        """Append `turns` (creating the session), merge `meta`, keep the newest `max_turns`.

        Lazy (`SqliteDatabase.run`): it rides on the next transaction (after a reply is sent,
        nobody is waiting on it but the ack).
        """
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        new_turns, extra, now = tuple(turns), dict(meta or {}), self._clock()

        def op(conn: sqlite3.Connection) -> Session:
            current = _read(conn, key) or Session(key=key)
            updated = current.with_turns(new_turns, max_turns, now)
            if extra:
                updated = replace(updated, meta={**updated.meta, **extra})
            _write(conn, updated)
            return updated

        return await self._sql.run(op, lazy=True)

    async def delete(self, key: str) -> bool:
        """Delete; True if it existed."""
        return await self._sql.run(
            lambda conn: conn.execute("DELETE FROM sessions WHERE key = ?", (key,)).rowcount > 0
        )

    async def exists(self, key: str) -> bool:
        """True if a session is stored under `key`."""
        return await self._sql.run(
            lambda conn: (
                conn.execute("SELECT 1 FROM sessions WHERE key = ?", (key,)).fetchone() is not None
            )
        )

    async def head(self, key: str) -> SessionHead | None:
        """The session's key, last update and meta, without decoding its turns."""
        return await self._sql.read(lambda conn: _head(conn, key))

    async def list(self, limit: int = 10_000) -> Sequence[SessionHead]:
        """Up to `limit` sessions without turns, most recently updated first (one SELECT)."""
        return await self._sql.run(lambda conn: _heads(conn, limit), readonly=True)
