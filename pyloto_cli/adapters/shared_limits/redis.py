"""`SharedBuckets` and `SharedBreakers` in Redis: every process of a deployment, on any host.

A bucket is one key holding its theoretical arrival time (GCRA), updated by one Lua script on
Redis' own clock (`TIME`), so hosts whose clocks differ still share one pace. A breaker is a key
holding the time it stays open until (on the opener's clock), expiring with it.
"""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.redis_db import LuaScript, RedisConnection, text

_TAKE = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local wait = tat - interval * (burst - 1) - now
if wait > 0 then return tostring(wait) end
tat = math.max(tat, now) + interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return '0'
""")


class RedisSharedLimits(Attached):
    """Buckets under `{prefix}rate:{key}`, breakers under `{prefix}breaker:{name}`."""

    def __init__(self, source: str | aioredis.Redis, *, prefix: str = "pyloto:") -> None:
        self._conn = RedisConnection(source, role="shared limits")
        super().__init__(self._conn)
        self._prefix = prefix

    async def take(self, key: str, interval_s: float, burst: int) -> float:
        """Take a free token, or say how long until one is (see `SharedBuckets.take`)."""
        reply = await _TAKE(
            self._conn.client, [f"{self._prefix}rate:{key}"], [repr(interval_s), burst]
        )
        return float(text(reply))

    async def open_until(self, name: str) -> float:
        """Until when `name` is open (0: closed)."""
        value = await self._conn.client.get(f"{self._prefix}breaker:{name}")
        return float(text(value)) if value is not None else 0.0

    async def open(self, name: str, until: float) -> None:
        """Open `name` until `until`; the key expires with it."""
        seconds = until - time.time()  # the callers compare `until` with their own clocks
        if seconds > 0:
            ttl_ms = max(1, math.ceil(seconds * 1000))
            await self._conn.client.set(f"{self._prefix}breaker:{name}", repr(until), px=ttl_ms)
