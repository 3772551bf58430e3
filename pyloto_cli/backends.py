"""Adapter selection for the composition root: a table per port, from the backend named in
the settings to the function that opens it.

Only `bootstrap.Roles` calls these. Every adapter is entered on the caller's exit stack,
so it is closed in reverse order. SDK-backed modules are imported only when chosen: the
embedded defaults need neither redis nor the Google clients installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.pipeline.media import MediaConfig, MediaReader
from pyloto_cli.ports import (
    NO_METRICS,
    DeadLetterStore,
    Deduper,
    MessageQueue,
    Metrics,
    QueueAdmin,
    Responder,
    Sender,
    SessionStore,
    SharedBreakers,
    SharedBuckets,
    StatusStore,
    TaskMemos,
    TaskRescheduler,
    TaskSink,
    TaskStream,
)
from pyloto_cli.private_files import private_dir
from pyloto_cli.settings import QueueBackend, Settings, StoreBackend

if TYPE_CHECKING:
    from pyloto_cli.domain.breaker import Breaker, CircuitBreaker
    from pyloto_cli.web.tasks_auth import TaskAuthenticator

Stack = contextlib.AsyncExitStack
T = TypeVar("T")


class SqliteFiles:
    """The SQLite files open in this process, by path: one `SqliteDatabase` (one writer thread,
    one group commit) per file, however many runtimes use it.

    `serve` runs its worker on a thread with its own event loop and its own `Roles`; those are
    given the web loop's `SqliteFiles`, so both write queue.db and state.db through the same
    writer threads (a `SqliteDatabase` serves callers on any loop). A file is closed by the
    stack that opened it, so the worker's closes first.
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
    _openai: Any = None

    async def sqlite_db(self, name: str) -> SqliteDatabase:
        """`<data_dir>/<name>`, opened once per process."""
        synchronous = self.settings.sqlite_synchronous.value
        return await self.sqlite.open(self.settings.data_dir / name, synchronous, self.stack)

    async def state_db(self) -> SqliteDatabase:
        """`<data_dir>/state.db`: sessions, dedupe markers, task memos, statuses, dead letters."""
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

    async def openai(self) -> Any:
        """One `AsyncOpenAI` for the LLM stages and the transcriber (one connection pool)."""
        if self._openai is None:
            from pyloto_cli.adapters.llm.openai import open_openai_client

            self._openai = await self.stack.enter_async_context(open_openai_client(self.settings))
        return self._openai

    async def firestore(self) -> Any:
        """One Firestore `AsyncClient` for every Firestore adapter (GOOGLE_CLOUD_PROJECT)."""
        if self._firestore is None:
            from pyloto_cli.adapters.firestore_db import FirestoreDatabase

            db = FirestoreDatabase(
                self.settings.google_cloud_project,
                address=self.settings.firestore_emulator_host,
            )
            self._firestore = (await self.stack.enter_async_context(db)).client
        return self._firestore


@dataclass(frozen=True, slots=True)
class PushParts:
    """What a push queue (Cloud Tasks) adds for `/tasks/process`."""

    auth: TaskAuthenticator
    scheduler: TaskRescheduler
    dead_letters: DeadLetterStore


@dataclass(frozen=True, slots=True)
class StreamParts:
    """What a streaming queue (Pub/Sub) adds: the stream workers connect to, and the store
    of the dead letters it does not keep itself."""

    stream: TaskStream
    dead_letters: DeadLetterStore
    push_auth: TaskAuthenticator | None = None  # `/pubsub/push` is served only with one


@dataclass(frozen=True, slots=True)
class QueueParts:
    """The queue's parts: every backend has a sink; pull backends also lease (`queue`), push
    backends have `push`, streaming backends `stream`."""

    sink: TaskSink
    queue: MessageQueue | None
    admin: QueueAdmin | None
    push: PushParts | None = None
    stream: StreamParts | None = None


# --- the tables: one opener per backend, the module imported only when it is chosen ----------

QueueOpener = Callable[[Shared, RetryPolicy], Awaitable[QueueParts]]
Opener = Callable[[Shared], Awaitable[T]]


async def _memory_queue(shared: Shared, policy: RetryPolicy) -> QueueParts:
    from pyloto_cli.adapters.queue.memory import MemoryMessageQueue

    memory = await shared.stack.enter_async_context(MemoryMessageQueue(policy))
    return QueueParts(memory, memory, memory)


