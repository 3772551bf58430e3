"""Adapter selection for the composition root: one function per port, keyed by the settings.

Only `bootstrap.open_runtime` calls these. Every adapter is entered on the caller's exit stack,
so it is closed in reverse order. SDK-backed modules are imported only when chosen: the
embedded defaults need neither redis nor the Google clients installed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.ports import (
    DeadLetterStore,
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

if TYPE_CHECKING:
    from pyloto_cli.adapters.queue.cloud_tasks import CloudTasksSink
    from pyloto_cli.web.tasks_auth import TaskAuthenticator

Stack = contextlib.AsyncExitStack


class SqliteFiles:
    """The SQLite files open in this process, by path: one `SqliteDatabase` (one writer thread,
    one group commit) per file, however many runtimes use it.

    `serve` runs its worker on a thread with its own event loop and its own runtime; that
    runtime is given the web runtime's `SqliteFiles`, so both write queue.db and state.db
    through the same writer threads (a `SqliteDatabase` serves callers on any loop). A file is
    closed by the stack of the runtime that opened it, so the worker's runtime closes first.
    """

    def __init__(self) -> None:
        self._open: dict[Path, SqliteDatabase] = {}

    def paths(self) -> set[Path]:
        """The files open now."""
        return set(self._open)

    def get(self, path: Path) -> SqliteDatabase | None:
        """The open database at `path`, if any."""
        return self._open.get(path)

    async def open(self, path: Path, synchronous: str, stack: Stack) -> SqliteDatabase:
        """The open database at `path`, opening it on `stack` if no runtime has yet."""
        db = self._open.get(path)  # both runtimes build `path` from the same settings.data_dir
        if db is None:
            db = await stack.enter_async_context(SqliteDatabase(path, synchronous=synchronous))
            self._open[path] = db
            stack.callback(self._open.pop, path, None)  # runs before the close above
        return db


@dataclass(slots=True)
class Shared:
    """Connections several adapters share: the SQLite files, one Redis, one Firestore."""

    settings: Settings
    stack: Stack
    sqlite: SqliteFiles = field(default_factory=SqliteFiles)
    _redis: Any = None
    _firestore: Any = None

    async def sqlite_db(self, name: str) -> SqliteDatabase:
        """`<data_dir>/<name>`, opened once per process."""
        synchronous = self.settings.sqlite_synchronous.value
        return await self.sqlite.open(self.settings.data_dir / name, synchronous, self.stack)

    async def state_db(self) -> SqliteDatabase:
        """`<data_dir>/state.db`: sessions, dedupe markers, statuses, dead letters."""
        return await self.sqlite_db("state.db")

    async def redis(self) -> Any:
        """One `redis.asyncio.Redis` for every Redis adapter (REDIS_URL)."""
        if self._redis is None:
            if not self.settings.redis_url:
                raise BackendUnavailable("redis: REDIS_URL is not set")
            from pyloto_cli.adapters.redis_db import RedisConnection

            conn = RedisConnection(self.settings.redis_url, role="shared")
            self._redis = (await self.stack.enter_async_context(conn)).client
        return self._redis

    async def firestore(self) -> Any:
        """One Firestore `AsyncClient` for every Firestore adapter (GOOGLE_CLOUD_PROJECT)."""
        if self._firestore is None:
            from pyloto_cli.adapters.firestore_db import FirestoreDatabase

            db = FirestoreDatabase(self.settings.google_cloud_project)
            self._firestore = (await self.stack.enter_async_context(db)).client
        return self._firestore


@dataclass(frozen=True, slots=True)
class QueueParts:
    """The queue's roles: every backend has a sink; pull backends also lease (`queue`)."""

    sink: TaskSink
    queue: MessageQueue | None
    admin: QueueAdmin | None
    cloud_tasks: CloudTasksSink | None = None
    dead_letters: DeadLetterStore | None = None
    task_auth: TaskAuthenticator | None = None


