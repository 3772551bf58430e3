"""Ports: the typed seams between the pipeline and its backends.

Adapters do not inherit these Protocols; mypy checks them where `bootstrap.py` wires them.
Each adapter is an async context manager that opens on enter and closes on exit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from pyloto_cli.domain.llm import ChatRequest
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.session import Session, Turn
from pyloto_cli.domain.task import (
    DeadLetter,
    EnqueueResult,
    FailureKind,
    JsonObject,
    Leased,
    NackOutcome,
    QueueStats,
    Task,
)
from pyloto_cli.domain.webhook import InboundMessage

# --- Queue ----------------------------------------------------------------------------------


class TaskSink(Protocol):
    """Where the webhook stores tasks. Returns only once the tasks are durably stored."""

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Store `tasks`; ids already queued are reported as duplicates, not stored twice."""
        ...


class TaskRescheduler(Protocol):
    """A push queue's way to run a task again later, at a time it chooses (Cloud Tasks)."""

    async def reschedule(
        self,
        task: Task,
        delay_s: float,
        attempt: int,
        salt: str = "",
        previous_failure: FailureKind | None = None,
    ) -> None:
        """Create the task again, due in `delay_s` seconds, as attempt `attempt`, telling it
        what the attempt before failed with."""
        ...


class MessageQueue(TaskSink, Protocol):
    """A pull queue with leases, retries and dead letters.

    At most one task per conversation key is leased at a time, across processes; later tasks of
    that conversation wait until the earlier one is acked or dead-lettered. The adapter is given
    a `RetryPolicy` at construction: `nack` without a delay uses it, and dead-letters once the
    policy's attempts are spent.
    """

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        """Take up to `max_items` ready tasks (expired leases included) for `lease_s` seconds."""
        ...

    async def renew(self, lease: Leased, lease_s: float) -> Leased:
        """Extend a live lease; raises StaleLeaseError if it was lost."""
        ...

    async def ack(self, lease: Leased) -> None:
        """The task is done; raises StaleLeaseError if the lease was lost."""
        ...

    async def nack(
        self,
        lease: Leased,
        error: str,
        delay_s: float | None = None,
        failure: FailureKind | None = None,
    ) -> NackOutcome:
        """Retry later (after `delay_s`, or the policy's delay), or dead-letter when spent.

        `failure` is stored with the task and handed back as the next lease's
        `previous_failure` (None clears it).
        """
        ...

    async def defer(self, lease: Leased, delay_s: float, reason: str) -> None:
        """Put the task back for `delay_s` without counting this attempt; never dead-letters.

        For outages that are not the task's fault (e.g. the Graph access token rejected):
        the attempt counter goes back by one (never below 0), `reason` becomes the last
        error, the stored failure kind is kept, and the task keeps its place at its
        conversation's head. Raises
        StaleLeaseError if the lease was lost.
        """
        ...

    async def dead_letter(self, lease: Leased, error: str) -> None:
        """Dead-letter now (a permanent failure), keeping the payload, error and attempts."""
        ...

    async def lease_followers(
        self, lease: Leased, window_s: float, max_items: int, lease_s: float
    ) -> list[Leased]:
        """Also lease the tasks queued right behind `lease` in its conversation (burst coalescing).

        Atomically, while `lease` is held (else StaleLeaseError): the next tasks of the same
        conversation, in order and contiguous, that are available and not leased and whose
        `received_at` is at most `lease.task.received_at + window_s`, up to `max_items`; the
        first that does not qualify ends the run. Each gets its own token and a counted attempt,
        and is settled (ack, nack, defer, dead_letter) on its own. The one exception to "one
        leased task per conversation": the followers belong to the head's holder. A follower
        nacked or deferred keeps its place behind the head and, once it is the head, becomes
        leasable when its delay has passed.
        """
        ...


class Delivery(Protocol):
    """One message of a streaming queue (Pub/Sub), held by one worker until it is settled."""

    @property
    def task(self) -> Task:
        """The task (a stand-in holding the text when it cannot be read, see `unreadable`)."""
        ...

    @property
    def attempt(self) -> int:
        """1 on the first delivery, counted by the queue."""
        ...

    @property
    def unreadable(self) -> str | None:
        """Why the message is not a task, or None."""
        ...

    def ack(self) -> None:
        """Done: not delivered again."""
        ...

    def nack(self) -> None:
        """Deliver again now."""
        ...


