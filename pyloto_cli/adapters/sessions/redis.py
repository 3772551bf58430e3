"""Sessions in Redis: a hash for the session's fields and a list for its turns.

For conversation `key` (keys carry a `{key}` hash tag, so one session's keys share a slot):

    {prefix}session:{key}        hash: `updated_at`, and `m:<name>` per meta entry
    {prefix}session:{key}:turns  list: one JSON turn per element, oldest first

`append` needs no read-modify-write: one MULTI/EXEC transaction pushes the new turns with a
single RPUSH (so one call's turns stay together), trims the list to the newest `max_turns`,
sets the meta fields and `updated_at`, and reads the result back. Redis runs the transaction
as one step, so concurrent writers (from any process) never lose turns or exceed the bound,
and no retry loop is needed. `save` replaces both keys in one transaction the same way.
With `ttl_s`, every write also (re)sets both keys' expiry: idle conversations then vanish.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.redis_db import RedisConnection, text
from pyloto_cli.domain import json_codec
from pyloto_cli.domain.session import Session, Turn
from pyloto_cli.ports import SessionHead

_UPDATED = "updated_at"
_META = "m:"


def _encode_turn(turn: Turn) -> str:
    return json_codec.dumps(turn.to_dict()).decode()


def _session(key: str, fields: dict[Any, Any], turns: Sequence[bytes | str]) -> Session | None:
    """Rebuild a session from HGETALL and LRANGE replies; None when the hash is absent."""
    if not fields:
        return None
    decoded = {text(name): text(value) for name, value in fields.items()}
    meta = {name[len(_META) :]: value for name, value in decoded.items() if name.startswith(_META)}
    return Session(
        key=key,
        turns=tuple(Turn.from_dict(json_codec.loads(raw)) for raw in turns),
        updated_at=float(decoded.get(_UPDATED, 0.0)),
        meta=meta,
    )


def _glob(literal: str) -> str:
    """`literal` with SCAN's pattern characters escaped (a prefix may hold any of them)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in literal)


class RedisSessionStore(Attached):
    """A `SessionStore` on Redis.

    `source` is a Redis URL (the adapter opens and closes its own client) or an open
    `redis.asyncio.Redis` shared with other adapters (the caller closes it). `clock` (epoch
    seconds) stamps `updated_at` on append; `ttl_s`, if given, expires idle sessions.
    """

    def __init__(
        self,
        source: str | aioredis.Redis,
        *,
        prefix: str = "pyloto:",
        clock: Callable[[], float] = time.time,
        ttl_s: float | None = None,
    ) -> None:
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self._conn = RedisConnection(source, role="sessions")
        super().__init__(self._conn)
        self._prefix = f"{prefix}session:"
        self._clock = clock
        self._ttl_ms = None if ttl_s is None else max(1, math.ceil(ttl_s * 1000))

    async def load(self, key: str) -> Session | None:
        """The session, or None if there is none."""
        head, turns = self._keys(key)
        async with self._conn.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(head)
            pipe.lrange(turns, 0, -1)
            fields, raw_turns = await pipe.execute()
        return _session(key, fields, raw_turns)

    async def save(self, session: Session) -> None:
        """Replace the stored session (turns, meta and `updated_at`) in one transaction."""
        head, turns = self._keys(session.key)
        mapping: dict[FieldT, EncodableT] = {_UPDATED: repr(session.updated_at)}
        mapping.update({f"{_META}{name}": value for name, value in session.meta.items()})
        async with self._conn.client.pipeline(transaction=True) as pipe:
            pipe.delete(head, turns)
            pipe.hset(head, mapping=mapping)
            if session.turns:
                pipe.rpush(turns, *(_encode_turn(t) for t in session.turns))
            self._expire(pipe, head, turns)
            await pipe.execute()

    async def append(
        self, key: str, turns: Sequence[Turn], max_turns: int, meta: dict[str, str] | None = None
    ) -> Session:
        """Append `turns` (creating the session), merge `meta`, keep the newest `max_turns`."""
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        head, turns_key = self._keys(key)
        mapping: dict[FieldT, EncodableT] = {_UPDATED: repr(self._clock())}
        mapping.update({f"{_META}{name}": value for name, value in (meta or {}).items()})
        async with self._conn.client.pipeline(transaction=True) as pipe:
            if turns:
                pipe.rpush(turns_key, *(_encode_turn(t) for t in turns))
            pipe.ltrim(turns_key, -max_turns, -1)
            pipe.hset(head, mapping=mapping)
            self._expire(pipe, head, turns_key)
            pipe.hgetall(head)
            pipe.lrange(turns_key, 0, -1)
            replies = await pipe.execute()
        session = _session(key, replies[-2], replies[-1])
        if session is None:  # the transaction has just written the hash
            raise RuntimeError(f"session {key!r} vanished inside its own transaction")
        return session

    async def delete(self, key: str) -> bool:
        """Delete; True if it existed."""
        removed = await self._conn.client.delete(*self._keys(key))
        return int(removed) > 0

    async def exists(self, key: str) -> bool:
        """True if a session is stored under `key`."""
        head, _ = self._keys(key)
        return int(await self._conn.client.exists(head)) > 0

    async def head(self, key: str) -> SessionHead | None:
        """The session's hash alone (one HGETALL; the turns list is not read)."""
        head, _ = self._keys(key)
        session = _session(key, await self._conn.client.hgetall(head), ())
        return None if session is None else SessionHead(key, session.updated_at, session.meta)

    async def list(self, limit: int = 10_000) -> Sequence[SessionHead]:
        """Up to `limit` sessions without turns, most recently updated first.

        SCAN walks the prefix without blocking the server (KEYS would); only the heads (the
        hashes, whose names end in the key's closing brace) are read, in one pipeline.
        """
        client = self._conn.client
        start = len(self._prefix) + 1
        heads = [
            text(name)
            async for name in client.scan_iter(match=f"{_glob(self._prefix)}{{*}}", count=500)
            if text(name).endswith("}")
        ]
        async with client.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hgetall(head)
            replies = await pipe.execute() if heads else []
        found = []
        for head, fields in zip(heads, replies, strict=True):
            session = _session(head[start:-1], fields, ())
            if session is not None:  # expired between the scan and the read
                found.append(SessionHead(session.key, session.updated_at, session.meta))
        found.sort(key=lambda h: h.updated_at, reverse=True)
        return found[:limit]

    def _keys(self, key: str) -> tuple[str, str]:
        head = f"{self._prefix}{{{key}}}"
        return head, f"{head}:turns"

    def _expire(self, pipe: Pipeline, head: str, turns: str) -> None:
        if self._ttl_ms is not None:
            pipe.pexpire(head, self._ttl_ms)
            pipe.pexpire(turns, self._ttl_ms)
