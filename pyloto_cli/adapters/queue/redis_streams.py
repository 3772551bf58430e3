"""A shared queue on Redis Streams: a consumer group, leases, retries and dead letters.

The stream holds the leasable head of each conversation; workers read it through the consumer
group `workers` (XREADGROUP), and each adapter is one consumer. A conversation's later tasks
wait in its FIFO list and enter the stream only when the head before them is acked or
dead-lettered, so the stream never offers two tasks of one conversation; the conversation's
lease key (the holder's token, with PX) guards that again. Each operation is one Lua script
(see `redis_streams_lua`), atomic on the server, so any number of processes can share a queue.

- enqueue: a task id already live or dead is a duplicate (a redelivered wamid is not stored
  twice). A new task joins its conversation's list; as the head it is added to the stream.
- lease: first re-adds retries that are due (a sorted set by due time), then claims the pending
  entries of consumers that are gone (below), then XAUTOCLAIMs entries idle for the lease time
  (a stalled worker's), then reads new entries. A task is granted when it has no live lease by
  the adapter's clock (or its holder is gone): the attempt is counted and a new token issued.
- owners: each consumer keeps a heartbeat key with a short TTL (`owner_ttl_s`, 2 s), set by
  each lease and renewed every quarter of it while the adapter is open. A consumer that keeps
  heartbeats and whose key has lapsed (its process was killed) is gone: its pending entries,
  and the followers it held, are taken back by the next lease at once instead of after the
  lease time. Closing the adapter ends its heartbeat, so what it still holds is taken back too.
- ack: XACK + XDEL, the task is deleted and its conversation's next task enters the stream.
- nack: XACK + XDEL and into the retry set with the delay (given, or the `RetryPolicy`'s); the
  task stays its conversation's head. Once the policy's attempts are spent it is dead-lettered.
- defer: as nack with the given delay, but the attempt is given back and never dead-lettered.
- lease_followers: the tasks right behind a leased head in its list are leased too (never
  entering the stream); nacked or deferred, such a follower waits in `delayed` until it is
  its conversation's head.
- dead letters: a stream of payload, error, attempts and time, plus an index by task id.

Lease tokens: as in the SQLite queue, a lease is honoured while its token is current; expiry
only makes the task leasable again, so a late ack succeeds until another worker leases it.
Expiry is decided by `clock`; XAUTOCLAIM's min-idle (server time) only decides which pending
entries are looked at. It defaults to the lease time; with a fake clock pass
`reclaim_idle_s=0` so every pending entry is checked against the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pyloto_cli.adapters.queue import redis_streams_lua as lua
from pyloto_cli.adapters.redis_db import LuaScript, RedisConnection, text
from pyloto_cli.domain.errors import StaleLeaseError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import (
    DeadLetter,
    EnqueueResult,
    FailureKind,
    Leased,
    NackOutcome,
    QueueStats,
    Task,
    read_stored,
)
from pyloto_cli.logs import get_logger, log_event

_log = get_logger("queue.redis")
_GROUP = "workers"
# how long a consumer's heartbeat outlives its last renewal: a killed worker's tasks wait this
# long at most; a live one renews four times per TTL, so only an event loop stalled for about
# this long (or Redis out of reach) could lose a task it still works on
OWNER_TTL_S = 2.0
_RETAKEN = {1: "queue_lease_expired", 2: "queue_lease_owner_gone"}


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _num(value: float) -> str:
    """A time as the exact decimal string stored on the server."""
    return repr(float(value))


def _dead_letter(fields: Mapping[bytes | str, bytes | str]) -> DeadLetter:
    f = {text(k): v for k, v in fields.items()}
    return DeadLetter(
        task=read_stored(text(f["id"]), text(f["conv"]), f["payload"])[0],
        error=text(f["err"]),
        attempts=int(f["att"]),
        dead_at=float(text(f["at"])),
    )


class RedisStreamsQueue:
    """`MessageQueue` + `QueueAdmin` on Redis Streams, shared by any number of processes.

    `source` is a Redis URL (the adapter opens and closes its own client) or an open
    `redis.asyncio.Redis` shared with other adapters (the caller closes it). Keys live under
    `{prefix}q:`; `consumer` names this adapter in the group (unique by default).
    """

    def __init__(
        self,
        source: str | aioredis.Redis,
        policy: RetryPolicy,
        *,
        prefix: str = "pyloto:",
        clock: Callable[[], float] = time.time,
        reclaim_idle_s: float | None = None,
        consumer: str | None = None,
        owner_ttl_s: float = OWNER_TTL_S,
    ) -> None:
        self._conn = RedisConnection(source, role="queue")
        self._policy = policy
        self._prefix = f"{prefix}q:"
        self._clock = clock
        self._reclaim_idle_s = reclaim_idle_s
        self._consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._cursor = "0-0"
        self._owner_ttl_s = owner_ttl_s
        self._beating: asyncio.Task[None] | None = None

    @property
    def consumer(self) -> str:
        """This adapter's consumer name in the group."""
        return self._consumer

    async def __aenter__(self) -> Self:
        await self._conn.open()
        try:
            await self._conn.client.xgroup_create(
                f"{self._prefix}stream", _GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                await self._conn.close()
                raise
        log_event(_log, "queue_opened", logging.DEBUG, backend="redis", consumer=self._consumer)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        try:
            await self._run(lua.RETIRE, self._consumer)
        except RedisError as error:
            log_event(
                _log, "queue_close_failed", logging.WARNING, backend="redis", error=str(error)
            )
        finally:
            await self._conn.close()

    async def _run(self, script: LuaScript, *args: str | int | float) -> Any:
        return await script(self._conn.client, [], [self._prefix, *args])

    async def _beat(self) -> None:
        """Renew this consumer's heartbeat while the adapter is open (from its first lease: a
        webhook process that only enqueues holds nothing), four times per TTL."""
        while True:
            await asyncio.sleep(self._owner_ttl_s / 4)
            try:
                await self._run(lua.BEAT, self._consumer, _ms(self._owner_ttl_s))
            except RedisError as error:  # the next beat, or lease, tries again
                log_event(_log, "queue_heartbeat_failed", logging.WARNING, error=str(error))

    # --- MessageQueue ------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Store `tasks` atomically; ids already live or dead are reported as duplicates."""
        batch = list(tasks)
        args: list[str | int | float] = [_num(self._clock())]
        for task in batch:
            args += [task.task_id, task.conversation_key, task.to_json().decode()]
        stored = await self._run(lua.ENQUEUE, *args) if batch else []
        enqueued = tuple(t.task_id for t, new in zip(batch, stored, strict=True) if int(new))
        duplicates = tuple(t.task_id for t, new in zip(batch, stored, strict=True) if not int(new))
        return EnqueueResult(enqueued=enqueued, duplicates=duplicates)

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        """Lease up to `max_items` conversation heads: due retries, expired leases, new tasks."""
        client = self._conn.client
        if max_items <= 0:
            return []
        now = self._clock()
        expires = now + lease_s
        idle_s = lease_s if self._reclaim_idle_s is None else self._reclaim_idle_s
        idle_ms = max(0, math.ceil(idle_s * 1000))
        tokens = [secrets.token_hex(16) for _ in range(max_items)]
        args: list[str | int | float] = [
            self._consumer,
            _num(now),
            _num(expires),
            _ms(lease_s),
            idle_ms,
            max_items,
            _ms(self._owner_ttl_s),
        ]
        cursor, granted = await lua.LEASE(client, [], [self._prefix, *args, self._cursor, *tokens])
        self._cursor = text(cursor)
        if self._beating is None:
            self._beating = asyncio.create_task(self._beat(), name="queue-heartbeat")
        leases: list[Leased] = []
        for task_id, payload, attempt, token, failure, how in granted:
            if int(how):
                log_event(
                    _log,
                    _RETAKEN[int(how)],
                    logging.WARNING,
                    backend="redis",
                    task_id=text(task_id),
                    attempt=int(attempt),
                )
            task = await self._readable(task_id, payload, token)
            if task is not None:
                previous = FailureKind.parse(failure)
                leases.append(Leased(task, text(token), int(attempt), expires, previous))
        return leases

    async def _readable(self, task_id: Any, payload: Any, token: Any) -> Task | None:
        """The leased task; None once one whose payload holds no task is dead-lettered (on
        this, its first attempt): it must not stop the lease of the tasks around it."""
        task, problem = read_stored(text(task_id), "", payload)
        if problem is None:
            return task
        await self._run(lua.BURY, text(task_id), text(token), problem, _num(self._clock()))
        log_event(
            _log, "task_dead_lettered", logging.WARNING, task_id=text(task_id), reason=problem
        )
        return None

    async def renew(self, lease: Leased, lease_s: float) -> Leased:
        """Extend the lease from now; StaleLeaseError if the token is no longer current."""
        expires = self._clock() + lease_s
        args = (self._consumer, lease.task.task_id, lease.token, _num(expires), _ms(lease_s))
        self._check(await self._run(lua.RENEW, *args), lease)
        return replace(lease, expires_at=expires)

    async def ack(self, lease: Leased) -> None:
        """Remove the task; the next task of its conversation becomes leasable."""
        self._check(await self._run(lua.ACK, lease.task.task_id, lease.token), lease)

    async def nack(
        self,
        lease: Leased,
        error: str,
        delay_s: float | None = None,
        failure: FailureKind | None = None,
    ) -> NackOutcome:
        """Retry after `delay_s` (or the policy's delay), or dead-letter once attempts are spent."""
        if self._policy.exhausted(lease.attempt):
            await self.dead_letter(lease, error)
            return NackOutcome.DEAD
        delay = delay_s if delay_s is not None else self._policy.delay(lease.attempt)
        due = _num(self._clock() + delay)
        kind = "" if failure is None else failure.value
        args = (lease.task.task_id, lease.token, error, due, 0, kind)
        self._check(await self._run(lua.RETRY, *args), lease)
        return NackOutcome.RETRY

    async def defer(self, lease: Leased, delay_s: float, reason: str) -> None:
        """Put the task back for `delay_s`, giving this attempt back; never dead-letters."""
        due = _num(self._clock() + delay_s)
        args = (lease.task.task_id, lease.token, reason, due, 1, "")
        self._check(await self._run(lua.RETRY, *args), lease)

    async def dead_letter(self, lease: Leased, error: str) -> None:
        """Dead-letter now, keeping the payload, the error and the attempt count."""
        now = _num(self._clock())
        self._check(await self._run(lua.BURY, lease.task.task_id, lease.token, error, now), lease)

    async def lease_followers(
        self, lease: Leased, window_s: float, max_items: int, lease_s: float
    ) -> list[Leased]:
        """Lease the available tasks right behind `lease` in its conversation, within the window."""
        now = self._clock()
        expires = now + lease_s
        count = max(0, max_items)
        last = _num(lease.task.received_at + window_s)
        args = (lease.task.task_id, lease.token, _num(now), _num(expires), last, count)
        tokens = [secrets.token_hex(16) for _ in range(count)]
        reply = await self._run(lua.FOLLOW, *args, *tokens)
        if not isinstance(reply, list):
            self._check(reply, lease)  # 0: the head's lease is no longer held
        leases: list[Leased] = []
        for task_id, payload, attempt, token, failure in reply[1]:
            task = await self._readable(task_id, payload, token)
            if task is not None:
                previous = FailureKind.parse(failure)
                leases.append(Leased(task, text(token), int(attempt), expires, previous))
        return leases

    @staticmethod
    def _check(reply: Any, lease: Leased) -> None:
        if not int(reply):
            raise StaleLeaseError(f"lease on task {lease.task.task_id} is no longer held")

    # --- QueueAdmin --------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """ready = never tried; leased = live lease; retrying = tried before, not leased now."""
        now = self._clock()
        live, tried, leased, oldest, dead = await self._run(lua.STATS, _num(now))
        oldest_at = text(oldest)
        return QueueStats(
            backend="redis",
            ready=int(live) - int(tried),
            leased=int(leased),
            retrying=int(tried) - int(leased),
            dead=int(dead),
            oldest_age_s=max(0.0, now - float(oldest_at)) if oldest_at else None,
            extra={"consumer": self._consumer, "address": self._conn.address},
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        client = self._conn.client
        if limit <= 0:
            return []
        entries = await client.xrange(f"{self._prefix}dead", count=limit) or []
        return [_dead_letter(fields or {}) for _, fields in entries]

    async def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Queue dead letters again at the end of their conversations, attempts reset to 0."""
        if task_ids is not None and not task_ids:
            return 0
        now = _num(self._clock())
        count = int(await self._run(lua.REQUEUE, now, *(task_ids or ())))
        log_event(_log, "queue_dead_requeued", backend="redis", count=count)
        return count

    async def purge_dead(self) -> int:
        """Delete every dead letter."""
        count = int(await self._run(lua.PURGE))
        log_event(_log, "queue_dead_purged", backend="redis", count=count)
        return count
