"""`pyloto serve`'s worker on a thread of its own, with its own event loop and runtime.

On one event loop the webhook's 200 waits behind whatever the worker's callbacks are doing
(parsing LLM answers, building payloads): tens of milliseconds in bursts. On its own thread the
worker is preempted instead: a thread waiting for the GIL gets it within the switch interval,
which `serve` sets to 1 ms (Python's default is 5 ms). The worker's runtime opens its own LLM
and Graph clients, and Redis or Firestore clients when those are chosen (they belong to the
loop that opened them), but shares the web runtime's SQLite files (`backends.SqliteFiles`): one
writer thread and one group commit per file for both loops, and no lock contention between
them. The web loop wakes the worker after each enqueue with `call_soon_threadsafe`.

The worker thread runs `PYLOTO_WORKER_NICE` (10) nice steps below the web thread (Linux
schedules threads one by one): when both want the CPU, the OS runs the webhook's request first,
so the 200 does not queue behind LLM answers being parsed. It changes the order, not the amount,
of work: the worker gets every cycle the web thread leaves.

A collection by Python's garbage collector holds the GIL from start to end, whichever thread
runs it, and a webhook that arrives meanwhile waits. Python's thresholds (700, 10, 10) run a
full collection every hundred young ones. `PYLOTO_GC_THRESHOLDS` (1000, 10, 1000) makes full
ones rare, and young ones too: the count that triggers one is allocations minus deallocations,
which the messages in flight keep near level, so a young collection comes every second or few
(in the bench at 100 webhooks a second, 3 or 4 in 7 s, 5 to 12 ms each). A threshold of 100
(session 12) made one per webhook (0.1 ms each, and a 0.6 ms older one every ten): 6 % of
pyloto's CPU per message (docs/performance.md, session 14).

The memory queue belongs to one loop, so with it the worker stays on the web loop
(`bootstrap.run_worker`), as it does with PYLOTO_WORKER_THREAD=false.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pyloto_cli import loops
from pyloto_cli.bootstrap import Runtime, open_runtime
from pyloto_cli.domain.errors import WorkerFailed
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.settings import QueueBackend, Settings

_log = get_logger("worker")
SWITCH_INTERVAL_S = 0.001


@dataclass(frozen=True, slots=True)
class _Running:
    loop: asyncio.AbstractEventLoop
    runtime: Runtime
    stop: asyncio.Event


def threadable(settings: Settings) -> bool:
    """Whether `serve` runs its worker on a thread: on (PYLOTO_WORKER_THREAD) and a pull queue
    other processes' loops could share too (SQLite, Redis), not one loop's memory queue."""
    pulls_shared = settings.queue_backend in (QueueBackend.SQLITE, QueueBackend.REDIS)
    return settings.worker_enabled and settings.worker_thread and pulls_shared


def lower_thread_priority(steps: int) -> int | None:
    """Make the calling thread `steps` nice steps less favoured (at most 19); Linux only,
    where each thread has its own nice value. Returns the new value, or None if unchanged."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:  # e.g. a sandbox that forbids it: run at the same priority
        log_event(_log, "worker_priority_unchanged", logging.WARNING, error=str(exc))
        return None
    return nice


def _thread_main(
    settings: Settings,
    web: Runtime,
    started: concurrent.futures.Future[_Running],
    on_failure: Callable[[], None],
) -> None:
    lower_thread_priority(settings.worker_nice)

    async def main() -> None:
        stop = asyncio.Event()
        async with open_runtime(settings, sqlite=web.sqlite) as runtime:
            if runtime.worker is None:  # a push queue: serve does not start this thread
                raise RuntimeError("no worker to run: the queue backend pushes tasks")
            if not started.set_running_or_notify_cancel():
                return  # serve stopped waiting (it is shutting down): close and end
            started.set_result(_Running(asyncio.get_running_loop(), runtime, stop))
            await runtime.worker.run(stop)

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
    settings: Settings, web: Runtime, on_failure: Callable[[], None]
) -> AsyncIterator[None]:
    """Run a worker on its own thread for the block; raises if its runtime cannot open.

    `web` is the web loop's runtime: its SQLite files are shared, its `notify` wakes the
    worker. `on_failure` is called (from the worker's thread) if the worker ends by an error
    after it started; `serve` stops itself then. For the block, the GIL switch interval is
    `SWITCH_INTERVAL_S` and the garbage collector's thresholds are `settings.gc_thresholds`.
    """
    switch = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(*settings.gc_thresholds)
    try:
        async with _running_thread(settings, web, on_failure):
            yield
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(switch)


@contextlib.asynccontextmanager
async def _running_thread(
    settings: Settings, web: Runtime, on_failure: Callable[[], None]
) -> AsyncIterator[None]:
    started: concurrent.futures.Future[_Running] = concurrent.futures.Future()
    thread = threading.Thread(
        target=_thread_main,
        args=(settings, web, started, on_failure),
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
            running.loop.call_soon_threadsafe(running.runtime.notify)

    web.wakers.append(wake)
    log_event(_log, "worker_started", logging.DEBUG, mode="thread")
    try:
        yield
    finally:
        web.wakers.remove(wake)
        with contextlib.suppress(RuntimeError):  # the loop already ended (the worker failed)
            running.loop.call_soon_threadsafe(running.stop.set)
        await asyncio.to_thread(thread.join)
