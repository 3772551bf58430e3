"""Which store the processes share the send rate and breakers through."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from pyloto_cli import backends
from pyloto_cli.adapters.shared_limits.sqlite import SqliteSharedLimits
from pyloto_cli.settings import Settings


async def chosen(settings: Settings) -> object:
    async with contextlib.AsyncExitStack() as stack:
        return await backends.open_shared_limits(backends.Shared(settings, stack))


async def test_a_lone_process_paces_itself(make_settings: Callable[..., Settings]) -> None:
    assert await chosen(make_settings()) is None


async def test_the_workers_of_serve_share_their_state_file(
    make_settings: Callable[..., Settings],
) -> None:
    child = make_settings(parent_pid=os.getpid())
    assert isinstance(await chosen(child), SqliteSharedLimits)
    memory = make_settings(parent_pid=os.getpid(), session_store_backend="memory")
    assert await chosen(memory) is None  # no file to share
