"""Now-and-then deletion of expired rows, for SQLite tables keyed by `key` with an `expires_at`.

Reads already count an expired row as absent, so the deletion only keeps the table small: a
write deletes up to `batch` expired rows (through the index on `expires_at`) at most once every
`every_s` of the clock, not on every call.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


class ExpiryPurge:
    """When to purge `table` and how; one per adapter, read and moved on its event loop."""

    def __init__(self, table: str, clock: Callable[[], float], every_s: float, batch: int) -> None:
        # `table` is the adapter's own constant, never input
        self._sql = (
            f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table}"  # noqa: S608
            " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)"
        )
        self._clock = clock
        self._every_s = every_s
        self._batch = batch
        self._next = float("-inf")

    def begin(self) -> tuple[float, bool]:
        """Now, and whether the write about to run purges (which moves the next purge on)."""
        now = self._clock()
        purge = now >= self._next
        if purge:
            self._next = now + self._every_s
        return now, purge

    def run(self, conn: sqlite3.Connection, now: float, purge: bool) -> None:
        """Inside the write's transaction: delete the expired rows if this write purges."""
        if purge:
            conn.execute(self._sql, (now, self._batch))
