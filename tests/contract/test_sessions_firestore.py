"""The `SessionStore` contract on `FirestoreSessionStore`, against the real Firestore emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.cloud import firestore

from pyloto_cli.adapters.firestore_db import FirestoreDatabase, doc_id
from pyloto_cli.adapters.sessions.firestore import FirestoreSessionStore
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.ports import SessionStore
from tests.contract.session_contract import (
    KEY,
    OpenStore,
    SessionDurabilityContract,
    SessionStoreContract,
    ids,
    user_turn,
)

pytestmark = pytest.mark.firestore


class TestFirestoreSessionStore(SessionStoreContract, SessionDurabilityContract):
    """The Firestore store keeps the whole contract; data outlives the adapter."""

    @pytest.fixture
    def open_store(self, firestore_project: str) -> OpenStore:
        return lambda: FirestoreSessionStore(firestore_project)

    @pytest.fixture
    async def store(self, open_store: OpenStore) -> AsyncIterator[SessionStore]:
        async with open_store() as store:
            yield store


async def _turn_docs(client: firestore.AsyncClient, collection: str, key: str) -> int:
    turns = client.collection(collection).document(doc_id(key)).collection("turns")
    return len([ref async for ref in turns.list_documents()])


async def test_trimmed_turns_are_deleted_not_just_hidden(firestore_project: str) -> None:
    """After appends past the bound, only `max_turns` turn documents remain stored."""
    async with (
        FirestoreDatabase(firestore_project) as db,
        FirestoreSessionStore(client=db.client, collection="s") as store,
    ):
        for i in range(4):
            await store.append(KEY, [user_turn(f"a{i}"), user_turn(f"b{i}")], max_turns=3)
        assert ids(await store.load(KEY)) == ["b2", "a3", "b3"]
        assert await _turn_docs(db.client, "s", KEY) == 3
        assert await store.delete(KEY) is True
        assert await _turn_docs(db.client, "s", KEY) == 0


async def test_a_shared_client_stays_open_after_the_store_closes(firestore_project: str) -> None:
    """A store given a client leaves closing it to the caller, and refuses calls once closed."""
    async with FirestoreDatabase(firestore_project) as db:
        async with FirestoreSessionStore(client=db.client) as store:
            await store.append(KEY, [user_turn("a")], 10)
        async with FirestoreSessionStore(client=db.client) as again:
            assert ids(await again.load(KEY)) == ["a"]
        with pytest.raises(BackendUnavailable, match="not open"):
            await store.load(KEY)


async def test_an_unreachable_emulator_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    """Start-up against a closed port fails once, naming Firestore and the address."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{unused_tcp_port}")
    with pytest.raises(BackendUnavailable, match=rf"Firestore at 127\.0\.0\.1:{unused_tcp_port}"):
        async with FirestoreSessionStore("pyloto-test"):
            pass
