"""Waiting in tests: poll a condition to a deadline instead of sleeping a guessed time.

A fixed sleep is either too short on a loaded machine (a flaky failure) or too long everywhere
(a slow suite); a poll returns as soon as the condition holds and fails loudly when it never does.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
_INTERVAL_S = 0.01


@overload
async def wait_until(
    check: Callable[[], Awaitable[T]],
    *,
    within: float = ...,
    interval: float = ...,
    what: str = ...,
    details: Callable[[], str] | None = ...,
) -> T: ...


@overload
async def wait_until(
    check: Callable[[], T],
    *,
    within: float = ...,
    interval: float = ...,
    what: str = ...,
    details: Callable[[], str] | None = ...,
) -> T: ...


async def wait_until(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    within: float = DEFAULT_TIMEOUT_S,
    interval: float = _INTERVAL_S,
    what: str = "condition",
    details: Callable[[], str] | None = None,
) -> T:
    """Call `check` (sync or async) until it returns something truthy, and return that; raise
    AssertionError naming `what` (and `details()`, e.g. a log's tail) once `within` seconds
    have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return cast("T", result)
        if loop.time() >= deadline:
            raise AssertionError(_timed_out(what, within, details))
        await asyncio.sleep(interval)  # the poll's pace, not a guess at when it holds


def poll_until(
    check: Callable[[], T],
    *,
    within: float = DEFAULT_TIMEOUT_S,
    interval: float = _INTERVAL_S,
    what: str = "condition",
    details: Callable[[], str] | None = None,
) -> T:
    """`wait_until` for code without an event loop (blocking checks, subprocesses)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, within, details))
        time.sleep(interval)  # the poll's pace, not a guess at when it holds


def _timed_out(what: str, within: float, details: Callable[[], str] | None) -> str:
    message = f"{what}: not met within {within:g} s"
    return f"{message}\n{details()}" if details is not None else message
