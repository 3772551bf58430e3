"""The backoff policy: one pure function, handed to every queue adapter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with a cap and jitter, and the attempt count that ends in a dead letter.

    `delay(attempt)` is the wait after failed attempt number `attempt` (1-based):
    `min(cap, base * 2**(attempt-1))`, reduced by up to `jitter` of itself so that many tasks
    failing together do not retry together.
    """

    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: float = 0.2
    max_attempts: int = 5
    rand: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the next attempt after `attempt` failed."""
        raw = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return raw * (1.0 - self.jitter * self.rand())

    def exhausted(self, attempt: int) -> bool:
        """True once `attempt` failed attempts leave no retry."""
        return attempt >= self.max_attempts
