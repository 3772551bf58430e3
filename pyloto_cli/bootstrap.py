"""The composition root: the one place that picks adapters from settings, opens and closes them.

`open_runtime(settings)` enters every adapter on one AsyncExitStack and yields a `Runtime`; the
ASGI lifespan, `pyloto worker`, replay and bench all use it. SDK-backed adapters are imported
only when their backend is chosen, so the embedded defaults need no cloud package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyloto_cli import backends
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.process import Pipeline, PipelineConfig
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import (
    DeadLetterStore,
    Deduper,
    MessageQueue,
    QueueAdmin,
    SessionStore,
    StatusStore,
    TaskSink,
)
from pyloto_cli.settings import Settings

if TYPE_CHECKING:
    from pyloto_cli.adapters.queue.cloud_tasks import CloudTasksSink
    from pyloto_cli.web.tasks_auth import TaskAuthenticator

_log = get_logger("bootstrap")


@dataclass(slots=True)
class Runtime:
    """Every opened adapter, the pipeline, and (for pull queues) the worker."""

    settings: Settings
    sink: TaskSink
    queue: MessageQueue | None
    admin: QueueAdmin | None
    sessions: SessionStore
    deduper: Deduper
    statuses: StatusStore
    # None in a process that only takes webhooks in (`serve --workers N`, `serve --no-worker`
    # on a pull queue): it opens no LLM client and no Graph client
    pipeline: Pipeline | None
    worker: Worker | None = None
    cloud_tasks: CloudTasksSink | None = None
    dead_letters: DeadLetterStore | None = None
    task_auth: TaskAuthenticator | None = None
    wakers: list[Callable[[], None]] = field(default_factory=list)  # e.g. worker processes
    sqlite: backends.SqliteFiles = field(default_factory=backends.SqliteFiles)

    @property
    def processing(self) -> Pipeline:
        """The pipeline; raises in a process that only takes webhooks in."""
        if self.pipeline is None:
            raise RuntimeError(
                "this process only takes webhooks in (its worker runs elsewhere): no pipeline"
            )
        return self.pipeline

    def notify(self) -> None:
        """Wake this process's worker, and any others registered, after an enqueue."""
        if self.worker is not None:
            self.worker.notify()
        for wake in self.wakers:
            wake()

    async def check_ready(self) -> dict[str, Any]:
        """Touch the queue and the stores; raises if one does not answer."""
        checks: dict[str, Any] = {}
        if self.admin is not None:
            stats = await self.admin.stats()
            checks["queue"] = {"backend": stats.backend, "depth": stats.depth, "dead": stats.dead}
        await self.sessions.exists("__readyz__")
        checks["sessions"] = "ok"
        return checks


def retry_policy(settings: Settings) -> RetryPolicy:
    """The backoff policy every queue adapter is given."""
    return RetryPolicy(
        base_s=settings.retry_base_seconds,
        cap_s=settings.retry_cap_seconds,
        jitter=settings.retry_jitter,
        max_attempts=settings.max_attempts,
    )


def pipeline_config(settings: Settings, *, exclusive_queue: bool = True) -> PipelineConfig:
    """The pipeline's knobs, read from settings."""
    return PipelineConfig(
        exclusive_queue=exclusive_queue,
        history_turns=settings.history_turns,
        dedupe_ttl_s=settings.dedupe_ttl_seconds,
        claim_ttl_s=max(settings.lease_seconds * 2, 60.0),
        mark_read=settings.mark_read,
        typing_indicator=settings.typing_indicator,
    )


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, sqlite: backends.SqliteFiles | None = None
) -> AsyncIterator[Runtime]:
    """Open every adapter the settings name; close them all on exit, in reverse order.

    `sqlite`: another runtime's open SQLite files, to share (see `backends.SqliteFiles`).
    """
    async with contextlib.AsyncExitStack() as stack:
        shared = backends.Shared(settings, stack, sqlite or backends.SqliteFiles())
        parts = await backends.open_queue(shared, retry_policy(settings))
        sessions = await backends.open_sessions(shared)
        deduper = await backends.open_deduper(shared)
        statuses = await backends.open_statuses(shared)
        queue = parts.queue
        pipeline = None
        if queue is None or settings.worker_enabled:
            pipeline = await _open_pipeline(
                settings, stack, (sessions, deduper, statuses), exclusive_queue=queue is not None
            )
        worker = None
        if queue is not None and pipeline is not None:
            worker = Worker(
                queue,
                pipeline,
                concurrency=settings.concurrency,
                lease_s=settings.lease_seconds,
                poll_interval=settings.poll_interval,
                grace_s=settings.shutdown_grace_seconds,
                coalesce_window_s=settings.coalesce_window_seconds,
                coalesce_max=settings.coalesce_max,
            )
        log_event(
            _log,
            "runtime_opened",
            queue=settings.queue_backend.value,
            sessions=settings.session_store_backend.value,
            dedupe=settings.dedupe_backend.value,
            responder=None if pipeline is None else type(pipeline.responder).__name__,
            sender=None if pipeline is None else type(pipeline.sender).__name__,
        )
        stack.callback(log_event, _log, "runtime_closed")  # runs last: everything is closed
        yield Runtime(
            settings=settings,
            sink=parts.sink,
            queue=queue,
            admin=parts.admin,
            sessions=sessions,
            deduper=deduper,
            statuses=statuses,
            pipeline=pipeline,
            worker=worker,
            cloud_tasks=parts.cloud_tasks,
            dead_letters=parts.dead_letters,
            task_auth=parts.task_auth,
            sqlite=shared.sqlite,
        )


async def _open_pipeline(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    stores: tuple[SessionStore, Deduper, StatusStore],
    *,
    exclusive_queue: bool,
) -> Pipeline:
    """The LLM responder, the sender and the pipeline over them (what a worker needs)."""
    sessions, deduper, statuses = stores
    responder = await backends.open_responder(settings, stack)
    sender = await backends.open_sender(settings, stack)
    return Pipeline(
        sessions=sessions,
        deduper=deduper,
        responder=responder,
        sender=sender,
        statuses=statuses,
        config=pipeline_config(settings, exclusive_queue=exclusive_queue),
    )


@contextlib.asynccontextmanager
async def run_worker(runtime: Runtime, *, enabled: bool = True) -> AsyncIterator[None]:
    """Run the runtime's worker in the background for the duration of the block."""
    if not enabled or runtime.worker is None:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.worker.run(stop), name="pyloto-worker")
    try:
        yield
    finally:
        stop.set()
        await task
