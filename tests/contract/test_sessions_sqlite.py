"""The `SessionStore` contract on `SqliteSessionStore`, plus its file-specific behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyloto_cli.adapters.sessions.sqlite import SqliteSessionStore
from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.ports import SessionStore
from tests.contract.session_contract import (
    KEY,
    OpenStore,
    SessionDurabilityContract,
    SessionStoreContract,
    user_turn,
)


class TestSqliteSessionStore(SessionStoreContract, SessionDurabilityContract):
    """The SQLite store keeps the whole contract and survives a restart."""

    @pytest.fixture
    def open_store(self, tmp_path: Path) -> OpenStore:
        return lambda: SqliteSessionStore(tmp_path / "sessions.db", synchronous="FULL")

    @pytest.fixture
    async def store(self, open_store: OpenStore) -> AsyncIterator[SessionStore]:
        async with open_store() as store:
            yield store


async def test_a_shared_database_stays_open_after_the_store_closes(tmp_path: Path) -> None:
    """A store given an open database leaves closing it to the caller."""
    async with SqliteDatabase(tmp_path / "shared.db") as db:
        async with SqliteSessionStore(db) as store:
            await store.append(KEY, [user_turn("a")], 10)
        rows = await db.run(lambda conn: conn.execute("SELECT count(*) FROM sessions").fetchone())
        assert rows[0] == 1
        with pytest.raises(BackendUnavailable, match="not open"):
            await store.load(KEY)


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    """After exit, calls fail loudly instead of touching a closed file."""
    async with SqliteSessionStore(tmp_path / "s.db") as store:
        await store.append(KEY, [user_turn("a")], 10)
    with pytest.raises(BackendUnavailable, match="not open"):
        await store.append(KEY, [user_turn("b")], 10)


async def test_an_unopenable_path_is_backend_unavailable(tmp_path: Path) -> None:
    """A path SQLite cannot open names itself in a BackendUnavailable at start-up."""
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(BackendUnavailable, match=r"dir\.db"):
        async with SqliteSessionStore(tmp_path / "dir.db"):
            pass
