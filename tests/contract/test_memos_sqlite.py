"""The `TaskMemos` contract on `SqliteTaskMemos`, plus purging, sharing state.db, upgrading an
existing data dir in place, and a full disk."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from pyloto_cli.adapters.dedupe.sqlite import SqliteDeduper
from pyloto_cli.adapters.memos.sqlite import SqliteTaskMemos
from pyloto_cli.adapters.sessions.sqlite import SqliteSessionStore
from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.errors import BackendUnavailable, TransientError
from pyloto_cli.ports import ClaimResult
from tests.contract.dedupe_contract import KEY, FakeClock, FakeClockFixtures
from tests.contract.memos_contract import (
    REPLY,
    OpenMemos,
    TaskMemosContract,
    TaskMemosDurabilityContract,
)
from tests.contract.session_contract import KEY as SESSION_KEY
from tests.contract.session_contract import ids, user_turn


class TestSqliteTaskMemos(FakeClockFixtures, TaskMemosContract, TaskMemosDurabilityContract):
    """The SQLite memos keep the whole contract and survive a restart."""

    @pytest.fixture
    def open_memos(self, tmp_path: Path, clock: FakeClock) -> OpenMemos:
        return lambda: SqliteTaskMemos(tmp_path / "state.db", clock=clock)


async def _keys(db: SqliteDatabase) -> list[str]:
    def op(conn: sqlite3.Connection) -> list[str]:
        return [row[0] for row in conn.execute("SELECT key FROM task_memos ORDER BY key")]

    return await db.run(op)


async def test_expired_rows_are_purged_now_and_then(tmp_path: Path) -> None:
    """Records nobody forgot are deleted by a later put, at most once per purge interval."""
    clock = FakeClock()
    async with (
        SqliteDatabase(tmp_path / "state.db") as db,
        SqliteTaskMemos(db, clock=clock, purge_every_s=60.0) as memos,
    ):
        await memos.put("old-a", {"reply": "a"}, 5.0)  # the first put purges (nothing yet)
        await memos.put("old-b", {"reply": "b"}, 10.0)
        await memos.put("live", {"reply": "l"}, 3600.0)
        clock.advance(30.0)
        await memos.put("fresh", {"reply": "f"}, 5.0)
        assert await _keys(db) == ["fresh", "live", "old-a", "old-b"]
        clock.advance(31.0)
        assert await memos.get("old-a") == {}  # a read counts it absent but does not write
        await memos.forget("nothing")
        assert await _keys(db) == ["fresh", "live", "old-a", "old-b"]
        await memos.put("newest", {"reply": "n"}, 5.0)
        assert await _keys(db) == ["live", "newest"]


async def test_an_existing_data_dir_gains_the_table_in_place(tmp_path: Path) -> None:
    """A state.db written before task memos existed opens with them, and keeps its data."""
    path = tmp_path / "state.db"
    async with SqliteSessionStore(path) as sessions, SqliteDeduper(path) as deduper:
        await sessions.append(SESSION_KEY, [user_turn("wamid.A")], 10)
        await deduper.mark_done("wamid.A", 3600.0)
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "task_memos" not in tables
    async with (
        SqliteDatabase(path) as db,
        SqliteSessionStore(db) as sessions,
        SqliteDeduper(db) as deduper,
        SqliteTaskMemos(db) as memos,
    ):
        await memos.put("wamid.B", {"reply": REPLY}, 3600.0)
        assert ids(await sessions.load(SESSION_KEY)) == ["wamid.A"]
        assert await deduper.claim("wamid.A", 30.0) is ClaimResult.DONE
    async with SqliteTaskMemos(path) as memos:
        assert await memos.get("wamid.B") == {"reply": REPLY}


async def test_a_full_disk_is_a_transient_error_and_stores_nothing(tmp_path: Path) -> None:
    """A put the file cannot take (SQLITE_FULL) reaches the caller as the error the pipeline
    retries on; what was stored before stays, and the store works again once there is room."""

    def page_limit(limit: int) -> Callable[[sqlite3.Connection], int]:
        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute(f"PRAGMA max_page_count = {limit}").fetchone()[0])

        return op

    async with SqliteDatabase(tmp_path / "state.db") as db, SqliteTaskMemos(db) as memos:
        await memos.put(KEY, {"reply": "kept"}, 3600.0)
        pages = await db.run(lambda conn: int(conn.execute("PRAGMA page_count").fetchone()[0]))
        await db.run(page_limit(pages))
        with pytest.raises(TransientError, match=r"task_memos_unavailable: sqlite: .*full"):
            await memos.put(KEY, {"transcript": "x" * 200_000}, 3600.0)
        assert await memos.get(KEY) == {"reply": "kept"}
        await db.run(page_limit(1_000_000))
        await memos.put(KEY, {"transcript": "x" * 200_000}, 3600.0)
        assert set(await memos.get(KEY)) == {"reply", "transcript"}


async def test_closed_memos_refuse_calls(tmp_path: Path) -> None:
    async with SqliteTaskMemos(tmp_path / "state.db") as memos:
        await memos.put(KEY, {"reply": "r"}, 30.0)
    with pytest.raises(BackendUnavailable, match="not open"):
        await memos.get(KEY)
    with pytest.raises(BackendUnavailable, match="not open"):
        await memos.put(KEY, {"reply": "r"}, 30.0)
