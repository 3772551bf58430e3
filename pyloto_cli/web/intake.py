"""The intake role: what the webhook endpoint needs from the process it runs in.

Built by the composition root (`bootstrap.Roles.intake`) and handed to `create_app`: the sink
the webhook stores into, who to wake once something was stored, and what `/readyz` touches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyloto_cli.ports import QueueAdmin, SessionStore, TaskSink


@dataclass(slots=True)
class Intake:
    """The webhook's side of the queue: store, wake, answer readiness."""

    sink: TaskSink
    admin: QueueAdmin | None
    sessions: SessionStore
    # called after each enqueue: the in-process worker, the worker thread, worker processes
    wakers: list[Callable[[], None]] = field(default_factory=list)

    def notify(self) -> None:
        """Tell every registered worker that work was enqueued (never blocks)."""
        for wake in self.wakers:
            wake()

    async def check_ready(self) -> dict[str, Any]:
        """Touch the queue and the session store; raises if one does not answer."""
        checks: dict[str, Any] = {}
        if self.admin is not None:
            stats = await self.admin.stats()
            checks["queue"] = {"backend": stats.backend, "depth": stats.depth, "dead": stats.dead}
        await self.sessions.exists("__readyz__")
        checks["sessions"] = "ok"
        return checks
