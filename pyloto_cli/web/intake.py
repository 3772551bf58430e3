"""The intake role: what the webhook endpoint needs from the process it runs in.

Built by the composition root (`bootstrap.Roles.intake`) and handed to `create_app`: the sink
the webhook stores into, who to wake once something was stored, and what `/readyz` touches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pyloto_cli.domain.task import EnqueueResult, Task
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import QueueAdmin, SessionStore, TaskSink

# what an item's own data can make an encoder raise; a store's failure is none of these
_ITEM_ERRORS: Final = (ValueError, TypeError, OverflowError, RecursionError)
_log = get_logger("web")


@dataclass(slots=True)
class Intake:
    """The webhook's side of the queue: store, wake, answer readiness."""

    sink: TaskSink
    admin: QueueAdmin | None
    sessions: SessionStore
    # called after each enqueue: the in-process worker, the worker thread, worker processes
    wakers: list[Callable[[], None]] = field(default_factory=list)
    # set once the process is stopping: webhooks are answered 503 so Meta delivers them again
    draining: bool = False

    def drain(self) -> None:
        """Stop taking webhooks: from now on they are answered 503 (Meta delivers them again)."""
        if not self.draining:
            self.draining = True
            log_event(_log, "intake_draining")

    async def store(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Store a webhook's tasks, each on its own merits.

        They go in one call (one commit). If that call fails on an item's data rather than on
        the store, each task is stored alone: the others are kept, and an item no backend can
        hold is logged (`webhook_item_unstorable`) and left out, as a redelivery would fail
        the same way. A failure of the store itself is raised: the webhook answers 503.
        """
        try:
            return await self.sink.enqueue(tasks)
        except _ITEM_ERRORS as exc:
            if len(tasks) == 1:
                _unstorable(tasks[0], exc)
                return EnqueueResult()
        enqueued: list[str] = []
        duplicates: list[str] = []
        for task in tasks:
            try:
                result = await self.sink.enqueue([task])
            except _ITEM_ERRORS as exc:
                _unstorable(task, exc)
                continue
            enqueued += result.enqueued
            duplicates += result.duplicates
        return EnqueueResult(tuple(enqueued), tuple(duplicates))

    def notify(self) -> None:
        """Tell every registered worker that work was enqueued (never blocks)."""
        for wake in self.wakers:
            wake()

    async def check_ready(self) -> dict[str, Any]:
        """Touch the queue and the session store; raises if one does not answer."""
        checks: dict[str, Any] = {}
        if self.admin is not None:
            stats = await self.admin.stats()
            depth = stats.depth if stats.counts_reported else None
            checks["queue"] = {"backend": stats.backend, "depth": depth, "dead": stats.dead}
        await self.sessions.exists("__readyz__")
        checks["sessions"] = "ok"
        return checks


def _unstorable(task: Task, exc: Exception) -> None:
    log_event(
        _log,
        "webhook_item_unstorable",
        logging.ERROR,
        task_id=task.task_id,
        kind=task.kind.value,
        error=f"{type(exc).__name__}: {exc}",
    )
