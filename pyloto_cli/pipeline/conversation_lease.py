"""One task per conversation at a time on a queue that does not order them (Cloud Tasks).

Cloud Tasks may run two quick messages of one user at the same moment, each from the same
history. Before a task runs, its handler takes the conversation's lease: a claim in the dedupe
store under `conversation-lease:<conversation key>`, which every backend makes atomic across
processes (SQLite's write lock, a Redis `SET NX`, a Firestore `create()`). A handler that finds
the lease held polls for it, up to `wait_s`; the lease is released when the task is settled, and
expires after `ttl_s` should its holder die.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pyloto_cli.ports import ClaimResult, Deduper

LEASE_PREFIX = "conversation-lease:"
FIRST_POLL_S = 0.02
MAX_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class ConversationLease:
    """Takes and releases conversation leases in a `Deduper`."""

    deduper: Deduper
    wait_s: float
    ttl_s: float
    clock: Callable[[], float] = field(default=time.monotonic)

    @contextlib.asynccontextmanager
    async def hold(self, conversation_key: str) -> AsyncIterator[bool]:
        """Hold the conversation's lease for the block; yields False (and holds nothing) when
        another holder kept it for all of `wait_s`."""
        key = f"{LEASE_PREFIX}{conversation_key}"
        acquired = await self._acquire(key)
        try:
            yield acquired
        finally:
            if acquired:
                await asyncio.shield(self.deduper.release(key))

    async def _acquire(self, key: str) -> bool:
        deadline = self.clock() + self.wait_s
        poll = FIRST_POLL_S
        while True:
            if await self.deduper.claim(key, self.ttl_s) is ClaimResult.CLAIMED:
                return True
            left = deadline - self.clock()
            if left <= 0:
                return False
            await asyncio.sleep(min(poll, left))  # the holder gives no signal: poll its claim
            poll = min(poll * 2, MAX_POLL_S)
