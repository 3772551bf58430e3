"""Dedupe markers in Redis: one string key per message id, a claim or a done marker, with a TTL.

`claim` is one Lua script around `SET key claim NX PX ttl`: when the key is free it is claimed,
otherwise the script returns what holds it (`claim` or `done`), all in one atomic step, so of many
concurrent claims (from any number of processes) exactly one wins. `mark_done` overwrites the
key with `done` and its own TTL (7 days by default in the settings: Meta redelivers that long).
`release` is a script that deletes the key only while it still holds a claim, so it can never
undo a done marker written in between. Redis expires keys by itself; nothing needs purging.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.redis_db import LuaScript, RedisConnection, text
from pyloto_cli.ports import ClaimResult

_CLAIM = LuaScript("""
if redis.call('SET', KEYS[1], 'claim', 'NX', 'PX', ARGV[1]) then return 'claimed' end
return redis.call('GET', KEYS[1])
""")
_RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == 'claim' then return redis.call('DEL', KEYS[1]) end
return 0
""")


def _ttl_ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    return max(1, math.ceil(ttl_s * 1000))


class RedisDeduper(Attached):
    """A `Deduper` on Redis.

    `source` is a Redis URL (the adapter opens and closes its own client) or an open
    `redis.asyncio.Redis` shared with other adapters (the caller closes it). Keys are
    `{prefix}dedupe:{key}`.
    """

    def __init__(self, source: str | aioredis.Redis, *, prefix: str = "pyloto:") -> None:
        self._conn = RedisConnection(source, role="dedupe")
        super().__init__(self._conn)
        self._prefix = f"{prefix}dedupe:"

    async def claim(self, key: str, ttl_s: float) -> ClaimResult:
        """Claim `key` for `ttl_s` seconds unless it is done or claimed by someone else."""
        ttl_ms = _ttl_ms(ttl_s)
        held = text(await _CLAIM(self._conn.client, [self._key(key)], [ttl_ms]))
        if held == "claimed":
            return ClaimResult.CLAIMED
        # Anything but a done marker (a claim, or a foreign value under our prefix) is a live
        # holder: the caller retries later.
        return ClaimResult.DONE if held == "done" else ClaimResult.IN_PROGRESS

    async def mark_done(self, key: str, ttl_s: float) -> None:
        """Record `key` as processed for `ttl_s` seconds, replacing any claim."""
        await self._conn.client.set(self._key(key), "done", px=_ttl_ms(ttl_s))

    async def release(self, key: str) -> None:
        """Drop an unfinished claim on `key`; a done marker stays."""
        await _RELEASE(self._conn.client, [self._key(key)], [])

    def _key(self, key: str) -> str:
        return f"{self._prefix}{key}"
