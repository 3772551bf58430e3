"""The `Deduper` contract on `SqliteDeduper`, plus purging and sharing one file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pyloto_cli.adapters.dedupe.sqlite import SqliteDeduper
from pyloto_cli.adapters.sessions.sqlite import SqliteSessionStore
from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.ports import ClaimResult
from tests.contract.dedupe_contract import (
    DeduperContract,
    DeduperDurabilityContract,
    FakeClock,
    FakeClockFixtures,
    OpenDeduper,
)
from tests.contract.session_contract import KEY as SESSION_KEY
from tests.contract.session_contract import ids, user_turn


class TestSqliteDeduper(FakeClockFixtures, DeduperContract, DeduperDurabilityContract):
    """The SQLite deduper keeps the whole contract and survives a restart."""

    @pytest.fixture
    def open_deduper(self, tmp_path: Path, clock: FakeClock) -> OpenDeduper:
        return lambda: SqliteDeduper(tmp_path / "dedupe.db", clock=clock)


async def _rows(db: SqliteDatabase) -> list[str]:
    def op(conn: sqlite3.Connection) -> list[str]:
        return [row[0] for row in conn.execute("SELECT key FROM dedupe ORDER BY key")]

    return await db.run(op)


async def test_expired_rows_are_purged_now_and_then(tmp_path: Path) -> None:
    """Expired rows are deleted at most once per purge interval, not on every call."""
    clock = FakeClock()
    async with (
        SqliteDatabase(tmp_path / "shared.db") as db,
        SqliteDeduper(db, clock=clock, purge_every_s=60.0) as deduper,
    ):
        await deduper.claim("old-claim", 5.0)  # the first call purges (nothing yet)
        await deduper.mark_done("old-done", 10.0)
        await deduper.mark_done("live", 3600.0)
        clock.advance(30.0)
        assert await deduper.claim("fresh", 5.0) is ClaimResult.CLAIMED
        assert await _rows(db) == ["fresh", "live", "old-claim", "old-done"]
        clock.advance(31.0)
        await deduper.release("nothing")  # release does not purge
        assert await _rows(db) == ["fresh", "live", "old-claim", "old-done"]
        await deduper.claim("newest", 5.0)
        assert await _rows(db) == ["live", "newest"]


async def test_sessions_and_dedupe_share_one_database(tmp_path: Path) -> None:
    """Both adapters on one open SqliteDatabase: separate tables, one file, one writer."""
    async with SqliteDatabase(tmp_path / "pyloto.db", synchronous="FULL") as db:
        async with SqliteSessionStore(db) as sessions, SqliteDeduper(db) as deduper:
            assert await deduper.claim("wamid.A", 30.0) is ClaimResult.CLAIMED
            await sessions.append(SESSION_KEY, [user_turn("wamid.A")], 10)
            await deduper.mark_done("wamid.A", 3600.0)
        assert await _rows(db) == ["wamid.A"]
    async with SqliteSessionStore(tmp_path / "pyloto.db") as sessions:
        assert ids(await sessions.load(SESSION_KEY)) == ["wamid.A"]
    async with SqliteDeduper(tmp_path / "pyloto.db") as deduper:
        assert await deduper.claim("wamid.A", 30.0) is ClaimResult.DONE


async def test_a_closed_deduper_refuses_calls(tmp_path: Path) -> None:
    """After exit, calls fail loudly instead of touching a closed file."""
    async with SqliteDeduper(tmp_path / "d.db") as deduper:
        await deduper.claim("k", 1.0)
    with pytest.raises(BackendUnavailable, match="not open"):
        await deduper.claim("k", 1.0)
    with pytest.raises(BackendUnavailable, match="not open"):
        await deduper.release("k")
