"""The unit of work: one task per inbound message, status or non-message item.

A task is stored by the webhook before the 200 and processed by the worker. It carries the
item as received (so nothing the model does not know yet is lost) and the raw `value` it came
from, trimmed to this item (the sibling messages of a 1000-item POST are not copied 1000 times).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pyloto_cli.domain import json_codec

JsonObject = dict[str, Any]

# Headers a push queue (Cloud Tasks) carries between tries of one task: pyloto's attempt count
# and what the previous try failed with, which Cloud Tasks itself does not keep.
ATTEMPT_HEADER = "X-Pyloto-Attempt"
PREVIOUS_FAILURE_HEADER = "X-Pyloto-Previous-Failure"


class TaskKind(StrEnum):
    """What a task carries."""

    MESSAGE = "message"
    STATUS = "status"
    EVENT = "event"  # non-message fields (template/account updates) and value-level errors


class FailureKind(StrEnum):
    """How an attempt failed, when the next attempt must know it: every queue backend stores
    it with the task (a column, a hash field, a header) and hands it back with the lease."""

    # the reply may have reached Meta (no idempotency key): retried once, never twice
    AMBIGUOUS_SEND = "ambiguous_send"

    @classmethod
    def parse(cls, raw: str | bytes | None) -> FailureKind | None:
        """The stored value back; None for nothing stored or a kind this version does not know."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            return cls(text) if text else None
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Task:
    """One item of a webhook, stored durably before Meta gets its 200.

    `task_id` is unique in a queue: the wamid for a message, `wamid:status` for a status, and a
    content hash for other items, so a redelivered webhook is not stored twice.
    """

    task_id: str
    kind: TaskKind
    conversation_key: str
    phone_number_id: str
    received_at: float
    item: JsonObject
    value: JsonObject
    field: str = "messages"

    def __post_init__(self) -> None:
        # Every backend writes a task as UTF-8 (SQL parameters, Redis keys, document names, the
        # stored JSON; the memory queue hands the object itself on): a lone surrogate anywhere
        # is replaced by U+FFFD here, so every backend stores and hands back the same task.
        for name in ("task_id", "conversation_key", "phone_number_id", "field"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise TypeError(f"Task.{name} must be a string, got {type(text).__name__}")
            cleaned = json_codec.clean_text(text)
            if cleaned is not text:
                object.__setattr__(self, name, cleaned)
        for name in ("item", "value"):
            data = getattr(self, name)
            cleaned_data = json_codec.clean(data)
            if cleaned_data is not data:
                object.__setattr__(self, name, cleaned_data)

    def to_json(self) -> bytes:
        """Serialize for storage."""
        return json_codec.dumps(
            {
                "task_id": self.task_id,
                "kind": self.kind.value,
                "conversation_key": self.conversation_key,
                "phone_number_id": self.phone_number_id,
                "received_at": self.received_at,
                "item": self.item,
                "value": self.value,
                "field": self.field,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Task:
        """Inverse of `to_json`; ValueError (or its subclass) for anything that is not one."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"a task is a JSON object, not {type(data).__name__}")
        try:
            return cls._of(data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a task: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _of(cls, data: JsonObject) -> Task:
        item, value = data["item"], data["value"]
        if not isinstance(item, dict) or not isinstance(value, dict):
            raise TypeError("item and value must be objects")
        return cls(
            task_id=data["task_id"],
            kind=TaskKind(data["kind"]),
            conversation_key=data["conversation_key"],
            phone_number_id=data["phone_number_id"],
            received_at=float(data["received_at"]),
            item=item,
            value=value,
            field=data.get("field", "messages"),
        )


UNREADABLE_FIELD = "unreadable"


def read_stored(task_id: str, conversation_key: str, raw: bytes | str) -> tuple[Task, str | None]:
    """The task a queue stored under `task_id`, and None; or, when the stored text is not a
    task (written by something else, damaged), a stand-in EVENT task holding that text, and
    why. A queue dead-letters the stand-in at once: no attempt could read it, and it must not
    stop the lease of the tasks around it."""
    try:
        return Task.from_json(raw), None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ones
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        stand_in = Task(
            task_id=task_id,
            kind=TaskKind.EVENT,
            conversation_key=conversation_key,
            phone_number_id="",
            received_at=0.0,
            item={"stored": text[:4096]},
            value={},
            field=UNREADABLE_FIELD,
        )
        return stand_in, f"InvalidTask: stored task cannot be read: {type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class Leased:
    """A task handed to one worker until `expires_at` (epoch seconds) unless renewed.

    `attempt` is 1 on the first delivery; it is counted when the lease is taken, so a crash
    mid-task still counts (arq). `token` identifies this lease: an ack/nack with an older token
    is refused. `previous_failure` is what the last nack said the attempt before failed with.
    """

    task: Task
    token: str
    attempt: int
    expires_at: float
    previous_failure: FailureKind | None = None


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What an enqueue stored: new task ids and ids that were already queued."""

    enqueued: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()


class NackOutcome(StrEnum):
    """What a nack did with the task."""

    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that will not be retried, with why."""

    task: Task
    error: str
    attempts: int
    dead_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of a queue, for `/readyz`, `pyloto queue stats` and benchmarks."""

    backend: str
    ready: int = 0
    leased: int = 0
    retrying: int = 0
    dead: int = 0
    oldest_age_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # tasks that ended `reply_expired` (read from the delivery statuses, by `queue stats`)
    reply_expired: int = 0
    # False for a queue that tells its clients no counts (Pub/Sub): the zeros above mean nothing
    counts_reported: bool = True

    @property
    def depth(self) -> int:
        """Tasks not yet done (ready, leased or waiting for a retry)."""
        return self.ready + self.leased + self.retrying
