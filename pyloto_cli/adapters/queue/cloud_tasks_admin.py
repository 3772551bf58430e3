"""`QueueAdmin` for Cloud Tasks: the sink's queue counts plus the `DeadLetterStore`'s letters.

Cloud Tasks keeps no dead letters, so the handler records them in a `DeadLetterStore`; this
adapter joins the two for `/readyz` and `pyloto queue ...`. Requeueing enqueues each dead
letter's task again through the sink and deletes it from the store only once the sink stored it
(a requeue interrupted in between leaves the letter in place, never loses it). Note that Cloud
Tasks refuses a task name seen within about an hour: a letter requeued that soon after its first
enqueue is reported as a duplicate by the sink and stays in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from pyloto_cli.domain.task import DeadLetter, EnqueueResult, QueueStats, Task
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import DeadLetterStore

DEAD_COUNT_CAP = 10_000  # stats counts (and a requeue of all takes) at most this many
REQUEUE_BATCH = 100  # dead letters enqueued per call of the sink
_log = get_logger("queue.cloud_tasks_admin")


class CloudTasksStatsSink(Protocol):
    """What the admin needs of `CloudTasksSink`: enqueue and the queue's stats."""

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Store `tasks` (see `TaskSink`)."""
        ...

    async def stats(self) -> QueueStats:
        """The queue's own counts (no dead letters)."""
        ...


class CloudTasksAdmin:
    """`QueueAdmin` over a Cloud Tasks sink and a dead-letter store; it owns neither."""

    def __init__(self, sink: CloudTasksStatsSink, dead: DeadLetterStore) -> None:
        self._sink = sink
        self._dead = dead

    async def stats(self) -> QueueStats:
        """The sink's counts with `dead` from the store (counted up to `DEAD_COUNT_CAP`)."""
        queue = await self._sink.stats()
        dead = len(await self._dead.list(limit=DEAD_COUNT_CAP))
        extra = {**queue.extra, "dead_capped": dead >= DEAD_COUNT_CAP}
        return replace(queue, dead=dead, extra=extra)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        return list(await self._dead.list(limit=limit))

    async def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Enqueue dead letters again (all when `task_ids` is None); returns how many went back."""
        letters = await self._chosen(task_ids)
        requeued = 0
        for start in range(0, len(letters), REQUEUE_BATCH):
            requeued += await self._requeue(letters[start : start + REQUEUE_BATCH])
        log_event(_log, "dead_letters_requeued", requeued=requeued, chosen=len(letters))
        return requeued

    async def purge_dead(self) -> int:
        """Delete every dead letter; returns the count."""
        purged = await self._dead.purge()
        log_event(_log, "dead_letters_purged", purged=purged)
        return purged

    async def _requeue(self, letters: list[DeadLetter]) -> int:
        """Enqueue one batch; delete the letters the sink stored, keep the refused ones."""
        result = await self._sink.enqueue([letter.task for letter in letters])
        stored = set(result.enqueued)
        for task_id in result.duplicates:
            log_event(
                _log,
                "dead_letter_requeue_refused",
                logging.WARNING,
                task_id=task_id,
                reason="duplicate",
            )
        for letter in letters:
            if letter.task.task_id in stored:
                await self._dead.delete(letter.task.task_id)
        return len(stored)

    async def _chosen(self, task_ids: Sequence[str] | None) -> list[DeadLetter]:
        if task_ids is None:
            return list(await self._dead.list(limit=DEAD_COUNT_CAP))
        found = [await self._dead.get(task_id) for task_id in dict.fromkeys(task_ids)]
        return [letter for letter in found if letter is not None]
