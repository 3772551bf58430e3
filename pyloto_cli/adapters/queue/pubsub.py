"""Google Cloud Pub/Sub: `TaskSink` (one message per task) and `TaskStream` (streaming pull).

The webhook publishes each task with an ordering key made from its conversation (a hash: no
phone number reaches Pub/Sub's metadata) and the task id as an attribute; `enqueue` returns only
once Pub/Sub confirmed every publish, else it raises `TransientError` and the webhook answers
503. A failed ordered publish pauses its key in the client; the key is resumed at once, so the
conversation's next webhook is published rather than refused.

Workers stream from the subscription through the official client: flow control keeps at most
`max_outstanding` messages unsettled, the client's lease management extends their ack deadlines
while they run, and with message ordering it hands out a key's next message only once the one
before was acked or nacked. A worker that dies leaves its messages to come back after the ack
deadline.

The clients are the library's threaded ones: the subscriber's callback runs on the client's
thread pool and only hands the message to the caller's event loop; a publish future is awaited
through `asyncio.wrap_future`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Self

import google.cloud.pubsub_v1 as pubsub_v1
import grpc
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.auth.exceptions import DefaultCredentialsError
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from pyloto_cli.adapters.queue.google_batch import once_each, raise_batch_failure
from pyloto_cli.domain.errors import BackendUnavailable, TransientError
from pyloto_cli.domain.task import (
    EnqueueResult,
    QueueStats,
    Task,
    read_stored,
)
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import Delivery
from pyloto_cli.settings import Settings

TASK_ID_ATTRIBUTE = "task_id"
DEAD_LETTER_SUFFIX = "-sub"  # the dead-letter topic's subscription: without one it drops all
PUBLISH_TIMEOUT_S = 10.0  # a webhook waits at most this long for Pub/Sub's confirmation
_CALL_TIMEOUT_S = 10.0
MIN_ACK_DEADLINE_S = 10  # Pub/Sub's limits for a subscription's ack deadline
MAX_ACK_DEADLINE_S = 600
_SEEN_CAP = 10_000  # deliveries counted here when Pub/Sub does not count them (no DLQ policy)
_GOOGLE_ADDRESS = "pubsub.googleapis.com"

_log = get_logger("queue.pubsub")

# what the publisher retries by itself within PUBLISH_TIMEOUT_S (the library's own defaults)
_PUBLISH_RETRY = gretry.Retry(
    initial=0.1,
    maximum=2.0,
    multiplier=2.0,
    timeout=PUBLISH_TIMEOUT_S,
    predicate=gretry.if_exception_type(
        gexc.Aborted,
        gexc.Cancelled,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.ResourceExhausted,
        gexc.ServiceUnavailable,
        gexc.Unknown,
    ),
)


def ordering_key(conversation_key: str) -> str:
    """The ordering key of a conversation: its sha256 in hex, so no phone number is metadata."""
    return hashlib.sha256(conversation_key.encode()).hexdigest()


def ack_deadline_for(lease_s: float) -> int:
    """The subscription's ack deadline: the worker's lease, within Pub/Sub's limits."""
    return int(min(MAX_ACK_DEADLINE_S, max(MIN_ACK_DEADLINE_S, round(lease_s))))


@dataclass(frozen=True, slots=True)
class PubSubConfig:
    """Where tasks are published and pulled from."""

    project: str
    topic: str
    subscription: str
    dead_letter_topic: str
    max_delivery_attempts: int = 10
    ack_deadline_s: int = 30
    create: bool = False
    emulator_host: str | None = None

    @property
    def topic_path(self) -> str:
        """`projects/P/topics/T`."""
        return f"projects/{self.project}/topics/{self.topic}"

    @property
    def subscription_path(self) -> str:
        """`projects/P/subscriptions/S`."""
        return f"projects/{self.project}/subscriptions/{self.subscription}"

    @property
    def dead_letter_topic_path(self) -> str:
        """`projects/P/topics/D`."""
        return f"projects/{self.project}/topics/{self.dead_letter_topic}"

    @property
    def dead_letter_subscription(self) -> str:
        """The dead-letter topic's subscription (`<dead-letter topic>-sub`)."""
        return f"{self.dead_letter_topic}{DEAD_LETTER_SUFFIX}"

    @property
    def address(self) -> str:
        """The emulator's host:port, or Google's endpoint."""
        return self.emulator_host or _GOOGLE_ADDRESS

    @classmethod
    def from_settings(cls, settings: Settings) -> PubSubConfig:
        """The config from settings; raises BackendUnavailable naming what is missing."""
        project = settings.pubsub_project_id
        if not project:
            raise BackendUnavailable(
                "Pub/Sub queue backend needs PUBSUB_PROJECT (or GOOGLE_CLOUD_PROJECT)"
            )
        return cls(
            project=project,
            topic=settings.pubsub_topic,
            subscription=settings.pubsub_subscription,
            dead_letter_topic=settings.pubsub_dead_letter_topic,
            max_delivery_attempts=settings.pubsub_max_delivery_attempts,
            ack_deadline_s=ack_deadline_for(settings.lease_seconds),
            create=settings.pubsub_create,
            emulator_host=settings.pubsub_emulator_host,
        )


