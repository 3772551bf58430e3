"""One `redis.asyncio.Redis` client, owned (built from `REDIS_URL`) or borrowed, for the adapters.

The Redis adapters (sessions, dedupe, the Streams queue) take either a URL, in which case they
open their own client on enter (and ping it, so a wrong URL fails at start-up with
BackendUnavailable naming the address) and close it on exit, or an already-built client shared
through the composition root, which the caller closes. Clients are built inside the running
loop, never at import time or in `__init__`. Replies may be bytes or str (a borrowed client may
use `decode_responses=True`); `text` reads either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from pyloto_cli.domain.errors import BackendUnavailable


def redis_address(url: str) -> str:
    """`host:port/db` of a Redis URL, without the user name or password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    db = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{db}"


def client_address(client: aioredis.Redis) -> str:
    """Where a client connects to, without credentials."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


class LuaScript:
    """A Lua script run by its SHA1 (EVALSHA), loaded by EVAL the first time a server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        """Run the script; the reply is whatever the script returns."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


def text(value: bytes | str) -> str:
    """A reply as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value


class RedisConnection:
    """Owns or borrows one client; `client` raises BackendUnavailable unless open."""

    def __init__(self, source: str | aioredis.Redis, *, role: str) -> None:
        self._url = source if isinstance(source, str) else None
        self._borrowed = None if isinstance(source, str) else source
        self._role = role
        self._client: aioredis.Redis | None = None
        self._closed = False

    @property
    def address(self) -> str:
        """The server's address, without credentials."""
        if self._borrowed is not None:
            return client_address(self._borrowed)
        return redis_address(self._url or "")

    @property
    def client(self) -> aioredis.Redis:
        """The open client."""
        if self._client is None:
            raise BackendUnavailable(f"redis {self._role}: {self.address} is not open")
        return self._client

    async def open(self) -> None:
        """Use the borrowed client, or open one; either is checked with a PING."""
        if self._closed:
            raise RuntimeError(f"redis {self._role} cannot be reopened once closed")
        client = self._borrowed or aioredis.Redis.from_url(self._url or "")
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            if self._borrowed is None:
                await client.aclose()
            raise BackendUnavailable(
                f"Redis at {self.address} cannot be reached ({self._role}): {exc}"
            ) from exc
        self._client = client

    async def close(self) -> None:
        """Stop; close the client if it is this connection's own."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._borrowed is None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
