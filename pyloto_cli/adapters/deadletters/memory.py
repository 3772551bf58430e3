"""Dead letters in process memory: for tests and single-process runs (lost on exit)."""

from __future__ import annotations

import builtins
from types import TracebackType
from typing import Self

from pyloto_cli.domain.task import DeadLetter


class MemoryDeadLetterStore:
    """`DeadLetterStore` in a dict keyed by task id."""

    def __init__(self) -> None:
        self._items: dict[str, DeadLetter] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def record(self, dead: DeadLetter) -> None:
        """Store `dead`, replacing an entry for the same task id."""
        self._items[dead.task.task_id] = dead

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to `limit` dead letters, oldest first."""
        return sorted(self._items.values(), key=lambda d: d.dead_at)[: max(0, limit)]

    async def get(self, task_id: str) -> DeadLetter | None:
        """The dead letter of `task_id`, or None."""
        return self._items.get(task_id)

    async def delete(self, task_id: str) -> bool:
        """Delete one; True if it existed."""
        return self._items.pop(task_id, None) is not None

    async def purge(self) -> int:
        """Delete every dead letter; returns the count."""
        count = len(self._items)
        self._items.clear()
        return count