async def _sqlite_queue(shared: Shared, policy: RetryPolicy) -> QueueParts:
    from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue

    queue = SqliteMessageQueue(await shared.sqlite_db("queue.db"), policy)
    opened = await shared.stack.enter_async_context(queue)
    return QueueParts(opened, opened, opened)


async def _redis_queue(shared: Shared, policy: RetryPolicy) -> QueueParts:
    from pyloto_cli.adapters.queue.redis_streams import RedisStreamsQueue

    prefix = shared.settings.redis_prefix
    streams = RedisStreamsQueue(await shared.redis(), policy, prefix=prefix)
    opened = await shared.stack.enter_async_context(streams)
    return QueueParts(opened, opened, opened)


async def _cloud_tasks_queue(shared: Shared, policy: RetryPolicy) -> QueueParts:
    """A push queue: no lease; pyloto's policy is applied by `/tasks/process` instead."""
    from pyloto_cli.adapters.queue.cloud_tasks import CloudTasksConfig, CloudTasksSink
    from pyloto_cli.adapters.queue.cloud_tasks_admin import CloudTasksAdmin
    from pyloto_cli.web.tasks_auth import build_task_authenticator

    auth = build_task_authenticator(shared.settings)  # refuses an open /tasks/process
    sink = CloudTasksSink(CloudTasksConfig.from_settings(shared.settings))
    opened = await shared.stack.enter_async_context(sink)
    dead = await open_dead_letters(shared)
    admin = CloudTasksAdmin(opened, dead)
    return QueueParts(opened, None, admin, PushParts(auth, opened, dead))


async def _pubsub_queue(shared: Shared, policy: RetryPolicy) -> QueueParts:
    """A streaming queue: workers hold each message while it runs; pyloto's policy is applied
    by the stream worker, its dead letters kept in the session store's backend."""
    from pyloto_cli.adapters.queue.cloud_tasks_admin import CloudTasksAdmin
    from pyloto_cli.adapters.queue.pubsub import PubSubConfig, PubSubSink, PubSubStream, prepare
    from pyloto_cli.web.tasks_auth import build_pubsub_push_authenticator

    config = PubSubConfig.from_settings(shared.settings)
    push_auth = build_pubsub_push_authenticator(shared.settings)  # refuses a half-configured one
    await asyncio.to_thread(prepare, config)  # one clear error, before anything is served
    sink = await shared.stack.enter_async_context(PubSubSink(config))
    stream = await shared.stack.enter_async_context(PubSubStream(config))
    dead = await open_dead_letters(shared)
    parts = StreamParts(stream, dead, push_auth)
    return QueueParts(sink, None, CloudTasksAdmin(sink, dead), stream=parts)


QUEUES: dict[QueueBackend, QueueOpener] = {
    QueueBackend.SQLITE: _sqlite_queue,
    QueueBackend.MEMORY: _memory_queue,
    QueueBackend.REDIS: _redis_queue,
    QueueBackend.CLOUD_TASKS: _cloud_tasks_queue,
    QueueBackend.PUBSUB: _pubsub_queue,
}


async def _memory_sessions(shared: Shared) -> SessionStore:
    from pyloto_cli.adapters.sessions.memory import MemorySessionStore

    return await shared.stack.enter_async_context(MemorySessionStore())


async def _sqlite_sessions(shared: Shared) -> SessionStore:
    from pyloto_cli.adapters.sessions.sqlite import SqliteSessionStore

    store = SqliteSessionStore(await shared.state_db())
    return await shared.stack.enter_async_context(store)


async def _redis_sessions(shared: Shared) -> SessionStore:
    from pyloto_cli.adapters.sessions.redis import RedisSessionStore

    store = RedisSessionStore(await shared.redis(), prefix=shared.settings.redis_prefix)
    return await shared.stack.enter_async_context(store)


async def _firestore_sessions(shared: Shared) -> SessionStore:
    from pyloto_cli.adapters.sessions.firestore import FirestoreSessionStore

    store = FirestoreSessionStore(client=await shared.firestore())
    return await shared.stack.enter_async_context(store)


SESSIONS: dict[StoreBackend, Opener[SessionStore]] = {
    StoreBackend.SQLITE: _sqlite_sessions,
    StoreBackend.MEMORY: _memory_sessions,
    StoreBackend.REDIS: _redis_sessions,
    StoreBackend.FIRESTORE: _firestore_sessions,
}