async def open_queue(shared: Shared, policy: RetryPolicy) -> QueueParts:
    """The queue backend named by QUEUE_BACKEND."""
    settings, stack = shared.settings, shared.stack
    backend = settings.queue_backend
    if backend is QueueBackend.MEMORY:
        from pyloto_cli.adapters.queue.memory import MemoryMessageQueue

        memory = await stack.enter_async_context(MemoryMessageQueue(policy))
        return QueueParts(memory, memory, memory)
    if backend is QueueBackend.REDIS:
        from pyloto_cli.adapters.queue.redis_streams import RedisStreamsQueue

        streams = RedisStreamsQueue(await shared.redis(), policy, prefix=settings.redis_prefix)
        redis_queue = await stack.enter_async_context(streams)
        return QueueParts(redis_queue, redis_queue, redis_queue)
    if backend is QueueBackend.CLOUD_TASKS:
        return await _open_cloud_tasks(shared)
    from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue

    sqlite = SqliteMessageQueue(await shared.sqlite_db("queue.db"), policy)
    opened = await stack.enter_async_context(sqlite)
    return QueueParts(opened, opened, opened)


async def _open_cloud_tasks(shared: Shared) -> QueueParts:
    from pyloto_cli.adapters.queue.cloud_tasks import CloudTasksConfig, CloudTasksSink
    from pyloto_cli.adapters.queue.cloud_tasks_admin import CloudTasksAdmin
    from pyloto_cli.web.tasks_auth import build_task_authenticator

    auth = build_task_authenticator(shared.settings)  # refuses an open /tasks/process
    sink = CloudTasksSink(CloudTasksConfig.from_settings(shared.settings))
    opened = await shared.stack.enter_async_context(sink)
    dead = await open_dead_letters(shared)
    admin = CloudTasksAdmin(opened, dead)
    return QueueParts(opened, None, admin, cloud_tasks=opened, dead_letters=dead, task_auth=auth)


async def open_dead_letters(shared: Shared) -> DeadLetterStore:
    """Where a push queue's dead letters live: the session store's backend."""
    backend = shared.settings.session_store_backend
    if backend is StoreBackend.FIRESTORE:
        from pyloto_cli.adapters.deadletters.firestore import FirestoreDeadLetterStore

        store = FirestoreDeadLetterStore(client=await shared.firestore())
        return await shared.stack.enter_async_context(store)
    if backend is StoreBackend.REDIS:
        from pyloto_cli.adapters.deadletters.redis import RedisDeadLetterStore

        redis_store = RedisDeadLetterStore(
            await shared.redis(), prefix=shared.settings.redis_prefix
        )
        return await shared.stack.enter_async_context(redis_store)
    if backend is StoreBackend.SQLITE:
        from pyloto_cli.adapters.deadletters.sqlite import SqliteDeadLetterStore

        sqlite_store = SqliteDeadLetterStore(await shared.state_db())
        return await shared.stack.enter_async_context(sqlite_store)
    from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore

    return await shared.stack.enter_async_context(MemoryDeadLetterStore())


async def open_sessions(shared: Shared) -> SessionStore:
    """The session store named by SESSION_STORE_BACKEND."""
    backend, stack = shared.settings.session_store_backend, shared.stack
    if backend is StoreBackend.MEMORY:
        from pyloto_cli.adapters.sessions.memory import MemorySessionStore

        return await stack.enter_async_context(MemorySessionStore())
    if backend is StoreBackend.REDIS:
        from pyloto_cli.adapters.sessions.redis import RedisSessionStore

        return await stack.enter_async_context(
            RedisSessionStore(await shared.redis(), prefix=shared.settings.redis_prefix)
        )
    if backend is StoreBackend.FIRESTORE:
        from pyloto_cli.adapters.sessions.firestore import FirestoreSessionStore

        fs = FirestoreSessionStore(client=await shared.firestore())
        return await stack.enter_async_context(fs)
    from pyloto_cli.adapters.sessions.sqlite import SqliteSessionStore

    return await stack.enter_async_context(SqliteSessionStore(await shared.state_db()))


