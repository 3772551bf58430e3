"""The composition root: the one place that picks adapters from settings, opens and closes them.

`open_runtime(settings)` enters every adapter on one AsyncExitStack and yields a `Runtime`; the
ASGI lifespan, `pyloto worker`, replay and bench all use it. SDK-backed adapters are imported
only when their backend is chosen, so the embedded defaults need no cloud package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.process import Pipeline, PipelineConfig
from pyloto_cli.pipeline.retry import RetryPolicy
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import (
    Deduper,
    MessageQueue,
    QueueAdmin,
    Responder,
    Sender,
    SessionStore,
    StatusStore,
    TaskSink,
)
from pyloto_cli.settings import QueueBackend, Settings, StoreBackend

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
    responder: Responder
    sender: Sender
    statuses: StatusStore
    pipeline: Pipeline
    worker: Worker | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def notify(self) -> None:
        """Wake this process's worker after an enqueue."""
        if self.worker is not None:
            self.worker.notify()

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


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The pipeline's knobs, read from settings."""
    return PipelineConfig(
        history_turns=settings.history_turns,
        dedupe_ttl_s=settings.dedupe_ttl_seconds,
        claim_ttl_s=max(settings.lease_seconds * 2, 60.0),
        mark_read=settings.mark_read,
        typing_indicator=settings.typing_indicator,
    )


async def _open_queue(
    settings: Settings, stack: contextlib.AsyncExitStack, policy: RetryPolicy
) -> tuple[TaskSink, MessageQueue | None, QueueAdmin | None]:
    backend = settings.queue_backend
    if backend is QueueBackend.MEMORY:
        from pyloto_cli.adapters.queue.memory import MemoryMessageQueue

        memory = await stack.enter_async_context(MemoryMessageQueue(policy))
        return memory, memory, memory
    if backend is QueueBackend.SQLITE:
        from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue

        sqlite = await stack.enter_async_context(
            SqliteMessageQueue(
                settings.data_dir / "queue.db",
                policy,
                synchronous=settings.sqlite_synchronous.value,
            )
        )
        return sqlite, sqlite, sqlite
    raise NotImplementedError(f"QUEUE_BACKEND={backend.value} is not wired yet")


async def _open_stores(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[SessionStore, Deduper, StatusStore]:
    from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
    from pyloto_cli.adapters.dedupe.sqlite import SqliteDeduper
    from pyloto_cli.adapters.sessions.memory import MemorySessionStore
    from pyloto_cli.adapters.sessions.sqlite import SqliteSessionStore
    from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
    from pyloto_cli.adapters.statuses.sqlite import SqliteStatusStore

    uses_sqlite = StoreBackend.SQLITE in (settings.session_store_backend, settings.dedupe_backend)
    state_db: SqliteDatabase | None = None
    if uses_sqlite:
        state_db = await stack.enter_async_context(
            SqliteDatabase(
                settings.data_dir / "state.db", synchronous=settings.sqlite_synchronous.value
            )
        )
    sessions: SessionStore
    deduper: Deduper
    statuses: StatusStore
    if settings.session_store_backend is StoreBackend.SQLITE and state_db is not None:
        sessions = await stack.enter_async_context(SqliteSessionStore(state_db))
        statuses = await stack.enter_async_context(SqliteStatusStore.from_settings(settings))
    elif settings.session_store_backend is StoreBackend.MEMORY:
        sessions = await stack.enter_async_context(MemorySessionStore())
        statuses = await stack.enter_async_context(MemoryStatusStore())
    else:
        raise NotImplementedError(f"SESSION_STORE_BACKEND={settings.session_store_backend}")
    if settings.dedupe_backend is StoreBackend.SQLITE and state_db is not None:
        deduper = await stack.enter_async_context(SqliteDeduper(state_db))
    elif settings.dedupe_backend is StoreBackend.MEMORY:
        deduper = await stack.enter_async_context(MemoryDeduper())
    else:
        raise NotImplementedError(f"DEDUPE_BACKEND={settings.dedupe_backend}")
    return sessions, deduper, statuses


async def _open_responder(settings: Settings, stack: contextlib.AsyncExitStack) -> Responder:
    if settings.llm_active:
        from pyloto_cli.adapters.llm.openai import OpenAIResponder, open_openai_client

        client = await stack.enter_async_context(open_openai_client(settings))
        return await stack.enter_async_context(OpenAIResponder(client, settings))
    from pyloto_cli.adapters.llm.offline import OfflineResponder

    return await stack.enter_async_context(OfflineResponder())


async def _open_sender(settings: Settings, stack: contextlib.AsyncExitStack) -> Sender:
    if settings.whatsapp_access_token is not None:
        from pyloto_cli.adapters.sender.graph import GraphSender, open_graph_client

        client = await stack.enter_async_context(open_graph_client(settings))
        return await stack.enter_async_context(GraphSender.from_settings(client, settings))
    from pyloto_cli.adapters.sender.dry_run import DryRunSender

    return await stack.enter_async_context(DryRunSender())


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Open every adapter the settings name; close them all on exit, in reverse order."""
    async with contextlib.AsyncExitStack() as stack:
        policy = retry_policy(settings)
        sink, queue, admin = await _open_queue(settings, stack, policy)
        sessions, deduper, statuses = await _open_stores(settings, stack)
        responder = await _open_responder(settings, stack)
        sender = await _open_sender(settings, stack)
        pipeline = Pipeline(
            sessions=sessions,
            deduper=deduper,
            responder=responder,
            sender=sender,
            statuses=statuses,
            config=pipeline_config(settings),
        )
        worker = None
        if queue is not None:
            worker = Worker(
                queue,
                pipeline,
                concurrency=settings.concurrency,
                lease_s=settings.lease_seconds,
                poll_interval=settings.poll_interval,
                grace_s=settings.shutdown_grace_seconds,
            )
        log_event(
            _log,
            "runtime_opened",
            queue=settings.queue_backend.value,
            sessions=settings.session_store_backend.value,
            dedupe=settings.dedupe_backend.value,
            responder=type(responder).__name__,
            sender=type(sender).__name__,
        )
        yield Runtime(
            settings=settings,
            sink=sink,
            queue=queue,
            admin=admin,
            sessions=sessions,
            deduper=deduper,
            responder=responder,
            sender=sender,
            statuses=statuses,
            pipeline=pipeline,
            worker=worker,
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
