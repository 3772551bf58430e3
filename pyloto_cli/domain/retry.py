"""The backoff policy: one pure function, handed to every queue adapter.

Two bounds, for two kinds of failure. A failure of a known, passing kind (Graph 429/5xx or
unreachable, the LLM down) is retried until the retry horizon, measured from the message's
own timestamp (the clock Meta and the user go by, kept by every queue with the task, and the
one the 24-hour window is measured from), or until that window closes, whichever is first;
its attempts are not counted. A failure of unknown kind (a bug, a store error) spends one of
`max_attempts`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# a free-form reply can be sent for 24 hours after the user's message (DOMAIN.md §3)
REPLY_WINDOW_S: Final = 24 * 3600.0


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
    horizon_s: float = 3600.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the next attempt after `attempt` failed."""
        raw = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return raw * (1.0 - self.jitter * self.rand())

    def exhausted(self, attempt: int) -> bool:
        """True once `attempt` failed attempts leave no retry."""
        return attempt >= self.max_attempts

    def deadline(self, since: float) -> float:
        """The last moment a known transient failure of a message sent at `since` is retried:
        the horizon, or the close of the user's 24-hour window if that comes first."""
        return since + min(self.horizon_s, REPLY_WINDOW_S)

    def delay_since(self, age_s: float) -> float:
        """The wait after a known transient failure of a message `age_s` seconds old: half its
        age (so the tries grow by half each time, with no attempt count to keep), between the
        base and the cap, with jitter."""
        raw = min(self.cap_s, max(self.base_s, age_s / 2.0))
        return raw * (1.0 - self.jitter * self.rand())