async def open_deduper(shared: Shared) -> Deduper:
    """The deduper named by DEDUPE_BACKEND."""
    backend, stack = shared.settings.dedupe_backend, shared.stack
    if backend is StoreBackend.MEMORY:
        from pyloto_cli.adapters.dedupe.memory import MemoryDeduper

        return await stack.enter_async_context(MemoryDeduper())
    if backend is StoreBackend.REDIS:
        from pyloto_cli.adapters.dedupe.redis import RedisDeduper

        return await stack.enter_async_context(
            RedisDeduper(await shared.redis(), prefix=shared.settings.redis_prefix)
        )
    if backend is StoreBackend.FIRESTORE:
        from pyloto_cli.adapters.dedupe.firestore import FirestoreDeduper

        fs = FirestoreDeduper(client=await shared.firestore())
        return await stack.enter_async_context(fs)
    from pyloto_cli.adapters.dedupe.sqlite import SqliteDeduper

    return await stack.enter_async_context(SqliteDeduper(await shared.state_db()))


async def open_statuses(shared: Shared) -> StatusStore:
    """Delivery statuses beside the sessions, in the same backend (SQLite: state.db).

    Statuses are high-volume and append-only; they stay out of the session documents.
    """
    settings, stack = shared.settings, shared.stack
    backend = settings.session_store_backend
    if backend is StoreBackend.MEMORY:
        from pyloto_cli.adapters.statuses.memory import MemoryStatusStore

        return await stack.enter_async_context(MemoryStatusStore())
    if backend is StoreBackend.REDIS:
        from pyloto_cli.adapters.statuses.redis import RedisStatusStore

        redis = RedisStatusStore(await shared.redis(), prefix=settings.redis_prefix)
        return await stack.enter_async_context(redis)
    if backend is StoreBackend.FIRESTORE:
        from pyloto_cli.adapters.statuses.firestore import FirestoreStatusStore

        fs = FirestoreStatusStore(client=await shared.firestore())
        return await stack.enter_async_context(fs)
    from pyloto_cli.adapters.statuses.sqlite import SqliteStatusStore

    return await stack.enter_async_context(SqliteStatusStore(await shared.state_db()))


async def open_responder(settings: Settings, stack: Stack) -> Responder:
    """The three LLM stages with an OpenAI key, else the offline stand-in; behind the reply
    cache when PYLOTO_REPLY_CACHE is on."""
    responder = await _open_llm_responder(settings, stack)
    if not settings.reply_cache:
        return responder
    from pyloto_cli.adapters.llm.cache import CachingResponder

    cached = CachingResponder.from_settings(responder, settings)
    return await stack.enter_async_context(cached)


async def _open_llm_responder(settings: Settings, stack: Stack) -> Responder:
    if settings.llm_active:
        from pyloto_cli.adapters.llm.openai import OpenAIChatModel, open_openai_client
        from pyloto_cli.pipeline.responder import LLMResponder

        client = await stack.enter_async_context(open_openai_client(settings))
        return await stack.enter_async_context(LLMResponder(OpenAIChatModel(client), settings))
    from pyloto_cli.adapters.llm.offline import OfflineResponder

    return await stack.enter_async_context(OfflineResponder.from_settings(settings))


async def open_sender(settings: Settings, stack: Stack) -> Sender:
    """The Graph API sender with an access token, else the dry-run sender."""
    if settings.whatsapp_access_token is not None:
        from pyloto_cli.adapters.sender.graph import GraphSender, open_graph_client

        client = await stack.enter_async_context(open_graph_client(settings))
        return await stack.enter_async_context(GraphSender.from_settings(client, settings))
    from pyloto_cli.adapters.sender.dry_run import DryRunSender

    return await stack.enter_async_context(DryRunSender())
