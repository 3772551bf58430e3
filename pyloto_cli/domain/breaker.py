"""A circuit breaker for a remote service (the LLM, the Graph API): stop calling it while it
is clearly down.

    closed --N consecutive failures--> open --cool-down elapsed--> half-open
    half-open --probe succeeds--> closed        half-open --probe fails--> open

While open, `allow()` is False and the caller defers its task at once (`retry_in()` says for
how long). After the cool-down one caller is let through as the probe; the others are refused
until the probe's first outcome is recorded. A probe that never reports (cancelled) is replaced
after another cool-down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol


class BreakerState(StrEnum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker(Protocol):
    """What a caller of a guarded service uses: this module's breaker, or one whose opening is
    shared by every process (`pipeline.shared_breaker.SharedBreaker`)."""

    @property
    def state(self) -> BreakerState:
        """The current state."""
        ...

    def allow(self) -> bool:
        """May the caller use the service now?"""
        ...

    def record_success(self) -> None:
        """A call succeeded."""
        ...

    def record_failure(self) -> None:
        """A call failed."""
        ...

    def retry_in(self, probe_wait_s: float = 1.0) -> float:
        """Seconds a refused caller should wait before it tries again."""
        ...


class CircuitBreaker:
    """Counts consecutive failures; not thread-safe (one event loop owns it)."""

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s > 0")
        self._threshold = failure_threshold
        self._cooldown = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None

    @property
    def cooldown_s(self) -> float:
        """How long an opened breaker stays open before a probe."""
        return self._cooldown

    @property
    def state(self) -> BreakerState:
        """The current state (open turns half-open lazily, on the next `allow`)."""
        return self._state

    def allow(self) -> bool:
        """May the caller use the service now? Grants at most one probe while half-open."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self._cooldown:
                return False
            self._state = BreakerState.HALF_OPEN
            self._probe_at = None
        if self._probe_at is not None and now - self._probe_at < self._cooldown:
            return False
        self._probe_at = now
        return True

    def retry_in(self, probe_wait_s: float = 1.0) -> float:
        """Seconds a refused caller should wait: the rest of the cool-down while open, a short
        `probe_wait_s` while a probe is out (so the backlog follows soon after it succeeds)."""
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self._cooldown - self._clock())
        if self._state is BreakerState.HALF_OPEN:
            return min(probe_wait_s, self._cooldown)
        return 0.0

    def record_success(self) -> None:
        """A call succeeded: close the breaker and reset the count."""
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_at = None

    def record_failure(self) -> None:
        """A call failed: a failed probe, or the N-th failure in a row, opens the breaker."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probe_at = None