class TaskStream(Protocol):
    """A queue that pushes messages to a connected worker (Pub/Sub's streaming pull).

    While a message is unsettled the stream keeps it from other workers (extending its ack
    deadline) and, per conversation, holds back the messages after it.
    """

    async def listen(
        self,
        deliver: Callable[[Delivery], None],
        max_outstanding: int,
        until: Callable[[], Awaitable[object]],
    ) -> None:
        """Call `deliver` on the caller's loop for each message, at most `max_outstanding`
        unsettled, until `until()` returns; raises TransientError if the stream fails."""
        ...


class QueueAdmin(Protocol):
    """What the CLI and `/readyz` need from a queue."""

    async def stats(self) -> QueueStats:
        """Counts and the oldest task's age."""
        ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        ...

    async def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Move dead letters back to the queue (all when `task_ids` is None); returns the count."""
        ...

    async def purge_dead(self) -> int:
        """Delete every dead letter; returns the count."""
        ...


# --- Stores ---------------------------------------------------------------------------------


class SessionStore(Protocol):
    """Conversation sessions (the seed's contract: load, save, delete, exists) plus an atomic
    append that concurrent writers can use without losing turns."""

    async def load(self, key: str) -> Session | None:
        """The session, or None if there is none."""
        ...

    async def save(self, session: Session) -> None:
        """Replace the stored session."""
        ...

    async def append(
        self, key: str, turns: Sequence[Turn], max_turns: int, meta: dict[str, str] | None = None
    ) -> Session:
        """Atomically append `turns` (creating the session), keep the newest `max_turns`."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete; True if it existed."""
        ...

    async def exists(self, key: str) -> bool:
        """True if a session is stored under `key`."""
        ...

    async def head(self, key: str) -> SessionHead | None:
        """The session's key, last update and meta without its turns (None if there is none):
        the conversation's state, read just before a send, cheaper than `load`."""
        ...

    async def list(self, limit: int = 10_000) -> Sequence[SessionHead]:
        """Up to `limit` stored sessions without their turns, most recently updated first:
        what an operator browses (a scan of the whole store, not a hot-path call)."""
        ...


@dataclass(frozen=True, slots=True)
class SessionHead:
    """A stored session's key, last update and meta (the conversation's state), no turns."""

    key: str
    updated_at: float
    meta: Mapping[str, str] = field(default_factory=dict)


class ClaimResult(StrEnum):
    """Outcome of `Deduper.claim`."""

    CLAIMED = "claimed"  # first time (or an earlier claim expired): process it
    IN_PROGRESS = "in_progress"  # another worker holds a live claim: retry later
    DONE = "done"  # already processed: skip


class Deduper(Protocol):
    """Inbound message ids already handled (Meta redelivers for up to 7 days)."""

    async def claim(self, key: str, ttl_s: float) -> ClaimResult:
        """Atomically claim `key` for `ttl_s` seconds unless done or claimed by someone else."""
        ...

    async def mark_done(self, key: str, ttl_s: float) -> None:
        """Record `key` as processed for `ttl_s` seconds (called after send and session save)."""
        ...

    async def release(self, key: str) -> None:
        """Drop a claim that did not finish (so a retry can claim it at once)."""
        ...


class TaskMemos(Protocol):
    """What one message's earlier attempts already paid for, kept until it is done.

    Keyed by the inbound wamid the reply answers: a computed reply, the wamids of the reply
    parts Meta accepted, a voice note's transcript. A retry reads them instead of calling the
    LLM, the transcriber or Graph again. Fields merge; each record expires `ttl_s` after its
    last write (a message is never retried for longer than Meta redelivers it). A durable store
    that refuses a call (disk full, server down) raises `TransientError` (reason
    `task_memos_unavailable: ...`), so a caller can keep the memo in memory and go on.
    """

    async def get(self, key: str) -> dict[str, str]:
        """The fields stored for `key` (empty when there are none)."""
        ...

    async def put(self, key: str, fields: Mapping[str, str], ttl_s: float) -> None:
        """Merge `fields` into `key`'s record, durably before returning."""
        ...

    async def forget(self, key: str) -> None:
        """Drop `key`'s record (its task is done)."""
        ...


# --- Inbound media --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """A user's media, downloaded and checked: where its bytes are, their type and size."""

    path: Path
    mime_type: str
    size: int


class MediaFetcher(Protocol):
    """Downloads a user's media by its Graph id into a file (the Graph adapter).

    Raises `domain.media.MediaUnavailable` when it cannot be had (an unknown id, a 4xx after
    one fresh URL, over `max_bytes`, a checksum other than `sha256`) and `TransientError` for
    what a later attempt may get (5xx, timeouts).
    """

    async def fetch(
        self, media_id: str, *, sha256: str | None, max_bytes: int, directory: Path
    ) -> FetchedMedia:
        """Stream the media into a new file under `directory` and return it."""
        ...


class Transcriber(Protocol):
    """Turns a voice note or audio file into text (OpenAI's transcription call)."""

    async def transcribe(self, path: Path, mime_type: str) -> str:
        """The transcript; raises `domain.llm.LLMCallError` as a failed LLM stage does."""
        ...


# --- Responder and sender -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponderRequest:
    """What the responder sees: the user's turn and the conversation so far."""

    message: InboundMessage
    session: Session | None
    turn_number: int
    # images the user sent, as data URLs, for the response stage to look at
    images: tuple[str, ...] = ()


class Responder(Protocol):
    """Decides the reply to a user's turn (the three LLM stages, or the offline stand-in)."""

    async def respond(self, request: ResponderRequest) -> Reply:
        """The reply; never raises for LLM failures (it falls back to a safe reply)."""
        ...


class ChatModel(Protocol):
    """One chat completion on an LLM service (the OpenAI adapter); the stages run over it."""

    async def complete(self, request: ChatRequest) -> str:
        """The first choice's message content; raises LLMCallError with a stable reason."""
        ...


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the Graph API accepted: the sent message's wamid."""

    message_id: str
    raw: JsonObject = field(default_factory=dict)


class Sender(Protocol):
    """Posts Graph API message bodies from a business phone number.

    Raises TransientError (retry, maybe after `retry_after`) or PermanentError (dead-letter).
    """

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        """Send one message body to `/{phone_number_id}/messages`."""
        ...

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        """Mark an inbound message read, optionally showing the typing indicator."""
        ...

    async def upload_media(self, phone_number_id: str, path: Path, mime_type: str) -> str:
        """Upload the file at `path` to `/{phone_number_id}/media` as `mime_type`; returns the
        media id a message then sends (`domain/outbound.py` `media_body`). The caller checked
        the file against `domain/outbound_media.py` first; errors as for `send`."""
        ...


# --- Delivery statuses ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """One status webhook for a message we sent: `sent`, `delivered`, `read`, `failed`, `played`.

    `error_code`/`error_title` come from the status's first `errors[]` entry (only on `failed`);
    `callback_data` echoes the `biz_opaque_callback_data` we sent (the inbound wamid).
    """

    message_id: str
    status: str
    timestamp: int
    phone_number_id: str = ""
    recipient: str | None = None
    error_code: int | None = None
    error_title: str | None = None
    callback_data: str | None = None


class StatusStore(Protocol):
    """Delivery statuses of sent messages, outside the session, keyed by (wamid, status)."""

    async def record(self, status: DeliveryStatus) -> bool:
        """Store `status`; False if this (wamid, status) was already recorded (idempotent)."""
        ...

    async def get(self, message_id: str) -> list[DeliveryStatus]:
        """Every status recorded for `message_id`, oldest first."""
        ...

    async def failed(self, limit: int = 100) -> list[DeliveryStatus]:
        """The most recent `failed` statuses, newest first, with their error codes."""
        ...


# --- Dead letters of push queues ------------------------------------------------------------


class DeadLetterStore(Protocol):
    """Dead letters kept outside the queue, for push queues (Cloud Tasks) that keep none.

    Keyed by task id: recording a task again replaces its entry. `requeue` is the caller's
    job (enqueue `dead.task` again, then `delete` it).
    """

    async def record(self, dead: DeadLetter) -> None:
        """Store `dead` (replacing an entry for the same task id)."""
        ...

    async def list(self, limit: int = 100) -> Sequence[DeadLetter]:
        """Up to `limit` dead letters, oldest first."""
        ...

    async def get(self, task_id: str) -> DeadLetter | None:
        """The dead letter of `task_id`, or None."""
        ...

    async def delete(self, task_id: str) -> bool:
        """Delete one; True if it existed."""
        ...

    async def purge(self) -> int:
        """Delete every dead letter; returns the count."""
        ...


# --- Limits shared by processes ---------------------------------------------------------------


class SharedBuckets(Protocol):
    """GCRA token buckets every process of a deployment takes from (Redis, or one host's SQLite
    file), so N processes send at the rate, not N times it."""

    async def take(self, key: str, interval_s: float, burst: int) -> float:
        """Take a token of `key` (one per `interval_s`, `burst` at once) if one is free now:
        0.0; else take nothing and return the seconds until one is. Nothing is reserved ahead:
        a process whose sleep overshoots cannot send late into another's slot."""
        ...


class SharedBreakers(Protocol):
    """Circuit breakers' open state, by name (`llm`, `graph`), seen by every process."""

    async def open_until(self, name: str) -> float:
        """Epoch seconds until which `name` is open (0 or a past time: closed)."""
        ...

    async def open(self, name: str, until: float) -> None:
        """Open `name` until `until` (epoch seconds) for every process."""
        ...


# --- Metrics ----------------------------------------------------------------------------------


class Metrics(Protocol):
    """What the web role and the pipeline count and time (Prometheus, or nothing).

    Called on every message: an adapter must keep each call to a few microseconds. Label
    values are from small fixed sets (outcomes, stages, exception names, Graph codes), never
    ids or text.
    """

    def webhook_received(self) -> None:
        """A signed, well-formed webhook was read."""
        ...

    def webhook_rejected(self, reason: str) -> None:
        """A webhook or verify request was refused; `reason` names the kind of refusal."""
        ...

    def tasks_enqueued(self, count: int) -> None:
        """`count` new tasks were stored."""
        ...

    def duplicates_skipped(self, where: str, count: int = 1) -> None:
        """Duplicates left alone: `enqueue` (already queued), `dedupe` or `session` (answered)."""
        ...

    def task_processed(self, outcome: str, seconds: float) -> None:
        """An attempt ended with `outcome` (done, skipped, retry, defer, dead) after `seconds`."""
        ...

    def task_retried(self) -> None:
        """An attempt's task was put back for another attempt."""
        ...

    def task_dead_lettered(self) -> None:
        """A task was dead-lettered."""
        ...

    def llm_stage(self, stage: str, seconds: float, reason: str | None) -> None:
        """An LLM stage ended after `seconds`; `reason` is its failure's reason, if it failed."""
        ...

    def llm_error(self, stage: str, reason: str) -> None:
        """The LLM was not asked at all (`reason`: the circuit breaker is open)."""
        ...

    def breaker_open(self, is_open: bool) -> None:
        """The LLM circuit breaker's state after a change."""
        ...

    def graph_send(self, outcome: str, code: int | None = None) -> None:
        """A Graph API send ended with `outcome` (sent, transient, ambiguous, paused,
        permanent) and Meta's error code, if any."""
        ...

    def queue_stats(self, stats: QueueStats) -> None:
        """The queue's depth and oldest task's age, read just before a scrape."""
        ...

    def render(self) -> tuple[bytes, str]:
        """The exposition of every metric (all processes' when shared) and its content type."""
        ...


class NoMetrics:
    """`Metrics` that records nothing: what every role uses unless metrics are on."""

    def webhook_received(self) -> None:
        """Nothing."""

    def webhook_rejected(self, reason: str) -> None:
        """Nothing."""

    def tasks_enqueued(self, count: int) -> None:
        """Nothing."""

    def duplicates_skipped(self, where: str, count: int = 1) -> None:
        """Nothing."""

    def task_processed(self, outcome: str, seconds: float) -> None:
        """Nothing."""

    def task_retried(self) -> None:
        """Nothing."""

    def task_dead_lettered(self) -> None:
        """Nothing."""

    def llm_stage(self, stage: str, seconds: float, reason: str | None) -> None:
        """Nothing."""

    def llm_error(self, stage: str, reason: str) -> None:
        """Nothing."""

    def breaker_open(self, is_open: bool) -> None:
        """Nothing."""

    def graph_send(self, outcome: str, code: int | None = None) -> None:
        """Nothing."""

    def queue_stats(self, stats: QueueStats) -> None:
        """Nothing."""

    def render(self) -> tuple[bytes, str]:
        """No metrics."""
        return b"", "text/plain; version=0.0.4; charset=utf-8"


NO_METRICS: Metrics = NoMetrics()