async def _memory_deduper(shared: Shared) -> Deduper:
    from pyloto_cli.adapters.dedupe.memory import MemoryDeduper

    return await shared.stack.enter_async_context(MemoryDeduper())


async def _sqlite_deduper(shared: Shared) -> Deduper:
    from pyloto_cli.adapters.dedupe.sqlite import SqliteDeduper

    return await shared.stack.enter_async_context(SqliteDeduper(await shared.state_db()))


async def _redis_deduper(shared: Shared) -> Deduper:
    from pyloto_cli.adapters.dedupe.redis import RedisDeduper

    deduper = RedisDeduper(await shared.redis(), prefix=shared.settings.redis_prefix)
    return await shared.stack.enter_async_context(deduper)


async def _firestore_deduper(shared: Shared) -> Deduper:
    from pyloto_cli.adapters.dedupe.firestore import FirestoreDeduper

    deduper = FirestoreDeduper(client=await shared.firestore())
    return await shared.stack.enter_async_context(deduper)


DEDUPERS: dict[StoreBackend, Opener[Deduper]] = {
    StoreBackend.SQLITE: _sqlite_deduper,
    StoreBackend.MEMORY: _memory_deduper,
    StoreBackend.REDIS: _redis_deduper,
    StoreBackend.FIRESTORE: _firestore_deduper,
}


async def _memory_statuses(shared: Shared) -> StatusStore:
    from pyloto_cli.adapters.statuses.memory import MemoryStatusStore

    return await shared.stack.enter_async_context(MemoryStatusStore())


async def _sqlite_statuses(shared: Shared) -> StatusStore:
    from pyloto_cli.adapters.statuses.sqlite import SqliteStatusStore

    return await shared.stack.enter_async_context(SqliteStatusStore(await shared.state_db()))


async def _redis_statuses(shared: Shared) -> StatusStore:
    from pyloto_cli.adapters.statuses.redis import RedisStatusStore

    store = RedisStatusStore(await shared.redis(), prefix=shared.settings.redis_prefix)
    return await shared.stack.enter_async_context(store)


async def _firestore_statuses(shared: Shared) -> StatusStore:
    from pyloto_cli.adapters.statuses.firestore import FirestoreStatusStore

    store = FirestoreStatusStore(client=await shared.firestore())
    return await shared.stack.enter_async_context(store)


# Delivery statuses live beside the sessions, in the same backend (SQLite: state.db); they are
# high-volume and append-only, so they stay out of the session documents.
STATUSES: dict[StoreBackend, Opener[StatusStore]] = {
    StoreBackend.SQLITE: _sqlite_statuses,
    StoreBackend.MEMORY: _memory_statuses,
    StoreBackend.REDIS: _redis_statuses,
    StoreBackend.FIRESTORE: _firestore_statuses,
}


async def _memory_dead_letters(shared: Shared) -> DeadLetterStore:
    from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore

    return await shared.stack.enter_async_context(MemoryDeadLetterStore())


async def _sqlite_dead_letters(shared: Shared) -> DeadLetterStore:
    from pyloto_cli.adapters.deadletters.sqlite import SqliteDeadLetterStore

    store = SqliteDeadLetterStore(await shared.state_db())
    return await shared.stack.enter_async_context(store)


async def _redis_dead_letters(shared: Shared) -> DeadLetterStore:
    from pyloto_cli.adapters.deadletters.redis import RedisDeadLetterStore

    store = RedisDeadLetterStore(await shared.redis(), prefix=shared.settings.redis_prefix)
    return await shared.stack.enter_async_context(store)


async def _firestore_dead_letters(shared: Shared) -> DeadLetterStore:
    from pyloto_cli.adapters.deadletters.firestore import FirestoreDeadLetterStore

    store = FirestoreDeadLetterStore(client=await shared.firestore())
    return await shared.stack.enter_async_context(store)


# A push queue's dead letters live in the session store's backend (a pull queue keeps its own).
DEAD_LETTERS: dict[StoreBackend, Opener[DeadLetterStore]] = {
    StoreBackend.SQLITE: _sqlite_dead_letters,
    StoreBackend.MEMORY: _memory_dead_letters,
    StoreBackend.REDIS: _redis_dead_letters,
    StoreBackend.FIRESTORE: _firestore_dead_letters,
}


async def _memory_memos(shared: Shared) -> TaskMemos:
    from pyloto_cli.adapters.memos.memory import MemoryTaskMemos

    return await shared.stack.enter_async_context(MemoryTaskMemos())


