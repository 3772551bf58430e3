"""Dedupe markers in a dict: the single-process backend, and the unit tests' fake.

Each key holds a claim or a done marker with its expiry (epoch seconds from `clock`). Expired
entries count as absent when read, and a heap of expiries lets every call drop the entries that
have expired since, so memory stays bounded by the live markers (Meta redelivers for 7 days, so
done markers live that long). No call awaits inside, so each is atomic on one event loop.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from pyloto_cli.ports import ClaimResult


@dataclass(frozen=True, slots=True)
class _Marker:
    done: bool
    expires_at: float


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")


class MemoryDeduper:
    """A `Deduper` in process memory; forgets everything when the process ends.

    `clock` returns epoch seconds; tests pass a fake one to expire markers without sleeping.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._markers: dict[str, _Marker] = {}
        self._expiries: list[tuple[float, str]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def claim(self, key: str, ttl_s: float) -> ClaimResult:
        """Claim `key` for `ttl_s` seconds unless it is done or claimed by someone else."""
        _check_ttl(ttl_s)
        now = self._purge()
        marker = self._markers.get(key)
        if marker is not None:
            return ClaimResult.DONE if marker.done else ClaimResult.IN_PROGRESS
        self._set(key, _Marker(done=False, expires_at=now + ttl_s))
        return ClaimResult.CLAIMED

    async def mark_done(self, key: str, ttl_s: float) -> None:
        """Record `key` as processed for `ttl_s` seconds, replacing any claim."""
        _check_ttl(ttl_s)
        now = self._purge()
        self._set(key, _Marker(done=True, expires_at=now + ttl_s))

    async def release(self, key: str) -> None:
        """Drop an unfinished claim on `key`; a done marker stays."""
        self._purge()
        marker = self._markers.get(key)
        if marker is not None and not marker.done:
            del self._markers[key]

    def __len__(self) -> int:
        """How many markers are held (expired ones go on the next call)."""
        return len(self._markers)

    def _set(self, key: str, marker: _Marker) -> None:
        self._markers[key] = marker
        heapq.heappush(self._expiries, (marker.expires_at, key))

    def _purge(self) -> float:
        """Drop every marker expired by now; return now."""
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiries)
            marker = self._markers.get(key)
            if marker is not None and marker.expires_at == expires_at:
                del self._markers[key]
        return now
