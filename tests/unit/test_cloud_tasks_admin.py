"""`CloudTasksAdmin`: the sink's counts plus the dead-letter store; requeueing through the sink."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.adapters.queue.cloud_tasks_admin import REQUEUE_BATCH, CloudTasksAdmin
from pyloto_cli.domain.errors import TransientError
from pyloto_cli.domain.task import DeadLetter, EnqueueResult, QueueStats, Task, TaskKind
from pyloto_cli.ports import QueueAdmin


class FakeSink:
    """Stands in for `CloudTasksSink`: remembers what was enqueued, refuses names it has seen."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.names_seen: set[str] = set()
        self.failing = False

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        if self.failing:
            raise TransientError("Cloud Tasks stored 0 of 1 tasks (ServiceUnavailable)")
        self.calls.append([t.task_id for t in tasks])
        fresh = [t.task_id for t in tasks if t.task_id not in self.names_seen]
        self.names_seen.update(fresh)
        repeated = [t.task_id for t in tasks if t.task_id not in fresh]
        return EnqueueResult(enqueued=tuple(fresh), duplicates=tuple(repeated))

    async def stats(self) -> QueueStats:
        return QueueStats(
            backend="cloud_tasks", ready=2, retrying=1, oldest_age_s=4.5, extra={"capped": False}
        )


def dead(n: int, dead_at: float) -> DeadLetter:
    """A dead message task number `n`."""
    wamid = f"wamid.HBgLMTU1NTAxMDk{n:04d}"
    task = Task(
        task_id=wamid,
        kind=TaskKind.MESSAGE,
        conversation_key="106540352242922:US.8431092275",
        phone_number_id="106540352242922",
        received_at=1_700_000_000.0 + n,
        item={"id": wamid, "type": "text", "text": {"body": "hola"}},
        value={"messaging_product": "whatsapp"},
    )
    return DeadLetter(task=task, error="PermanentError: 131026", attempts=5, dead_at=dead_at)


@pytest.fixture
async def store() -> AsyncIterator[MemoryDeadLetterStore]:
    async with MemoryDeadLetterStore() as store:
        for n, at in ((1, 30.0), (2, 10.0), (3, 20.0)):
            await store.record(dead(n, at))
        yield store


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def admin(sink: FakeSink, store: MemoryDeadLetterStore) -> QueueAdmin:
    return CloudTasksAdmin(sink, store)


async def test_stats_are_the_sinks_with_the_dead_count(admin: QueueAdmin) -> None:
    """Ready/retrying/age come from Cloud Tasks, `dead` from the store."""
    stats = await admin.stats()
    assert (stats.backend, stats.ready, stats.retrying, stats.dead) == ("cloud_tasks", 2, 1, 3)
    assert stats.oldest_age_s == 4.5
    assert stats.extra == {"capped": False, "dead_capped": False}


async def test_dead_letters_are_listed_oldest_first(admin: QueueAdmin) -> None:
    """The store's order and limit pass through."""
    assert [d.dead_at for d in await admin.dead_letters()] == [10.0, 20.0, 30.0]
    assert await admin.dead_letters(limit=1) == [dead(2, 10.0)]


async def test_requeue_all_enqueues_then_deletes(
    admin: QueueAdmin, sink: FakeSink, store: MemoryDeadLetterStore
) -> None:
    """Every letter goes back to the sink, oldest first, and leaves the store."""
    assert await admin.requeue_dead() == 3
    assert sink.calls == [[dead(n, 0).task.task_id for n in (2, 3, 1)]]
    assert list(await store.list()) == []
    assert (await admin.stats()).dead == 0


async def test_requeue_chosen_ids_ignores_unknown_and_repeated_ones(
    admin: QueueAdmin, sink: FakeSink, store: MemoryDeadLetterStore
) -> None:
    """Only the named letters move; an unknown id counts for nothing; a repeat is sent once."""
    wanted = dead(3, 0).task.task_id
    assert await admin.requeue_dead([wanted, "wamid.unknown", wanted]) == 1
    assert sink.calls == [[wanted]]
    assert [d.task.task_id for d in await store.list()] == [
        dead(2, 0).task.task_id,
        dead(1, 0).task.task_id,
    ]
    assert await admin.requeue_dead([]) == 0


async def test_a_letter_the_sink_refuses_stays_in_the_store(
    admin: QueueAdmin, sink: FakeSink, store: MemoryDeadLetterStore
) -> None:
    """A task name Cloud Tasks still remembers is not stored again, so the letter is kept."""
    refused = dead(1, 0).task.task_id
    sink.names_seen.add(refused)
    assert await admin.requeue_dead() == 2
    assert [d.task.task_id for d in await store.list()] == [refused]


async def test_a_failing_sink_loses_no_letter(
    admin: QueueAdmin, sink: FakeSink, store: MemoryDeadLetterStore
) -> None:
    """If the sink cannot store the tasks, the error surfaces and every letter stays."""
    sink.failing = True
    with pytest.raises(TransientError):
        await admin.requeue_dead()
    assert len(await store.list()) == 3


async def test_requeue_goes_in_batches(sink: FakeSink) -> None:
    """Many letters go to the sink a batch at a time, all of them in the end."""
    async with MemoryDeadLetterStore() as many:
        for n in range(REQUEUE_BATCH + 5):
            await many.record(dead(n, float(n)))
        admin = CloudTasksAdmin(sink, many)
        assert await admin.requeue_dead() == REQUEUE_BATCH + 5
        assert [len(call) for call in sink.calls] == [REQUEUE_BATCH, 5]
        assert await many.purge() == 0


async def test_purge_counts_what_it_removed(
    admin: QueueAdmin, store: MemoryDeadLetterStore
) -> None:
    """Purge empties the store and reports how many letters there were."""
    assert await admin.purge_dead() == 3
    assert await admin.purge_dead() == 0
    assert list(await store.list()) == []