async def _sqlite_memos(shared: Shared) -> TaskMemos:
    from pyloto_cli.adapters.memos.sqlite import SqliteTaskMemos

    return await shared.stack.enter_async_context(SqliteTaskMemos(await shared.state_db()))


async def _redis_memos(shared: Shared) -> TaskMemos:
    from pyloto_cli.adapters.memos.redis import RedisTaskMemos

    memos = RedisTaskMemos(await shared.redis(), prefix=shared.settings.redis_prefix)
    return await shared.stack.enter_async_context(memos)


async def _firestore_memos(shared: Shared) -> TaskMemos:
    from pyloto_cli.adapters.memos.firestore import FirestoreTaskMemos

    memos = FirestoreTaskMemos(client=await shared.firestore())
    return await shared.stack.enter_async_context(memos)


# Task memos live beside the dedupe markers, in the same backend (SQLite: state.db): both are
# per-message records a retry reads before doing the work again.
MEMOS: dict[StoreBackend, Opener[TaskMemos]] = {
    StoreBackend.SQLITE: _sqlite_memos,
    StoreBackend.MEMORY: _memory_memos,
    StoreBackend.REDIS: _redis_memos,
    StoreBackend.FIRESTORE: _firestore_memos,
}


async def open_queue(shared: Shared, policy: RetryPolicy) -> QueueParts:
    """The queue backend named by QUEUE_BACKEND."""
    return await QUEUES[shared.settings.queue_backend](shared, policy)


async def open_sessions(shared: Shared) -> SessionStore:
    """The session store named by SESSION_STORE_BACKEND."""
    return await SESSIONS[shared.settings.session_store_backend](shared)


async def open_deduper(shared: Shared) -> Deduper:
    """The deduper named by DEDUPE_BACKEND."""
    return await DEDUPERS[shared.settings.dedupe_backend](shared)


async def open_memos(shared: Shared) -> TaskMemos:
    """Task memos, in the deduper's backend (DEDUPE_BACKEND)."""
    return await MEMOS[shared.settings.dedupe_backend](shared)


async def open_statuses(shared: Shared) -> StatusStore:
    """Delivery statuses, in the session store's backend (SESSION_STORE_BACKEND)."""
    return await STATUSES[shared.settings.session_store_backend](shared)


async def open_dead_letters(shared: Shared) -> DeadLetterStore:
    """A push queue's dead letters, in the session store's backend (SESSION_STORE_BACKEND)."""
    return await DEAD_LETTERS[shared.settings.session_store_backend](shared)


class SharedLimits(SharedBuckets, SharedBreakers, Protocol):
    """Send pacing and breaker state every process of a deployment shares."""


async def open_shared_limits(shared: Shared) -> SharedLimits | None:
    """Where the processes share the send rate and the breakers: Redis when REDIS_URL is set
    (every host); else, for the worker processes of `serve --workers N` (PYLOTO_PARENT_PID),
    their state.db when the sessions are in SQLite; None otherwise (a lone process paces
    itself, without a write to the file per send)."""
    settings = shared.settings
    if settings.redis_url:
        from pyloto_cli.adapters.shared_limits.redis import RedisSharedLimits

        limits = RedisSharedLimits(await shared.redis(), prefix=settings.redis_prefix)
        return await shared.stack.enter_async_context(limits)
    siblings = settings.parent_pid is not None
    if siblings and settings.session_store_backend is StoreBackend.SQLITE:
        from pyloto_cli.adapters.shared_limits.sqlite import SqliteSharedLimits

        local = SqliteSharedLimits(await shared.state_db())
        return await shared.stack.enter_async_context(local)
    return None


async def open_responder(
    shared: Shared,
    metrics: Metrics = NO_METRICS,
    breakers: SharedBreakers | None = None,
) -> Responder:
    """The three LLM stages with an OpenAI key, else the offline stand-in; behind the reply
    cache when PYLOTO_REPLY_CACHE is on. With `breakers`, the LLM breaker's opening is shared."""
    settings, stack = shared.settings, shared.stack
    responder = await _open_llm_responder(shared, metrics, breakers)
    if not settings.reply_cache:
        return responder
    from pyloto_cli.adapters.llm.cache import CachingResponder

    cached = CachingResponder.from_settings(responder, settings)
    return await stack.enter_async_context(cached)


