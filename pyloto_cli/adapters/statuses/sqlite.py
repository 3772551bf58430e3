"""Delivery statuses in SQLite: in state.db beside the SQLite sessions and dedupe markers (one
writer thread, shared commits), never in the queue's file (statuses arrive ~3x per sent
message). `INSERT OR IGNORE` on (wamid, status) makes `record` idempotent across processes."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.sqlite_db import SqliteAttachment, SqliteDatabase
from pyloto_cli.logs import get_logger
from pyloto_cli.ports import DeliveryStatus

from .common import log_status

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS message_statuses (
        message_id TEXT NOT NULL,
        status TEXT NOT NULL,
        ts INTEGER NOT NULL,
        phone_number_id TEXT NOT NULL,
        recipient TEXT,
        error_code INTEGER,
        error_title TEXT,
        callback_data TEXT,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (message_id, status)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS message_statuses_by_status ON message_statuses (status, ts)",
)

_COLUMNS = (
    "message_id, status, ts, phone_number_id, recipient, error_code, error_title, callback_data"
)


def _row(row: sqlite3.Row) -> DeliveryStatus:
    return DeliveryStatus(
        message_id=row["message_id"],
        status=row["status"],
        timestamp=row["ts"],
        phone_number_id=row["phone_number_id"],
        recipient=row["recipient"],
        error_code=row["error_code"],
        error_title=row["error_title"],
        callback_data=row["callback_data"],
    )


class SqliteStatusStore(Attached):
    """`StatusStore` on an embedded SQLite file (durable, shared by processes on one host).

    `source` is a path (its own database) or an open `SqliteDatabase` shared with the sessions
    and dedupe stores (one writer thread, shared commits; the caller closes it).
    """

    def __init__(
        self,
        source: Path | str | SqliteDatabase,
        *,
        synchronous: str = "NORMAL",
        logger: logging.Logger | None = None,
    ) -> None:
        self._sql = SqliteAttachment(
            source, synchronous=synchronous, schema=SCHEMA, role="statuses"
        )
        super().__init__(self._sql)
        self._log = logger or get_logger("statuses.sqlite")

    async def record(self, status: DeliveryStatus) -> bool:
        """Store `status`; False if this (wamid, status) was already recorded."""

        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO message_statuses ({_COLUMNS}, recorded_at)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    status.message_id,
                    status.status,
                    status.timestamp,
                    status.phone_number_id,
                    status.recipient,
                    status.error_code,
                    status.error_title,
                    status.callback_data,
                    time.time(),
                ),
            )
            return cursor.rowcount == 1

        stored = await self._sql.run(op)
        if stored:
            log_status(self._log, status)
        return stored

    async def get(self, message_id: str) -> list[DeliveryStatus]:
        """Every status of `message_id`, oldest first."""

        def op(conn: sqlite3.Connection) -> list[DeliveryStatus]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM message_statuses WHERE message_id = ?"  # noqa: S608
                " ORDER BY ts, recorded_at",
                (message_id,),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._sql.run(op)

    async def failed(self, limit: int = 100) -> list[DeliveryStatus]:
        """The newest `failed` statuses first."""

        def op(conn: sqlite3.Connection) -> list[DeliveryStatus]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM message_statuses WHERE status = 'failed'"  # noqa: S608
                " ORDER BY ts DESC, recorded_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._sql.run(op)
