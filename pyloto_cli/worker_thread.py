"""`pyloto serve`'s worker on a thread of its own, with its own event loop and runtime.

On one event loop the webhook's 200 would wait behind whatever the worker's callbacks are doing
(parsing LLM answers, building payloads). On its own thread the worker is preempted instead, so
the ack waits at most for the GIL. The worker's `Roles` open their own LLM and Graph clients,
and Redis or Firestore clients when those are chosen (they belong to the loop that opened them),
but share the web loop's SQLite files (`backends.SqliteFiles`): one writer thread and one group
commit per file for both loops. The web loop wakes the worker after each enqueue with
`call_soon_threadsafe`.

The memory queue belongs to one loop, so with it the worker stays on the web loop
(`bootstrap.run_worker`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pyloto_cli import loops
from pyloto_cli.backends import SqliteFiles
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.errors import WorkerFailed
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.streaming import Runner
from pyloto_cli.ports import NO_METRICS, Metrics
from pyloto_cli.settings import QueueBackend, Settings
from pyloto_cli.web.intake import Intake

_log = get_logger("worker")


@dataclass(frozen=True, slots=True)
class _Running:
    loop: asyncio.AbstractEventLoop
    worker: Runner
    stop: asyncio.Event


def threadable(settings: Settings) -> bool:
    """Whether `serve` runs its worker on a thread: a worker is wanted and its queue is one
    other loops can share (SQLite, Redis, Pub/Sub), not one loop's memory queue."""
    shared = (QueueBackend.SQLITE, QueueBackend.REDIS, QueueBackend.PUBSUB)
    pulls_shared = settings.queue_backend in shared
    return settings.worker_enabled and pulls_shared


def _thread_main(
    settings: Settings,
    sqlite: SqliteFiles,
    started: concurrent.futures.Future[_Running],
    on_failure: Callable[[], None],
    metrics: Metrics,
) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        async with open_roles(settings, sqlite=sqlite, metrics=metrics) as roles:
            worker = await roles.runner()
            if not started.set_running_or_notify_cancel():
                return  # serve stopped waiting (it is shutting down): close and end
            started.set_result(_Running(asyncio.get_running_loop(), worker, stop))
            await worker.run(stop)

    try:
        loops.run(main())
    except BaseException as exc:  # reported to serve if it happened while starting
        if not started.done():
            started.set_exception(exc)
            return
        _log.exception("worker_failed", extra={"fields": {"error": type(exc).__name__}})
        on_failure()  # a web role that acks and never answers must not go on


@contextlib.asynccontextmanager
async def worker_thread(
    settings: Settings,
    sqlite: SqliteFiles,
    intake: Intake,
    on_failure: Callable[[], None],
    metrics: Metrics = NO_METRICS,
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Run a worker on its own thread for the block; raises if its roles cannot open.

    `sqlite` are the web loop's open SQLite files, to share; `intake.notify` wakes the
    worker. `on_failure` is called (from the worker's thread) if the worker ends by an error
    after it started; `serve` stops itself then. Yields `stop`: stop the worker (its grace,
    then the release of what it still holds) and wait until it has; the block's end does too.
    """
    started: concurrent.futures.Future[_Running] = concurrent.futures.Future()
    thread = threading.Thread(
        target=_thread_main,
        args=(settings, sqlite, started, on_failure, metrics),
        name="pyloto-worker",
        daemon=True,
    )
    thread.start()
    try:
        running = await asyncio.wrap_future(started)
    except Exception as exc:
        await asyncio.to_thread(thread.join)
        raise WorkerFailed(f"the worker could not start: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        await asyncio.to_thread(thread.join)
        raise

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # its loop ended: the worker failed
            running.loop.call_soon_threadsafe(running.worker.notify)

    async def stop() -> None:
        with contextlib.suppress(RuntimeError):  # the loop already ended (the worker failed)
            running.loop.call_soon_threadsafe(running.stop.set)
        await asyncio.to_thread(thread.join)

    intake.wakers.append(wake)
    log_event(_log, "worker_started", logging.DEBUG, mode="thread")
    try:
        yield stop
    finally:
        intake.wakers.remove(wake)
        await stop()
