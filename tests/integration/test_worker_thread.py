"""serve's worker on its own thread: it answers what the web loop stores, shares the SQLite
files, and a worker that cannot start is one clear error."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.bootstrap import Roles, open_roles
from pyloto_cli.domain.errors import PylotoError
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import QueueAdmin
from pyloto_cli.settings import Settings
from pyloto_cli.web.intake import Intake
from pyloto_cli.worker_thread import threadable, worker_thread
from tests.conftest import stamped_fixture
from tests.waiting import wait_until


def _unexpected() -> None:
    pytest.fail("the worker failed")


@contextlib.asynccontextmanager
async def _web(settings: Settings) -> AsyncIterator[tuple[Roles, Intake]]:
    """The web loop's roles: intake only."""
    async with open_roles(settings) as roles:
        yield roles, await roles.intake()


async def test_the_thread_answers_what_the_web_loop_enqueued(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(poll_interval=30.0)  # only a wake can explain a fast answer
    assert threadable(settings)
    (task,) = split_webhook(stamped_fixture("webhooks/text.json"), time.time())
    before = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    async with _web(settings) as (roles, web):
        async with worker_thread(settings, roles.sqlite, web, on_failure=_unexpected):
            # the interpreter is the process's, not the worker's to tune
            assert sys.getswitchinterval() == before
            assert gc.get_threshold() == thresholds
            (worker,) = (t for t in threading.enumerate() if t.name == "pyloto-worker")
            assert worker.native_id is not None
            web_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            assert os.getpriority(os.PRIO_PROCESS, worker.native_id) == web_nice
            result = await web.sink.enqueue([task])
            assert result.enqueued == (task.task_id,)
            web.notify()
            await _eventually(lambda: web.sessions.exists(task.conversation_key))
            session = await web.sessions.load(task.conversation_key)
            assert session is not None
            assert [turn.role.value for turn in session.turns][-2:] == ["user", "assistant"]
            assert web.admin is not None
            admin = web.admin
            await _eventually(lambda: _emptied(admin))  # the ack follows the session save
            assert (await admin.stats()).depth == 0
        assert sys.getswitchinterval() == before
        assert gc.get_threshold() == thresholds
        assert roles.sqlite.paths() == {
            settings.data_dir / "queue.db",
            settings.data_dir / "state.db",
        }


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    await wait_until(check, within=5.0)


async def _emptied(admin: QueueAdmin) -> bool:
    return (await admin.stats()).depth == 0


async def test_both_runtimes_write_through_one_database_per_file(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with _web(settings) as (roles, web):
        queue_db = roles.sqlite.get(settings.data_dir / "queue.db")
        async with open_roles(settings, sqlite=roles.sqlite) as worker_roles:
            worker = await worker_roles.worker()
            assert worker.queue is not web.sink
            assert worker_roles.sqlite.get(settings.data_dir / "queue.db") is queue_db
        # the worker's runtime closed; the web runtime's files are still open and usable
        assert web.admin is not None
        assert (await web.admin.stats()).depth == 0


async def test_a_worker_that_cannot_start_is_an_error_naming_why(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        openai_api_key="sk-test",
        openai_base_url="http://127.0.0.1:9/v1",
        prompts_dir=tmp_path / "missing",
    )
    async with _web(settings) as (roles, web):
        with pytest.raises(PylotoError, match=r"worker could not start.*PYLOTO_PROMPTS_DIR"):
            async with worker_thread(settings, roles.sqlite, web, on_failure=_unexpected):
                pytest.fail("the block must not run")
        assert web.wakers == []


def test_memory_queues_and_push_queues_keep_the_worker_on_the_web_loop(
    make_settings: Callable[..., Settings],
) -> None:
    assert not threadable(make_settings(queue_backend="memory"))
    assert not threadable(make_settings(worker_enabled=False))
    assert threadable(make_settings(queue_backend="redis", redis_url="redis://127.0.0.1:1"))


async def test_a_worker_that_fails_after_starting_calls_on_failure(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve stops itself then (SIGTERM to itself): it must not ack what nobody answers."""

    async def broken_run(self: Worker, stop: asyncio.Event) -> None:
        raise RuntimeError("a bug in the worker loop")

    monkeypatch.setattr(Worker, "run", broken_run)
    settings = make_settings()
    failed = threading.Event()
    async with (
        _web(settings) as (roles, web),
        worker_thread(settings, roles.sqlite, web, on_failure=failed.set),
    ):
        assert await asyncio.to_thread(failed.wait, 5.0)
        web.notify()  # the worker's loop is gone: waking it is a no-op, not an error
    assert web.wakers == []


async def test_serve_giving_up_while_the_worker_starts_ends_the_thread_quietly(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled during start-up (Ctrl-C, a failing neighbour): no worker_failed, no SIGTERM."""
    import pyloto_cli.worker_thread as module

    opening = threading.Event()
    real_open = open_roles

    @contextlib.asynccontextmanager
    async def slow_open(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        opening.set()
        # start-up latency of the fake, not a wait: the thread cannot be cancelled mid-open, so it
        # must finish opening on its own, after serve has given up
        await asyncio.sleep(0.3)
        async with real_open(*args, **kwargs) as runtime:
            yield runtime

    monkeypatch.setattr(module, "open_roles", slow_open)
    settings = make_settings()
    async with _web(settings) as (roles, web):
        thread = worker_thread(settings, roles.sqlite, web, _unexpected)
        starting = asyncio.create_task(_enter_and_hold(thread))
        await asyncio.to_thread(opening.wait, 5.0)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert web.wakers == []
    assert not [t for t in threading.enumerate() if t.name == "pyloto-worker"]


async def _enter_and_hold(manager: contextlib.AbstractAsyncContextManager[object]) -> None:
    async with manager:
        await asyncio.Event().wait()  # held until the test cancels it