def open_publisher(config: PubSubConfig) -> Any:
    """A `PublisherClient` with message ordering (the emulator's when set); `stop()` it."""
    options = pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    try:
        if config.emulator_host:
            channel = grpc.insecure_channel(config.emulator_host)
            transport = PublisherGrpcTransport(channel=channel)
            return pubsub_v1.PublisherClient(publisher_options=options, transport=transport)
        return pubsub_v1.PublisherClient(publisher_options=options)
    except DefaultCredentialsError as exc:
        raise BackendUnavailable(
            f"Pub/Sub at {config.address} needs Application Default Credentials: {exc}"
        ) from exc


def open_subscriber(config: PubSubConfig) -> Any:
    """A `SubscriberClient` (the emulator's when set); `close()` it."""
    try:
        if config.emulator_host:
            channel = grpc.insecure_channel(config.emulator_host)
            return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        return pubsub_v1.SubscriberClient()
    except DefaultCredentialsError as exc:
        raise BackendUnavailable(
            f"Pub/Sub at {config.address} needs Application Default Credentials: {exc}"
        ) from exc


def prepare(config: PubSubConfig) -> None:
    """Check (or, with `config.create`, create what is missing of) the topic, the subscription
    with ordering and its dead-letter policy, and the dead-letter topic with its subscription.
    Blocking: run it on a thread. Raises BackendUnavailable with the command that fixes it."""
    publisher, subscriber = open_publisher(config), open_subscriber(config)
    try:
        if config.create:
            _create_missing(config, publisher, subscriber)
        publisher.get_topic(topic=config.topic_path, timeout=_CALL_TIMEOUT_S)
        subscriber.get_subscription(subscription=config.subscription_path, timeout=_CALL_TIMEOUT_S)
    except gexc.NotFound as exc:
        raise BackendUnavailable(
            f"Pub/Sub topic {config.topic_path} or subscription {config.subscription_path} "
            f"does not exist at {config.address}: create them (see docs/pubsub.md), or set "
            "PYLOTO_PUBSUB_CREATE=true"
        ) from exc
    except gexc.GoogleAPICallError as exc:
        raise BackendUnavailable(
            f"Pub/Sub at {config.address} cannot be reached: {exc.message or exc}"
        ) from exc
    finally:
        publisher.stop()
        subscriber.close()


def _create_missing(config: PubSubConfig, publisher: Any, subscriber: Any) -> None:
    def create(call: Callable[..., Any], **request: Any) -> None:
        try:
            call(request=request, timeout=_CALL_TIMEOUT_S)
        except gexc.AlreadyExists:
            return
        log_event(_log, "pubsub_created", name=request["name"])

    project = f"projects/{config.project}"
    create(publisher.create_topic, name=config.topic_path)
    create(publisher.create_topic, name=config.dead_letter_topic_path)
    create(
        subscriber.create_subscription,
        name=f"{project}/subscriptions/{config.dead_letter_subscription}",
        topic=config.dead_letter_topic_path,
    )
    create(
        subscriber.create_subscription,
        name=config.subscription_path,
        topic=config.topic_path,
        enable_message_ordering=True,
        ack_deadline_seconds=config.ack_deadline_s,
        dead_letter_policy={
            "dead_letter_topic": config.dead_letter_topic_path,
            "max_delivery_attempts": config.max_delivery_attempts,
        },
    )


