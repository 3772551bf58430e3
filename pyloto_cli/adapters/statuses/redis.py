"""Delivery statuses in Redis, beside Redis sessions: every host sees the same statuses.

For key prefix P:

    P statuses:msg:W     hash for the message of wamid W: status name -> the status and when
                         it was recorded, as JSON; expires `ttl_s` after its last new status
    P statuses:failed    sorted set: the `failed` statuses (as that JSON), scored by Meta's
                         timestamp; only the newest `keep_failed` are kept

`record` is one HSETNX, so a status Meta delivers twice (or to two hosts) is stored once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.redis_db import RedisConnection
from pyloto_cli.logs import get_logger
from pyloto_cli.ports import DeliveryStatus

from .common import log_status

DEFAULT_TTL_S = 30 * 24 * 3600.0
DEFAULT_KEEP_FAILED = 10_000


def _encode(status: DeliveryStatus, at: float) -> str:
    return json.dumps({"s": asdict(status), "at": at}, ensure_ascii=False, sort_keys=True)


def _decode(raw: bytes | str) -> tuple[DeliveryStatus, float]:
    data: dict[str, Any] = json.loads(raw)
    return DeliveryStatus(**data["s"]), float(data["at"])


class RedisStatusStore(Attached):
    """`StatusStore` on Redis.

    `source` is a Redis URL (its own client) or an open `redis.asyncio.Redis` shared with the
    other Redis adapters (the caller closes it).
    """

    def __init__(
        self,
        source: str | aioredis.Redis,
        *,
        prefix: str = "pyloto:",
        ttl_s: float = DEFAULT_TTL_S,
        keep_failed: int = DEFAULT_KEEP_FAILED,
        logger: logging.Logger | None = None,
    ) -> None:
        if not ttl_s > 0 or keep_failed < 1:
            raise ValueError("ttl_s must be positive and keep_failed at least 1")
        self._conn = RedisConnection(source, role="statuses")
        super().__init__(self._conn)
        self._prefix = f"{prefix}statuses:msg:"
        self._failed = f"{prefix}statuses:failed"
        self._ttl_ms = int(ttl_s * 1000)
        self._keep_failed = keep_failed
        self._log = logger or get_logger("statuses.redis")

    def _key(self, message_id: str) -> str:
        return f"{self._prefix}{message_id}"

    async def record(self, status: DeliveryStatus) -> bool:
        """Store `status`; False if this (wamid, status) was already recorded."""
        client = self._conn.client
        encoded = _encode(status, time.time())
        key = self._key(status.message_id)
        if not await client.hsetnx(key, status.status, encoded):
            return False
        async with client.pipeline(transaction=False) as pipe:
            pipe.pexpire(key, self._ttl_ms)
            if status.status == "failed":
                pipe.zadd(self._failed, {encoded: status.timestamp})
                pipe.zremrangebyrank(self._failed, 0, -self._keep_failed - 1)
            await pipe.execute()
        log_status(self._log, status)
        return True

    async def get(self, message_id: str) -> list[DeliveryStatus]:
        """Every status of `message_id`, oldest first (Meta's timestamp, then arrival)."""
        stored = await self._conn.client.hgetall(self._key(message_id))
        decoded = [_decode(raw) for raw in stored.values()]
        decoded.sort(key=lambda item: (item[0].timestamp, item[1]))
        return [status for status, _ in decoded]

    async def failed(self, limit: int = 100) -> list[DeliveryStatus]:
        """The newest `failed` statuses first."""
        if limit <= 0:
            return []
        members = await self._conn.client.zrevrange(self._failed, 0, limit - 1)
        return [_decode(raw)[0] for raw in members if isinstance(raw, bytes | str)]
