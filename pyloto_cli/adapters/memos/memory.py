"""Task memos in a dict: the single-process backend, and the unit tests' fake.

No call awaits inside, so each is atomic on one event loop. Expired records count as absent and
are dropped when read; `forget` drops the rest when their task is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self


class MemoryTaskMemos:
    """A `TaskMemos` in process memory; forgets everything when the process ends."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[str, tuple[float, dict[str, str]]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def get(self, key: str) -> dict[str, str]:
        """The fields stored for `key` (empty when there are none)."""
        record = self._records.get(key)
        if record is None:
            return {}
        expires_at, fields = record
        if expires_at <= self._clock():
            del self._records[key]
            return {}
        return dict(fields)

    async def put(self, key: str, fields: Mapping[str, str], ttl_s: float) -> None:
        """Merge `fields` into `key`'s record and push its expiry to `ttl_s` from now."""
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        merged = {**(await self.get(key)), **fields}
        self._records[key] = (self._clock() + ttl_s, merged)

    async def forget(self, key: str) -> None:
        """Drop `key`'s record."""
        self._records.pop(key, None)
