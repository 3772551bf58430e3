"""A circuit breaker whose opening every process sees (the LLM's, Graph's: one name each).

Each process counts its own failures with a `CircuitBreaker`. When it opens, the time it stays
open until is written to `SharedBreakers` (Redis, or the host's SQLite file); every process
reads that time every `refresh_s` seconds and refuses calls until then, as if its own breaker
had opened. The breaker's callers are synchronous (`allow` sits on the hot path), so the shared
time is read in the background and written by a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from pyloto_cli.domain.breaker import BreakerState, CircuitBreaker
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import SharedBreakers

_log = get_logger("breaker")
REFRESH_S = 0.25


class SharedBreaker:
    """A `Breaker` over a local `CircuitBreaker` and the shared open time of `name`."""

    def __init__(
        self,
        local: CircuitBreaker,
        store: SharedBreakers,
        name: str,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local = local
        self.name = name
        self._store = store
        self._refresh_s = refresh_s
        self._clock = clock
        self._open_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._open_until = await self._store.open_until(self.name)
        self._poller = asyncio.create_task(self._poll(), name=f"breaker:{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._tasks:
            await asyncio.wait(self._tasks)

    @property
    def state(self) -> BreakerState:
        """OPEN while another process's opening lasts, else the local breaker's state."""
        if self._open_until > self._clock():
            return BreakerState.OPEN
        return self.local.state

    def allow(self) -> bool:
        """False while the breaker is open here or anywhere else."""
        if self._open_until > self._clock():
            return False
        return self.local.allow()

    def retry_in(self, probe_wait_s: float = 1.0) -> float:
        """The rest of another process's opening, else what the local breaker says."""
        elsewhere = self._open_until - self._clock()
        return max(elsewhere, self.local.retry_in(probe_wait_s))

    def record_success(self) -> None:
        """A call succeeded (closes the local breaker; another's opening runs its course)."""
        self.local.record_success()

    def record_failure(self) -> None:
        """A call failed; if that opens the local breaker, every process is told."""
        was_open = self.local.state is BreakerState.OPEN
        self.local.record_failure()
        if self.local.state is BreakerState.OPEN and not was_open:
            until = self._clock() + self.local.cooldown_s
            self._open_until = max(self._open_until, until)
            task = asyncio.get_running_loop().create_task(self._publish(until))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _publish(self, until: float) -> None:
        try:
            await self._store.open(self.name, until)
        except Exception as exc:  # the local breaker still holds; the others learn no more
            log_event(
                _log,
                "breaker_share_failed",
                logging.WARNING,
                breaker=self.name,
                error=type(exc).__name__,
            )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                self._open_until = await self._store.open_until(self.name)
            except Exception as exc:  # keep the last known time; try again next round
                log_event(
                    _log, "breaker_refresh_failed", breaker=self.name, error=type(exc).__name__
                )
