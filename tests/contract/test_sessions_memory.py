"""The `SessionStore` contract on `MemorySessionStore`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.ports import SessionStore
from tests.contract.session_contract import KEY, SessionStoreContract, user_turn


class TestMemorySessionStore(SessionStoreContract):
    """The in-process store keeps the whole contract."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[SessionStore]:
        async with MemorySessionStore() as store:
            yield store


async def test_loaded_sessions_do_not_alias_the_stored_one() -> None:
    """Mutating a loaded session's meta dict does not change what is stored."""
    store = MemorySessionStore(clock=lambda: 42.0)
    appended = await store.append(KEY, [user_turn("a")], 10, meta={"k": "v"})
    assert appended.updated_at == 42.0
    appended.meta["k"] = "changed"
    loaded = await store.load(KEY)
    assert loaded is not None
    loaded.meta["k"] = "changed too"
    again = await store.load(KEY)
    assert again is not None
    assert again.meta == {"k": "v"}
