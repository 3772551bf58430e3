"""Event loops: uvloop when it is installed (it comes with uvicorn[standard]), else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's `new_event_loop`, or None (asyncio's default) without uvloop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - e.g. Windows
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new loop of `loop_factory()`, in the calling thread."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
