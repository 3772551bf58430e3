"""Task memos in Redis: one hash per key, each field a hash field, with the key's expiry.

`put` is one MULTI/EXEC transaction of HSET (the new fields) and PEXPIRE (`ttl_s` from now):
HSET merges by itself, so concurrent puts of different fields (from any process) all keep
theirs, and no write leaves a hash without its expiry. Redis drops an expired hash whole, so a
put after the expiry starts from nothing, and nothing needs purging. Keys are
`{prefix}memo:{key}`.

Errors: a command the server refuses or a connection that fails (`redis.exceptions.RedisError`,
`OSError`) raises `TransientError` (reason `task_memos_unavailable: ...`), which the pipeline
already turns into a retry; a call before enter or after exit raises `BackendUnavailable`; a
`ttl_s` that is not positive raises `ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.redis_db import RedisConnection, text
from pyloto_cli.domain.errors import TransientError

T = TypeVar("T")


def _ttl_ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    return max(1, math.ceil(ttl_s * 1000))


async def _guarded(call: Awaitable[T]) -> T:
    """`call`'s result; what Redis refuses becomes a `TransientError` for the pipeline."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        raise TransientError(f"task_memos_unavailable: redis: {exc}") from exc


class RedisTaskMemos(Attached):
    """A `TaskMemos` on Redis.

    `source` is a Redis URL (the adapter opens and closes its own client) or an open
    `redis.asyncio.Redis` shared with other adapters (the caller closes it).
    """

    def __init__(self, source: str | aioredis.Redis, *, prefix: str = "pyloto:") -> None:
        self._conn = RedisConnection(source, role="task memos")
        super().__init__(self._conn)
        self._prefix = f"{prefix}memo:"

    async def get(self, key: str) -> dict[str, str]:
        """The fields stored for `key` (empty when there are none or they expired)."""
        stored = await _guarded(self._conn.client.hgetall(self._key(key)))
        return {text(name): text(value) for name, value in stored.items()}

    async def put(self, key: str, fields: Mapping[str, str], ttl_s: float) -> None:
        """Merge `fields` into `key`'s hash and push its expiry to `ttl_s` from now."""
        ttl_ms = _ttl_ms(ttl_s)
        name = self._key(key)
        mapping: dict[FieldT, EncodableT] = dict(fields.items())
        client = self._conn.client
        async with client.pipeline(transaction=True) as pipe:
            if mapping:
                pipe.hset(name, mapping=mapping)
            pipe.pexpire(name, ttl_ms)
            # the replies, not the first error raised: redis-py would write the key (the user's
            # wamid) into the error's text, and the reason reaches logs and dead letters
            replies = await _guarded(pipe.execute(raise_on_error=False))
        for reply in replies:
            if isinstance(reply, RedisError):
                raise TransientError(f"task_memos_unavailable: redis: {reply}") from reply

    async def forget(self, key: str) -> None:
        """Drop `key`'s hash."""
        await _guarded(self._conn.client.delete(self._key(key)))

    def _key(self, key: str) -> str:
        return f"{self._prefix}{key}"
