"""Meta's webhook payload -> tasks, and tasks -> typed inbound messages and statuses.

Splitting (`split_webhook`, the webhook request's hot path) walks the dicts and reads only ids;
the typed model (`webhook_model`) is built later, per task, by the worker.

Tasks, in payload order, one per item of every entry x change (never only index 0):
- MESSAGE per `messages[]` item: task_id = wamid; conversation_key =
  `{phone_number_id}:{bsuid}` when the message has `from_user_id` (or its contact a `user_id`),
  else `{phone_number_id}:{wa_id}` (the entry id stands in for a missing phone_number_id).
- STATUS per `statuses[]` item: task_id = `{wamid}:{status}`; conversation_key = `status:{wamid}`
  (statuses never block a conversation; statuses of one wamid serialize).
- EVENT per value-level `errors[]` item, per non-`messages` field (the whole value is the item),
  and per item that cannot be a message/status task (no `id`, no `status`; the reason is stored
  in the task's value under `_pyloto_reason`, see `event_reason`): task_id = `evt:` + sha256 of
  the canonical JSON (sorted keys, compact, UTF-8) of `{"entry_id", "time", "field",
  "phone_number_id", "item"}`, so that a redelivery hashes alike but the same template event on
  another day or for another number does not; conversation_key = `event:{task_id}`.
- EVENT per `smb_message_echoes` item (a staff message sent from the WhatsApp Business app):
  task_id = `echo:{wamid}`; conversation_key = the user's conversation, as their messages are
  keyed: `{phone_number_id}:{to_user_id}` when the echo (or the contact of its `to`) has a
  BSUID, else `{phone_number_id}:{to}` without `+`; so it is ordered with their messages.
- EVENT per `user_preferences` item (a marketing stop / resume): task_id = the `evt:` hash
  below; conversation_key = the user's conversation (`user_id`, else `wa_id`).
  An echo without `id` or recipient, a preference without a user, and an item list that is not
  a list of objects are kept as ordinary EVENT tasks with a reason.
`item` is the dict as received; `value` is the change's value trimmed to the item: same keys, but
`messages`/`statuses` hold only this item and `contacts` only its contact (or nothing). Task
ids repeated within one POST give one task (the first). Unknown message types, statuses and
fields are kept and logged as `webhook_unknown_type`.

`InboundMessage.text` is what the user said in words: text body; media caption; button_reply
title; list_reply title plus its description on a second line; a Flow's (nfm_reply)
response_json; template button text (else payload); location name and address on two lines;
reaction emoji (None when removed); order note; shared contacts' names comma-separated; system
notice body; None for unsupported and unknown types.

A task no attempt can process raises `InvalidTask` (a `PermanentError`: dead-lettered at once,
its conversation moves on) from `inbound_message` / `status_update`: an item the model cannot
be built from (an order price of 10^400 overflows a float), a message whose phone_number_id is
given but not a Graph id (a missing one stops the reply before the LLM is asked) or whose
wamid is not printable text (`domain/ids.py`), a status whose timestamp is out of range.

Reply policy (`needs_reply`): text, interactive, template button and media with caption get a
reply; media without caption, location, contacts, order, unsupported and unknown types get one
too (the responder's short polite answer: the user did write to us and silence reads as a
broken bot); reactions (incl. removals) and system notices get none, nor does a message whose
sender is unknown. Statuses and non-message fields are not messages and never get a reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pyloto_cli.domain import ids
from pyloto_cli.domain.errors import InvalidTask
from pyloto_cli.domain.task import JsonObject, Task, TaskKind
from pyloto_cli.domain.webhook_content import MessageType, objs_of
from pyloto_cli.domain.webhook_model import Contact, ErrorDetail, Message, MessageStatus, Status
from pyloto_cli.domain.webhook_split import REASON_KEY, Contacts, split_webhook

__all__ = [
    "REASON_KEY",
    "ErrorDetail",
    "InboundMessage",
    "MessageStatus",
    "MessageType",
    "Recipient",
    "StatusUpdate",
    "event_reason",
    "inbound_message",
    "needs_reply",
    "split_webhook",
    "status_update",
]

_NO_REPLY_TYPES: Final = frozenset({MessageType.REACTION, MessageType.SYSTEM})
TIMESTAMP_MAX: Final = 253_402_300_799  # 9999-12-31T23:59:59Z; every store holds it
# what building the model from a hostile item can raise (a float overflow, an int of 5,000
# digits, a value of the wrong type): the item is unusable, not the attempt
_PARSE_ERRORS: Final = (ValueError, TypeError, OverflowError, RecursionError)


@dataclass(frozen=True, slots=True)
class Recipient:
    """Where a reply goes: `to` (phone with +country code) when known, else the BSUID."""

    to: str | None = None
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A normalized view of one inbound message, for the pipeline and the responder.

    `text` is what the user said in words (see the module docstring for each type); None when
    there is none. `wa_id` and `user_id` come from the message, else from its contact; None
    when missing or "". `message` is the full typed message (media ids, context, referral...).
    """

    id: str
    type: MessageType
    raw_type: str
    timestamp: int
    phone_number_id: str
    wa_id: str | None
    user_id: str | None
    profile_name: str | None
    text: str | None
    context_id: str | None
    conversation_key: str
    item: JsonObject
    message: Message | None = None

    @property
    def recipient(self) -> Recipient:
        """`to` the phone when one is known, else the BSUID `recipient`."""
        if self.wa_id:
            return Recipient(to=f"+{self.wa_id.lstrip('+')}")
        return Recipient(recipient=self.user_id)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A delivery receipt for one of our messages, as the worker records it."""

    id: str
    status: MessageStatus
    raw_status: str
    timestamp: int
    phone_number_id: str
    recipient_id: str | None
    recipient_user_id: str | None
    biz_opaque_callback_data: str | None
    errors: tuple[ErrorDetail, ...]
    pricing_category: str | None


def _task_contact(task: Task, phone: str | None, bsuid: str | None) -> Contact | None:
    contact = Contacts(objs_of(task.value, "contacts")).find(phone, bsuid)
    return Contact.from_dict(contact) if contact is not None else None


def inbound_message(task: Task) -> InboundMessage:
    """The typed message a MESSAGE task carries; ValueError for other kinds."""
    if task.kind is not TaskKind.MESSAGE:
        raise ValueError(f"task {task.task_id} is a {task.kind.value} task, not a message")
    try:
        message = Message.from_dict(task.item)
        contact = _task_contact(task, message.from_, message.from_user_id)
    except _PARSE_ERRORS as exc:
        raise InvalidTask(f"message cannot be parsed: {type(exc).__name__}: {exc}") from exc
    return InboundMessage(
        id=ids.message_id(message.id or task.task_id),
        type=message.type,
        raw_type=message.raw_type,
        timestamp=message.timestamp,
        phone_number_id=task.phone_number_id and ids.phone_number_id(task.phone_number_id),
        wa_id=message.from_ or (contact.wa_id if contact else None),
        user_id=message.from_user_id or (contact.user_id if contact else None),
        profile_name=contact.name if contact else None,
        text=message.text,
        context_id=message.context.id if message.context else None,
        conversation_key=task.conversation_key,
        item=task.item,
        message=message,
    )


def status_update(task: Task) -> StatusUpdate:
    """The delivery receipt a STATUS task carries; ValueError for other kinds."""
    if task.kind is not TaskKind.STATUS:
        raise ValueError(f"task {task.task_id} is a {task.kind.value} task, not a status")
    try:
        status = Status.from_dict(task.item)
    except _PARSE_ERRORS as exc:
        raise InvalidTask(f"status cannot be parsed: {type(exc).__name__}: {exc}") from exc
    if not 0 <= status.timestamp <= TIMESTAMP_MAX:
        raise InvalidTask(f"status timestamp {ids.shown(status.timestamp)} is out of range")
    return StatusUpdate(
        id=ids.message_id(status.id or task.task_id.rpartition(":")[0]),
        status=status.status,
        raw_status=status.raw_status,
        timestamp=status.timestamp,
        phone_number_id=task.phone_number_id,
        recipient_id=status.recipient_id,
        recipient_user_id=status.recipient_user_id,
        biz_opaque_callback_data=status.biz_opaque_callback_data,
        errors=status.errors,
        pricing_category=status.pricing.category if status.pricing else None,
    )


def needs_reply(msg: InboundMessage) -> bool:
    """Whether the pipeline answers this message (policy in the module docstring)."""
    if msg.type in _NO_REPLY_TYPES:
        return False
    return bool(msg.wa_id or msg.user_id)


def event_reason(task: Task) -> str | None:
    """Why an item became an EVENT instead of a message/status task (None when it is one)."""
    reason = task.value.get(REASON_KEY)
    return reason if isinstance(reason, str) else None
