"""The composition root: the one place that picks adapters from settings, opens and closes them.

`open_roles(settings)` yields a `Roles` whose parts are built the first time they are asked
for, each entered on one AsyncExitStack and closed in reverse order on exit. A process builds
only the roles it plays:

- intake (`web.intake.Intake`): the webhook's sink, who to wake after an enqueue, readiness;
- processing (`pipeline.worker.Worker`): a pull queue's worker over the pipeline; on a
  streaming queue (Pub/Sub), `pipeline.streaming.StreamWorker` (`Roles.runner`);
- push (`web.tasks.PushRole`): the pipeline behind `/tasks/process`, with Cloud Tasks' auth,
  rescheduling and dead letters;
- admin (`ports.QueueAdmin`) and the stores, for the CLI's tools; the conversation desk
  (`pipeline.conversations.ConversationDesk`) for the admin API.

`serve`'s web process opens intake (and push on Cloud Tasks) and no LLM client; a worker opens
processing only. SDK-backed adapters are imported only when their backend is chosen, so the
embedded defaults need no cloud package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pyloto_cli import backends
from pyloto_cli.domain.errors import BackendUnavailable
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.conversation import ConversationRules, keyword_set
from pyloto_cli.pipeline.conversation_lease import ConversationLease
from pyloto_cli.pipeline.conversations import ConversationDesk
from pyloto_cli.pipeline.process import Pipeline, PipelineConfig
from pyloto_cli.pipeline.streaming import Runner, StreamWorker
from pyloto_cli.pipeline.window import ReengageTemplate, WindowRules
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import (
    NO_METRICS,
    Deduper,
    Metrics,
    QueueAdmin,
    Sender,
    SessionStore,
    StatusStore,
    TaskSink,
)
from pyloto_cli.settings import Settings
from pyloto_cli.web.intake import Intake
from pyloto_cli.web.pubsub_push import PubSubPushRole
from pyloto_cli.web.tasks import PushRole

_log = get_logger("bootstrap")
LEASE_MARGIN_S = 60.0


@dataclass(frozen=True, slots=True)
class Stores:
    """The state stores: sessions, dedupe markers, delivery statuses."""

    sessions: SessionStore
    deduper: Deduper
    statuses: StatusStore


class Roles:
    """One process's opened backends; each role is built on first use and then reused."""

    def __init__(
        self, settings: Settings, shared: backends.Shared, metrics: Metrics = NO_METRICS
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._shared = shared
        self._queue: backends.QueueParts | None = None
        self._stores: Stores | None = None
        self._pipeline: Pipeline | None = None
        self._sender: Sender | None = None
        self._limits: backends.SharedLimits | None = None
        self._limits_opened = False
        self._intake: Intake | None = None
        self._worker: Worker | None = None
        self._stream_worker: StreamWorker | None = None
        self._push: PushRole | None = None
        self._pubsub_push: PubSubPushRole | None = None

    @property
    def sqlite(self) -> backends.SqliteFiles:
        """The SQLite files open here, for another loop's `Roles` to share."""
        return self._shared.sqlite

    async def queue_parts(self) -> backends.QueueParts:
        """The queue backend's parts (opened once)."""
        if self._queue is None:
            self._queue = await backends.open_queue(self._shared, retry_policy(self.settings))
        return self._queue

    async def stores(self) -> Stores:
        """The session, dedupe and status stores (opened once)."""
        if self._stores is None:
            shared = self._shared
            sessions = await backends.open_sessions(shared)
            deduper = await backends.open_deduper(shared)
            statuses = await backends.open_statuses(shared)
            self._stores = Stores(sessions, deduper, statuses)
        return self._stores

    async def intake(self) -> Intake:
        """The webhook's role: the sink, the wakers, readiness. Opens no LLM or Graph client."""
        if self._intake is None:
            parts = await self.queue_parts()
            stores = await self.stores()
            self._intake = Intake(parts.sink, parts.admin, stores.sessions)
        return self._intake

    async def conversations(self) -> ConversationDesk:
        """The operator's desk over the session store (the admin API's role)."""
        sessions = (await self.stores()).sessions
        return ConversationDesk(sessions, history_turns=self.settings.history_turns)

    async def sink(self) -> TaskSink:
        """Where tasks are stored (every queue backend has one)."""
        return (await self.queue_parts()).sink

    async def pulls(self) -> bool:
        """Whether the queue backend leases tasks to workers (else it pushes them)."""
        return (await self.queue_parts()).queue is not None

    async def admin(self) -> QueueAdmin | None:
        """The queue's admin interface (None for a backend without one)."""
        return (await self.queue_parts()).admin

    async def pipeline(self) -> Pipeline:
        """The LLM responder, the sender and the pipeline over them and the stores."""
        if self._pipeline is None:
            parts = await self.queue_parts()
            stores = await self.stores()
            settings = self.settings
            limits = await self.shared_limits()
            responder = await backends.open_responder(self._shared, self.metrics, limits)
            sender = await self.sender()
            media = await backends.open_media(self._shared)
            memos = await backends.open_memos(self._shared)
            self._pipeline = Pipeline(
                sessions=stores.sessions,
                deduper=stores.deduper,
                responder=responder,
                sender=sender,
                statuses=stores.statuses,
                config=pipeline_config(settings, exclusive_queue=parts.queue is not None),
                metrics=self.metrics,
                media=media,
                memos=memos,
            )
        return self._pipeline

    async def sender(self) -> Sender:
        """The Graph sender with its limiter and breaker (dry-run without a token), opened
        once: the pipeline's, and `pyloto send`'s without a responder."""
        if self._sender is None:
            limits = await self.shared_limits() if self.settings.whatsapp_access_token else None
            stack = self._shared.stack
            self._sender = await backends.open_sender(self.settings, stack, limits)
        return self._sender

    async def shared_limits(self) -> backends.SharedLimits | None:
        """Where the processes share the send rate and the breakers (None: this process
        alone), opened once and only when something is paced or guarded."""
        settings = self.settings
        if not self._limits_opened and (
            settings.llm_active or settings.whatsapp_access_token is not None
        ):
            self._limits = await backends.open_shared_limits(self._shared)
            self._limits_opened = True
        return self._limits

    async def worker(self) -> Worker:
        """The processing role of a pull queue; raises for a push queue (nothing to pull)."""
        if self._worker is None:
            queue = (await self.queue_parts()).queue
            if queue is None:
                raise BackendUnavailable(
                    f"QUEUE_BACKEND={self.settings.queue_backend.value} pushes tasks:"
                    " there is nothing to pull"
                )
            settings = self.settings
            self._worker = Worker(
                queue,
                await self.pipeline(),
                policy=retry_policy(settings),
                concurrency=settings.concurrency,
                lease_s=settings.lease_seconds,
                poll_interval=settings.poll_interval,
                grace_s=settings.shutdown_grace_seconds,
                coalesce_window_s=settings.coalesce_window_seconds,
                coalesce_max=settings.coalesce_max,
                metrics=self.metrics,
            )
            self.announce("processing")
        return self._worker

    async def streams(self) -> bool:
        """Whether the queue backend streams tasks to connected workers (Pub/Sub)."""
        return (await self.queue_parts()).stream is not None

    async def runner(self) -> Runner:
        """The processing role, whatever the queue: the stream worker of a streaming queue,
        else the pull worker (raises for a push queue)."""
        stream = (await self.queue_parts()).stream
        if stream is None:
            return await self.worker()
        if self._stream_worker is None:
            settings = self.settings
            self._stream_worker = StreamWorker(
                stream.stream,
                await self.pipeline(),
                stream.dead_letters,
                policy=retry_policy(settings),
                concurrency=settings.concurrency,
                grace_s=settings.shutdown_grace_seconds,
                metrics=self.metrics,
            )
            self.announce("processing")
        return self._stream_worker

    async def push(self) -> PushRole | None:
        """What `/tasks/process` runs on a push queue; None on a pull queue."""
        push = (await self.queue_parts()).push
        if push is not None and self._push is None:
            pipeline = await self.pipeline()
            self._push = PushRole(
                pipeline=pipeline,
                auth=push.auth,
                scheduler=push.scheduler,
                dead_letters=push.dead_letters,
                policy=retry_policy(self.settings),
                lease=conversation_lease(self.settings, pipeline.deduper),
            )
            self.announce("push")
        return self._push

    async def pubsub_push(self) -> PubSubPushRole | None:
        """What `/pubsub/push` runs: on Pub/Sub with push authentication configured, else None."""
        stream = (await self.queue_parts()).stream
        if stream is None or stream.push_auth is None:
            return None
        if self._pubsub_push is None:
            self._pubsub_push = PubSubPushRole(
                pipeline=await self.pipeline(),
                auth=stream.push_auth,
                dead_letters=stream.dead_letters,
                policy=retry_policy(self.settings),
            )
        return self._pubsub_push

    def announce(self, role: str) -> None:
        """Log `runtime_opened` for `role`: once per process, by the role that processes
        (worker, push), or by `serve` for an intake that hands its tasks to other processes;
        the intake alone does not log, or a `serve` would say it twice."""
        settings, pipeline = self.settings, self._pipeline
        log_event(
            _log,
            "runtime_opened",
            role=role,
            queue=settings.queue_backend.value,
            sessions=settings.session_store_backend.value,
            dedupe=settings.dedupe_backend.value,
            responder=None if pipeline is None else type(pipeline.responder).__name__,
            sender=None if pipeline is None else type(pipeline.sender).__name__,
        )


@contextlib.asynccontextmanager
async def open_roles(
    settings: Settings,
    *,
    sqlite: backends.SqliteFiles | None = None,
    metrics: Metrics = NO_METRICS,
) -> AsyncIterator[Roles]:
    """A `Roles` over `settings`; everything it opened is closed on exit, in reverse order.

    `sqlite`: another loop's open SQLite files, to share (see `backends.SqliteFiles`).
    `metrics`: the process's one `Metrics` (`backends.open_metrics`), given to every role.
    """
    async with contextlib.AsyncExitStack() as stack:
        shared = backends.Shared(settings, stack, sqlite or backends.SqliteFiles())
        stack.callback(log_event, _log, "runtime_closed")  # runs last: everything is closed
        yield Roles(settings, shared, metrics)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The backoff policy every queue adapter is given."""
    return RetryPolicy(
        base_s=settings.retry_base_seconds,
        cap_s=settings.retry_cap_seconds,
        jitter=settings.retry_jitter,
        max_attempts=settings.max_attempts,
        horizon_s=settings.retry_horizon_seconds,
    )


def conversation_lease(settings: Settings, deduper: Deduper) -> ConversationLease:
    """One call per conversation at a time on `/tasks/process`; a lease outlives any call
    (Cloud Tasks' dispatch deadline: the LLM deadline, the wait and a margin), so only a dead
    holder's lease expires."""
    wait = settings.conversation_wait_seconds
    ttl = settings.llm_deadline + 2 * wait + LEASE_MARGIN_S
    return ConversationLease(deduper, wait_s=wait, ttl_s=ttl)


def pipeline_config(settings: Settings, *, exclusive_queue: bool = True) -> PipelineConfig:
    """The pipeline's knobs, read from settings."""
    return PipelineConfig(
        exclusive_queue=exclusive_queue,
        history_turns=settings.history_turns,
        dedupe_ttl_s=settings.dedupe_ttl_seconds,
        claim_ttl_s=max(settings.lease_seconds * 2, 60.0),
        mark_read=settings.mark_read,
        typing_indicator=settings.typing_indicator,
        conversation=ConversationRules(
            optout_keywords=keyword_set(settings.optout_keywords),
            optin_keywords=keyword_set(settings.optin_keywords),
            optout_reply=settings.optout_reply,
            optin_reply=settings.optin_reply,
            handoff_timeout_s=settings.handoff_timeout_seconds,
        ),
        window_rules=window_rules(settings),
        max_reply_parts=settings.max_reply_parts,
    )


def window_rules(settings: Settings) -> WindowRules:
    """The stale limit and the re-engagement template (when both its name and language are
    set; one alone is refused by the settings)."""
    name, language = settings.reengage_template, settings.reengage_template_lang
    template = ReengageTemplate(name, language) if name and language else None
    return WindowRules(stale_after_s=settings.stale_after_seconds, template=template)


@contextlib.asynccontextmanager
async def run_worker(worker: Runner | None) -> AsyncIterator[None]:
    """Run `worker` (if any) in the background on this loop for the duration of the block."""
    if worker is None:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name="pyloto-worker")
    try:
        yield
    finally:
        stop.set()
        await task