async def _open_llm_responder(
    shared: Shared, metrics: Metrics, breakers: SharedBreakers | None
) -> Responder:
    settings, stack = shared.settings, shared.stack
    if settings.llm_active:
        from pyloto_cli.adapters.llm.openai import OpenAIChatModel
        from pyloto_cli.domain.breaker import CircuitBreaker
        from pyloto_cli.pipeline.responder import LLMResponder

        client = await shared.openai()
        local = CircuitBreaker(settings.llm_breaker_failures, settings.llm_breaker_cooldown)
        breaker = await _shared_breaker(stack, local, breakers, "llm")
        responder = LLMResponder(
            OpenAIChatModel(client), settings, breaker=breaker, metrics=metrics
        )
        return await stack.enter_async_context(responder)
    from pyloto_cli.adapters.llm.offline import OfflineResponder

    return await stack.enter_async_context(OfflineResponder.from_settings(settings))


async def _shared_breaker(
    stack: Stack,
    local: CircuitBreaker,
    shared: SharedBreakers | None,
    name: str,
) -> Breaker:
    """`local`, or with `shared` the breaker whose opening stops the calls of every process."""
    if shared is None:
        return local
    from pyloto_cli.pipeline.shared_breaker import SharedBreaker

    return await stack.enter_async_context(SharedBreaker(local, shared, name))


async def open_sender(
    settings: Settings, stack: Stack, limits: SharedLimits | None = None
) -> Sender:
    """The Graph API sender with an access token, else the dry-run sender. With `limits`, the
    per-number send rate and the Graph breaker's opening are shared by every process."""
    if settings.whatsapp_access_token is not None:
        from pyloto_cli.adapters.sender.graph import GraphSender, graph_breaker, open_graph_client

        client = await stack.enter_async_context(open_graph_client(settings))
        # Meta unreachable from one process pauses the sends of all
        breaker = await _shared_breaker(stack, graph_breaker(settings), limits, "graph")
        sender = GraphSender.from_settings(client, settings, shared=limits, breaker=breaker)
        return await stack.enter_async_context(sender)
    from pyloto_cli.adapters.sender.dry_run import DryRunSender

    return await stack.enter_async_context(DryRunSender())


async def open_media(shared: Shared) -> MediaReader | None:
    """What reads a user's voice notes, images and documents for the LLM stages: None with
    the offline responder (it answers media from the webhook alone); no downloads without an
    access token (locations and contacts are still read as text)."""
    settings, stack = shared.settings, shared.stack
    if not settings.llm_active:
        return None
    config = MediaConfig(
        data_dir=settings.data_dir,
        max_bytes=settings.media_max_bytes,
        keep_s=settings.media_keep_seconds,
        document_max_pages=settings.document_max_pages,
        memo_ttl_s=settings.dedupe_ttl_seconds,
        safe_reply=settings.safe_reply,
    )
    if settings.whatsapp_access_token is None:
        return MediaReader(config)
    from pyloto_cli.adapters.llm.openai import OpenAITranscriber
    from pyloto_cli.adapters.media.graph import GraphMediaFetcher, open_media_client

    client = await stack.enter_async_context(open_media_client(settings))
    fetcher = await stack.enter_async_context(GraphMediaFetcher.from_settings(client, settings))
    transcriber = OpenAITranscriber(
        await shared.openai(),
        model=settings.transcribe_model,
        timeout_s=settings.transcribe_timeout,
    )
    return MediaReader(config, fetcher=fetcher, transcriber=transcriber)


METRICS_DIR = "metrics"


def open_metrics(settings: Settings, *, shared: bool, fresh: bool) -> Metrics:
    """This process's metrics: none unless PYLOTO_METRICS is on.

    `shared` (`serve --workers N` and its children): prometheus-client's multiprocess mode in
    `<data dir>/metrics`, so the web process's `/metrics` adds up every process's counters.
    The library reads `PROMETHEUS_MULTIPROC_DIR` when it is first imported, so it is set here,
    before that import; `fresh` (the web process, before its children start) empties the
    directory first, so that no earlier run's counts are added in.
    """
    if not settings.metrics:
        return NO_METRICS
    directory: Path | None = None
    if shared:
        directory = (settings.data_dir / METRICS_DIR).resolve()
        if fresh:
            shutil.rmtree(directory, ignore_errors=True)
        private_dir(settings.data_dir)  # first: its own mode, not the umask's
        private_dir(directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from pyloto_cli.adapters.metrics import PrometheusMetrics

    return PrometheusMetrics(directory)