class PubSubSink:
    """Publishes tasks; an async context manager owning the publisher client."""

    def __init__(self, config: PubSubConfig) -> None:
        self.config = config
        self._publisher: Any | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("PubSubSink cannot be reopened once closed")
        self._publisher = open_publisher(self.config)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await asyncio.to_thread(publisher.stop)  # flushes what is still batched

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Publish one message per task (a task repeated in `tasks` once); return once Pub/Sub
        confirmed every one. Pub/Sub does not de-duplicate: the Deduper does."""
        unique, repeated = once_each(tasks)
        published = [self._publish(task) for task in unique.values()]  # in order, per key
        outcomes = await asyncio.gather(*published, return_exceptions=True)
        failures: list[tuple[Task, BaseException]] = [
            (task, outcome)
            for task, outcome in zip(unique.values(), outcomes, strict=True)
            if isinstance(outcome, BaseException)
        ]
        if failures:
            self._raise_failed(failures, len(unique))
        return EnqueueResult(enqueued=tuple(unique), duplicates=tuple(repeated))

    async def stats(self) -> QueueStats:
        """Pub/Sub reports no depth to its clients (only Cloud Monitoring has the backlog)."""
        self._open()
        return QueueStats(
            backend="pubsub",
            counts_reported=False,
            extra={"topic": self.config.topic_path, "subscription": self.config.subscription_path},
        )

    def _open(self) -> Any:
        if self._publisher is None:
            raise BackendUnavailable("PubSubSink is not open")
        return self._publisher

    def _publish(self, task: Task) -> Awaitable[str]:
        """Start one publish now (so a key's publishes keep their order); await its id."""
        attributes = {TASK_ID_ATTRIBUTE: task.task_id}
        try:
            future: Future[str] = self._open().publish(
                self.config.topic_path,
                task.to_json(),
                ordering_key=ordering_key(task.conversation_key),
                retry=_PUBLISH_RETRY,
                timeout=PUBLISH_TIMEOUT_S,
                **attributes,
            )
        except Exception as exc:  # e.g. the key is paused: the failure of this one publish
            failed: Future[str] = Future()
            failed.set_exception(exc)
            future = failed
        return asyncio.wrap_future(future)

    def _resume(self, task: Task) -> None:
        """A failed ordered publish pauses its key in the client: resume it, or every later
        publish of the conversation would fail at once."""
        publisher = self._publisher
        if publisher is not None:
            publisher.resume_publish(self.config.topic_path, ordering_key(task.conversation_key))

    def _raise_failed(self, failures: list[tuple[Task, BaseException]], total: int) -> NoReturn:
        for task, _ in failures:
            self._resume(task)
        raise_batch_failure(
            _log,
            [error for _, error in failures],
            total,
            event="pubsub_publish_failed",
            summary="Pub/Sub confirmed {ok} of {total} publishes",
            topic=self.config.topic,
        )


@dataclass(slots=True)
class PubSubDelivery:
    """One received message as a `Delivery`."""

    message: Any
    task: Task
    attempt: int
    unreadable: str | None = None

    def ack(self) -> None:
        """Done: Pub/Sub will not deliver it again (best effort, at-least-once)."""
        self.message.ack()

    def nack(self) -> None:
        """Deliver it again now (to this or another worker)."""
        self.message.nack()


class PubSubStream:
    """Streams the subscription's messages to a worker; owns the subscriber client."""

    def __init__(self, config: PubSubConfig) -> None:
        self.config = config
        self._subscriber: Any | None = None
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._seen_lock = threading.Lock()  # the client calls back on several threads

    async def __aenter__(self) -> Self:
        self._subscriber = open_subscriber(self.config)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            await asyncio.to_thread(subscriber.close)

    async def listen(
        self,
        deliver: Callable[[Delivery], None],
        max_outstanding: int,
        until: Callable[[], Awaitable[object]],
    ) -> None:
        """Hand each message to `deliver` on this loop, at most `max_outstanding` unsettled,
        until `until()` returns; then stop the stream. Raises TransientError if the stream
        ends on its own (the subscription went away, the service failed)."""
        if self._subscriber is None:
            raise BackendUnavailable("PubSubStream is not open")
        loop = asyncio.get_running_loop()

        def callback(message: Any) -> None:  # on the client's thread pool
            loop.call_soon_threadsafe(deliver, self._delivery(message))

        flow = pubsub_v1.types.FlowControl(max_messages=max_outstanding)
        streaming = self._subscriber.subscribe(
            self.config.subscription_path, callback, flow_control=flow
        )
        log_event(_log, "pubsub_stream_started", subscription=self.config.subscription)
        stream_ended = asyncio.wrap_future(streaming)
        done_waiting = asyncio.ensure_future(until())
        try:
            await asyncio.wait({stream_ended, done_waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done_waiting.cancel()
            streaming.cancel()
            await asyncio.to_thread(_quietly_wait, streaming)
        if stream_ended.done() and not done_waiting.done():
            error = stream_ended.exception() if not stream_ended.cancelled() else None
            raise TransientError(f"Pub/Sub stream ended: {type(error).__name__}: {error}")

    def _delivery(self, message: Any) -> PubSubDelivery:
        """The task and its 1-based attempt: Pub/Sub's delivery count (counted here when the
        subscription has no dead-letter policy, as Pub/Sub counts only with one)."""
        task_id = message.attributes.get(TASK_ID_ATTRIBUTE) or f"pubsub-{message.message_id}"
        task, unreadable = read_stored(task_id, message.ordering_key, message.data)
        attempt = message.delivery_attempt or self._count(message.message_id)
        return PubSubDelivery(message, task, max(1, attempt), unreadable)

    def _count(self, message_id: str) -> int:
        with self._seen_lock:
            seen = self._seen.pop(message_id, 0) + 1
            self._seen[message_id] = seen
            while len(self._seen) > _SEEN_CAP:
                self._seen.popitem(last=False)
            return seen


def _quietly_wait(streaming: Any) -> None:
    """Wait for a cancelled stream's threads to finish; its own error was reported already."""
    try:
        streaming.result(timeout=_CALL_TIMEOUT_S)
    except Exception as exc:  # cancelled or failed: either way it has stopped
        log_event(_log, "pubsub_stream_stopped", logging.DEBUG, error=type(exc).__name__)
