"""Send pacing per business number and per recipient, shared by every worker task of a process.

Each limit is a GCRA token bucket with reservations: a caller reserves the next free slot at
once (no lock, no polling, first come first served) and sleeps until it. Meta's limits
(DOMAIN.md §4): 80 messages/s per business number by default (mark-as-read and typing count),
and per recipient a burst of 45, then 1 message per 6 s. A send that would wait longer than
`max_wait_s` reserves nothing and raises RateLimited with `retry_after` = the wait, so a
worker is never held for long: the task goes back to the queue, spending no attempt.

Given `shared` buckets (Redis, or the host's SQLite file), the per-number bucket is taken there
instead, so every process of a deployment together keeps to the number's rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyloto_cli.domain.errors import RateLimited
from pyloto_cli.ports import SharedBuckets

_PRUNE_AT = 10_000  # recipients tracked before idle buckets are dropped


@dataclass(slots=True)
class Bucket:
    """A GCRA bucket: one token every `interval_s`, at most `burst` at once."""

    interval_s: float
    burst: int
    tat: float = 0.0  # theoretical arrival time of the next token

    def wait(self, now: float) -> float:
        """Seconds until a token is free (0 if one is free now)."""
        tolerance = self.interval_s * (self.burst - 1)
        return max(0.0, self.tat - tolerance - now)

    def reserve(self, now: float) -> float:
        """Take the next token; returns how long to wait for it."""
        delay = self.wait(now)
        self.tat = max(self.tat, now) + self.interval_s
        return delay

    def block_for(self, now: float, seconds: float) -> None:
        """No token for `seconds` (the server said so), then the bucket refills from empty."""
        tolerance = self.interval_s * (self.burst - 1)
        self.tat = max(self.tat, now + seconds + tolerance)

    def idle(self, now: float) -> bool:
        """True when the bucket is full again (forgetting it changes nothing)."""
        return self.tat <= now


class SendLimiter:
    """Paces sends per business phone number and per recipient; one instance per process."""

    def __init__(
        self,
        rate_per_number: float = 80.0,
        *,
        number_burst: int | None = None,
        pair_burst: int = 45,
        pair_interval_s: float = 6.0,
        max_wait_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
    ) -> None:
        if rate_per_number <= 0:
            raise ValueError("rate_per_number must be positive")
        self.rate_per_number = rate_per_number
        # a tenth of a second's worth: smooth enough that no 1 s window sees more than the rate
        self.number_burst = number_burst or max(1, math.floor(rate_per_number / 10))
        self.pair_burst = pair_burst
        self.pair_interval_s = pair_interval_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._shared = shared
        self._numbers: dict[str, Bucket] = {}
        self._pairs: dict[tuple[str, str], Bucket] = {}

    async def acquire(self, phone_number_id: str, recipient: str | None = None) -> None:
        """Wait for a slot on the number (and the recipient, if given), or raise RateLimited.

        The recipient's slot comes first: a throttled recipient does not hold a number slot.
        """
        if recipient is not None:
            pair = self._pair(phone_number_id, recipient)
            await self._take(pair, "pair_rate_limit")
        if self._shared is not None:
            await self._take_shared(self._shared, phone_number_id)
            return
        await self._take(self._number(phone_number_id), "number_rate_limit")

    def penalize(self, phone_number_id: str, recipient: str, seconds: float) -> None:
        """Meta answered 131056 for this pair: hold its sends for `seconds`."""
        self._pair(phone_number_id, recipient).block_for(self._clock(), seconds)

    def pair_wait(self, phone_number_id: str, recipient: str) -> float:
        """Seconds until the next send to `recipient` may go (0 if it may go now)."""
        bucket = self._pairs.get((phone_number_id, recipient))
        return bucket.wait(self._clock()) if bucket is not None else 0.0

    async def _take(self, bucket: Bucket, reason: str) -> None:
        now = self._clock()
        wait = bucket.wait(now)
        if wait > self.max_wait_s:
            raise RateLimited(reason, retry_after=wait)
        delay = bucket.reserve(now)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _take_shared(self, shared: SharedBuckets, phone_number_id: str) -> None:
        """Take a token when one is free, waiting up to `max_wait_s` in all: the processes
        compete for each token rather than booking slots ahead."""
        key, interval = f"number:{phone_number_id}", 1.0 / self.rate_per_number
        deadline = self._clock() + self.max_wait_s
        while (wait := await shared.take(key, interval, self.number_burst)) > 0:
            if self._clock() + wait > deadline:
                raise RateLimited("number_rate_limit", retry_after=wait)
            await asyncio.sleep(wait)  # until a token is free; another process may take it

    def _number(self, phone_number_id: str) -> Bucket:
        bucket = self._numbers.get(phone_number_id)
        if bucket is None:
            bucket = Bucket(1.0 / self.rate_per_number, self.number_burst)
            self._numbers[phone_number_id] = bucket
        return bucket

    def _pair(self, phone_number_id: str, recipient: str) -> Bucket:
        key = (phone_number_id, recipient)
        bucket = self._pairs.get(key)
        if bucket is None:
            if len(self._pairs) >= _PRUNE_AT:
                self._prune()
            bucket = Bucket(self.pair_interval_s, self.pair_burst)
            self._pairs[key] = bucket
        return bucket

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, b in self._pairs.items() if b.idle(now)]:
            del self._pairs[key]
