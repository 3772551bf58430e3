"""The in-process queue: the same leases, order and dead letters as SQLite, in dicts.

Used by unit tests, `replay` and single-process runs where losing the queue on exit is fine.
Every method does its work without awaiting in between, so each is atomic on the event loop
and no lock is needed.

Lease tokens: a lease is honoured while its token is the task's current token. Expiry only
makes the task leasable again; until another worker leases it, the late worker's ack, nack or
renew still succeeds (the work is done, and refusing it would cause a needless redelivery).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from pyloto_cli.domain.errors import BackendUnavailable, StaleLeaseError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import (
    DeadLetter,
    EnqueueResult,
    FailureKind,
    Leased,
    NackOutcome,
    QueueStats,
    Task,
)
from pyloto_cli.logs import get_logger, log_event

_log = get_logger("queue.memory")


@dataclass(slots=True)
class _Entry:
    """A live task: ready, leased, or waiting for a retry."""

    seq: int
    task: Task
    enqueued_at: float
    available_at: float
    attempts: int = 0
    token: str | None = None
    expires_at: float | None = None
    failure: FailureKind | None = None  # how the last nacked attempt failed

    def live_lease(self, now: float) -> bool:
        return self.token is not None and self.expires_at is not None and self.expires_at > now

    def leasable(self, now: float) -> bool:
        return self.available_at <= now and not self.live_lease(now)

    def grant(self, now: float, lease_s: float) -> Leased:
        """Lease it until `now + lease_s` with a new token, counting the attempt."""
        self.attempts += 1
        self.token = secrets.token_hex(16)
        self.expires_at = now + lease_s
        return Leased(self.task, self.token, self.attempts, self.expires_at, self.failure)


class MemoryMessageQueue:
    """`MessageQueue` + `QueueAdmin` in memory; one leased task per conversation (and followers)."""

    def __init__(self, policy: RetryPolicy, *, clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self._clock = clock
        self._seq = 0
        self._live: dict[str, _Entry] = {}
        self._lines: dict[str, deque[str]] = {}  # conversation key -> live task ids, oldest first
        self._dead: dict[str, DeadLetter] = {}  # insertion order is death order
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("MemoryMessageQueue cannot be reopened once closed")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop everything; later calls raise BackendUnavailable."""
        self._closed = True
        self._live.clear()
        self._lines.clear()
        self._dead.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable("memory queue is closed")

    # --- MessageQueue ------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Store `tasks`; ids already live or dead are reported as duplicates."""
        self._check_open()
        now = self._clock()
        enqueued: list[str] = []
        duplicates: list[str] = []
        for task in tasks:
            if task.task_id in self._live or task.task_id in self._dead:
                duplicates.append(task.task_id)
                continue
            self._append(_Entry(self._next_seq(), task, enqueued_at=now, available_at=now))
            enqueued.append(task.task_id)
        return EnqueueResult(enqueued=tuple(enqueued), duplicates=tuple(duplicates))

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        """Lease the oldest leasable head of each conversation, FIFO, up to `max_items`."""
        self._check_open()
        now = self._clock()
        heads = (self._live[line[0]] for line in self._lines.values())
        ready = sorted((e for e in heads if e.leasable(now)), key=lambda e: e.seq)
        leased: list[Leased] = []
        for entry in ready[: max(0, max_items)]:
            if entry.token is not None:
                log_event(
                    _log,
                    "queue_lease_expired",
                    logging.WARNING,
                    task_id=entry.task.task_id,
                    attempt=entry.attempts,
                )
            leased.append(entry.grant(now, lease_s))
        return leased

    async def renew(self, lease: Leased, lease_s: float) -> Leased:
        """Extend the lease from now; StaleLeaseError if the token is no longer current."""
        entry = self._owned(lease)
        entry.expires_at = self._clock() + lease_s
        return replace(lease, expires_at=entry.expires_at)

    async def ack(self, lease: Leased) -> None:
        """Remove the task; the next task of its conversation becomes leasable."""
        entry = self._owned(lease)
        self._remove(entry)

    async def nack(
        self,
        lease: Leased,
        error: str,
        delay_s: float | None = None,
        failure: FailureKind | None = None,
    ) -> NackOutcome:
        """Retry after `delay_s` (or the policy's delay), or dead-letter once attempts are spent."""
        entry = self._owned(lease)
        if self._policy.exhausted(entry.attempts):
            self._bury(entry, error)
            return NackOutcome.DEAD
        delay = delay_s if delay_s is not None else self._policy.delay(entry.attempts)
        entry.available_at = self._clock() + delay
        entry.token = entry.expires_at = None
        entry.failure = failure
        return NackOutcome.RETRY

    async def defer(self, lease: Leased, delay_s: float, reason: str) -> None:
        """Put the task back for `delay_s`, giving this attempt back; never dead-letters."""
        entry = self._owned(lease)
        entry.attempts = max(0, entry.attempts - 1)
        entry.available_at = self._clock() + delay_s
        entry.token = entry.expires_at = None

    async def dead_letter(self, lease: Leased, error: str) -> None:
        """Dead-letter now, keeping the payload, the error and the attempt count."""
        self._bury(self._owned(lease), error)

    async def lease_followers(
        self, lease: Leased, window_s: float, max_items: int, lease_s: float
    ) -> list[Leased]:
        """Lease the available tasks right behind `lease` in its conversation, within the window."""
        head = self._owned(lease)
        now = self._clock()
        line = self._lines[head.task.conversation_key]
        after = list(line)[line.index(head.task.task_id) + 1 :]
        last = head.task.received_at + window_s
        leased: list[Leased] = []
        for entry in (self._live[task_id] for task_id in after[: max(0, max_items)]):
            if not entry.leasable(now) or entry.task.received_at > last:
                break
            leased.append(entry.grant(now, lease_s))
        return leased

    # --- QueueAdmin --------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """ready = never tried and available; retrying = tried before or delayed."""
        self._check_open()
        now = self._clock()
        ready = leased = retrying = 0
        for entry in self._live.values():
            if entry.live_lease(now):
                leased += 1
            elif entry.attempts > 0 or entry.available_at > now:
                retrying += 1
            else:
                ready += 1
        oldest = min((e.enqueued_at for e in self._live.values()), default=None)
        return QueueStats(
            backend="memory",
            ready=ready,
            leased=leased,
            retrying=retrying,
            dead=len(self._dead),
            oldest_age_s=None if oldest is None else max(0.0, now - oldest),
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        self._check_open()
        return list(self._dead.values())[: max(0, limit)]

    async def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Queue dead letters again at the end of their conversations, attempts reset to 0."""
        self._check_open()
        now = self._clock()
        ids = list(self._dead) if task_ids is None else [i for i in task_ids if i in self._dead]
        for task_id in ids:
            dead = self._dead.pop(task_id)
            entry = _Entry(self._next_seq(), dead.task, enqueued_at=now, available_at=now)
            self._append(entry)
        log_event(_log, "queue_dead_requeued", backend="memory", count=len(ids))
        return len(ids)

    async def purge_dead(self) -> int:
        """Delete every dead letter."""
        self._check_open()
        count = len(self._dead)
        self._dead.clear()
        log_event(_log, "queue_dead_purged", backend="memory", count=count)
        return count

    # --- internals ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _append(self, entry: _Entry) -> None:
        self._live[entry.task.task_id] = entry
        self._lines.setdefault(entry.task.conversation_key, deque()).append(entry.task.task_id)

    def _owned(self, lease: Leased) -> _Entry:
        self._check_open()
        entry = self._live.get(lease.task.task_id)
        if entry is None or entry.token is None or entry.token != lease.token:
            raise StaleLeaseError(f"lease on task {lease.task.task_id} is no longer held")
        return entry

    def _remove(self, entry: _Entry) -> None:
        del self._live[entry.task.task_id]
        line = self._lines[entry.task.conversation_key]
        line.remove(entry.task.task_id)  # the head (O(1)), or one of its leased followers
        if not line:
            del self._lines[entry.task.conversation_key]

    def _bury(self, entry: _Entry, error: str) -> None:
        self._remove(entry)
        self._dead[entry.task.task_id] = DeadLetter(
            task=entry.task, error=error, attempts=entry.attempts, dead_at=self._clock()
        )
