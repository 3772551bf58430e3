"""The `DeadLetterStore` contract, on the memory store and on Firestore (real emulator)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pyloto_cli.adapters.deadletters.firestore import FirestoreDeadLetterStore
from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.domain.task import DeadLetter, Task, TaskKind
from pyloto_cli.ports import DeadLetterStore


def dead(n: int, dead_at: float, error: str = "PermanentError: 131026 undeliverable") -> DeadLetter:
    """A dead message task number `n`."""
    wamid = f"wamid.DEAD{n:04d}/+?#%"
    task = Task(
        task_id=wamid,
        kind=TaskKind.MESSAGE,
        conversation_key="106540352242922:US.8431092275",
        phone_number_id="106540352242922",
        received_at=1_700_000_000.0 + n,
        item={"id": wamid, "type": "text", "text": {"body": f"pedido nº {n} ✓"}},
        value={"messaging_product": "whatsapp"},
    )
    return DeadLetter(task=task, error=error, attempts=5, dead_at=dead_at)


class DeadLetterStoreContract:
    """Behaviour every `DeadLetterStore` shares; subclasses provide the `store` fixture."""

    async def test_record_then_get_round_trips(self, store: DeadLetterStore) -> None:
        """The task, error, attempts and time come back unchanged; unknown ids are None."""
        letter = dead(1, 1_700_000_100.25)
        await store.record(letter)
        assert await store.get(letter.task.task_id) == letter
        assert await store.get("wamid.unknown") is None

    async def test_list_is_oldest_first_and_limited(self, store: DeadLetterStore) -> None:
        """Whatever the recording order, listing starts with the oldest dead letter."""
        for n, at in ((1, 30.0), (2, 10.0), (3, 20.0)):
            await store.record(dead(n, at))
        assert [d.dead_at for d in await store.list()] == [10.0, 20.0, 30.0]
        assert [d.task.task_id for d in await store.list(limit=2)] == [
            dead(2, 0).task.task_id,
            dead(3, 0).task.task_id,
        ]
        assert list(await store.list(limit=0)) == []

    async def test_recording_again_replaces_the_entry(self, store: DeadLetterStore) -> None:
        """A task dead-lettered twice is listed once, with the newer error."""
        await store.record(dead(1, 10.0, error="first"))
        await store.record(dead(1, 20.0, error="second"))
        listed = await store.list()
        assert [(d.error, d.dead_at) for d in listed] == [("second", 20.0)]

    async def test_delete_and_purge(self, store: DeadLetterStore) -> None:
        """Delete reports whether the entry existed; purge counts what it removed."""
        for n in range(3):
            await store.record(dead(n, float(n)))
        assert await store.delete(dead(0, 0).task.task_id) is True
        assert await store.delete(dead(0, 0).task.task_id) is False
        assert await store.purge() == 2
        assert list(await store.list()) == []
        assert await store.purge() == 0


class TestMemoryDeadLetterStore(DeadLetterStoreContract):
    """The in-process store keeps the contract."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[DeadLetterStore]:
        async with MemoryDeadLetterStore() as store:
            yield store


@pytest.mark.firestore
class TestFirestoreDeadLetterStore(DeadLetterStoreContract):
    """The Firestore store keeps the contract, on a project of each test's own."""

    @pytest.fixture
    async def store(self, firestore_project: str) -> AsyncIterator[DeadLetterStore]:
        async with FirestoreDeadLetterStore(firestore_project) as store:
            yield store

    async def test_dead_letters_outlive_the_adapter(self, firestore_project: str) -> None:
        """A new adapter on the same project reads what the first recorded."""
        async with FirestoreDeadLetterStore(firestore_project) as first:
            await first.record(dead(1, 5.0))
        async with FirestoreDeadLetterStore(firestore_project) as second:
            assert await second.get(dead(1, 5.0).task.task_id) == dead(1, 5.0)
