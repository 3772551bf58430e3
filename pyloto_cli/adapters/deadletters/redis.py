"""Dead letters in Redis: a sorted set by time of death and a hash of the letters.

For key prefix `prefix` (both keys carry the `{dead_letters}` hash tag, so they share a slot):

    {prefix}{dead_letters}:index  sorted set: task id, scored by `dead_at` (epoch seconds)
    {prefix}{dead_letters}:items  hash: task id -> the letter as JSON (task, error, attempts, at)

`record`, `delete` and `purge` each change both keys in one MULTI/EXEC transaction, so the index
and the hash never disagree. `list` reads the oldest ids from the index and then their letters;
an id deleted in between is simply left out. Dead letters are rare, so nothing expires them.
"""

from __future__ import annotations

import builtins
import json
from typing import Any, cast

import redis.asyncio as aioredis

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.redis_db import RedisConnection, text
from pyloto_cli.domain.task import DeadLetter, Task

_MAX_ERROR_CHARS = 8192


def _encode(dead: DeadLetter) -> str:
    return json.dumps(
        {
            "task": dead.task.to_json().decode(),
            "error": dead.error[:_MAX_ERROR_CHARS],
            "attempts": dead.attempts,
            "dead_at": dead.dead_at,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _decode(raw: bytes | str) -> DeadLetter:
    data: dict[str, Any] = json.loads(text(raw))
    return DeadLetter(
        task=Task.from_json(data["task"]),
        error=str(data.get("error", "")),
        attempts=int(data.get("attempts", 0)),
        dead_at=float(data.get("dead_at", 0.0)),
    )


class RedisDeadLetterStore(Attached):
    """`DeadLetterStore` on Redis.

    `source` is a Redis URL (the adapter opens and closes its own client) or an open
    `redis.asyncio.Redis` shared with other adapters (the caller closes it).
    """

    def __init__(self, source: str | aioredis.Redis, *, prefix: str = "pyloto:") -> None:
        self._conn = RedisConnection(source, role="dead letters")
        super().__init__(self._conn)
        self._index = f"{prefix}{{dead_letters}}:index"
        self._items = f"{prefix}{{dead_letters}}:items"

    async def record(self, dead: DeadLetter) -> None:
        """Store `dead`, replacing an entry for the same task id."""
        task_id = dead.task.task_id
        async with self._conn.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self._index, {task_id: dead.dead_at})
            pipe.hset(self._items, task_id, _encode(dead))
            await pipe.execute()

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to `limit` dead letters, oldest first."""
        if limit <= 0:
            return []
        client = self._conn.client
        ids = cast("list[bytes | str]", await client.zrange(self._index, 0, limit - 1))
        if not ids:
            return []
        raws = await client.hmget(self._items, ids)
        return [_decode(raw) for raw in raws if raw is not None]

    async def get(self, task_id: str) -> DeadLetter | None:
        """The dead letter of `task_id`, or None."""
        raw = await self._conn.client.hget(self._items, task_id)
        return None if raw is None else _decode(raw)

    async def delete(self, task_id: str) -> bool:
        """Delete one; True if it existed."""
        async with self._conn.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._index, task_id)
            pipe.hdel(self._items, task_id)
            _, removed = await pipe.execute()
        return int(removed) > 0

    async def purge(self) -> int:
        """Delete every dead letter; returns the count."""
        async with self._conn.client.pipeline(transaction=True) as pipe:
            pipe.hlen(self._items)
            pipe.delete(self._index, self._items)
            count, _ = await pipe.execute()
        return int(count)
