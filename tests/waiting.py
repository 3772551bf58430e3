"""Waiting in tests: poll a condition to a deadline instead of sleeping a guessed time.

A fixed sleep is either too short on a loaded machine (a flaky failure) or too long everywhere
(a slow suite); a poll returns as soon as the condition holds and fails loudly when it never does.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
_INTERVAL_S = 0.01


async def wait_until(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    within: float = DEFAULT_TIMEOUT_S,
    interval: float = _INTERVAL_S,
    what: str = "condition",
) -> T:
    """Call `check` (sync or async) until it returns something truthy, and return that; raise
    AssertionError naming `what` once `within` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return cast("T", result)
        if loop.time() >= deadline:
            raise AssertionError(f"{what}: not met within {within:g} s")
        await asyncio.sleep(interval)  # the poll's pace, not a guess at when it holds


def poll_until(
    check: Callable[[], T],
    *,
    within: float = DEFAULT_TIMEOUT_S,
    interval: float = _INTERVAL_S,
    what: str = "condition",
) -> T:
    """`wait_until` for code without an event loop (blocking checks, subprocesses)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not met within {within:g} s")
        time.sleep(interval)  # the poll's pace, not a guess at when it holds
