"""Sessions in a dict: the single-process backend, and the unit tests' fake.

Sessions are stored as their `to_dict()` form and rebuilt on every load, so a caller never holds
a reference into the store (a mutated `meta` dict cannot leak back in) and the round trip is the
same one the durable backends make. Every method runs without an `await` inside, so on one event
loop each call is atomic: concurrent appends cannot lose turns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

from pyloto_cli.domain.session import Session, Turn
from pyloto_cli.ports import SessionHead


class MemorySessionStore:
    """A `SessionStore` in process memory; forgets everything when the process ends.

    `clock` (epoch seconds) stamps `updated_at` on append.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._data: dict[str, dict[str, Any]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def load(self, key: str) -> Session | None:
        """The session, or None if there is none."""
        data = self._data.get(key)
        return None if data is None else Session.from_dict(data)

    async def save(self, session: Session) -> None:
        """Replace the stored session."""
        self._data[session.key] = session.to_dict()

    async def append(
        self, key: str, turns: Sequence[Turn], max_turns: int, meta: dict[str, str] | None = None
    ) -> Session:
        """Append `turns` (creating the session), merge `meta`, keep the newest `max_turns`."""
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        data = self._data.get(key)
        current = Session(key=key) if data is None else Session.from_dict(data)
        updated = current.with_turns(tuple(turns), max_turns, self._clock())
        if meta:
            updated = replace(updated, meta={**updated.meta, **meta})
        self._data[key] = updated.to_dict()
        return Session.from_dict(self._data[key])

    async def delete(self, key: str) -> bool:
        """Delete; True if it existed."""
        return self._data.pop(key, None) is not None

    async def exists(self, key: str) -> bool:
        """True if a session is stored under `key`."""
        return key in self._data

    async def head(self, key: str) -> SessionHead | None:
        """The session without its turns, or None."""
        data = self._data.get(key)
        return None if data is None else _session_head(key, data)

    async def list(self, limit: int = 10_000) -> Sequence[SessionHead]:
        """Up to `limit` sessions without turns, most recently updated first."""
        heads = [_session_head(key, data) for key, data in self._data.items()]
        return sorted(heads, key=lambda h: h.updated_at, reverse=True)[:limit]


def _session_head(key: str, data: dict[str, Any]) -> SessionHead:
    return SessionHead(key, float(data.get("updated_at", 0.0)), dict(data.get("meta", {})))
