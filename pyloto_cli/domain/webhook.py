"""Meta's webhook payload -> tasks, and tasks -> typed inbound messages and statuses.

SKELETON: the public names below are the contract other modules use. The parser helper
fills in the bodies (a typed model of the whole Cloud API webhook).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pyloto_cli.domain.task import JsonObject, Task


class MessageType(StrEnum):
    """Inbound message types; anything else maps to UNKNOWN (kept, logged, never a crash)."""

    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    INTERACTIVE = "interactive"
    BUTTON = "button"
    REACTION = "reaction"
    ORDER = "order"
    SYSTEM = "system"
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Recipient:
    """Where a reply goes: `to` (phone with +country code) when known, else the BSUID."""

    to: str | None = None
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A normalized view of one inbound message, for the pipeline and the responder.

    `text` is what the user said in words: the text body, a media caption, the title of a
    tapped button or list row, a template button's text; None when there is none.
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

    @property
    def recipient(self) -> Recipient:
        """`to` the phone when one is known, else the BSUID `recipient`."""
        raise NotImplementedError


def split_webhook(payload: JsonObject, received_at: float) -> list[Task]:
    """Every item of every entry and change as a task (messages, statuses, other fields)."""
    raise NotImplementedError


def inbound_message(task: Task) -> InboundMessage:
    """The typed message a MESSAGE task carries."""
    raise NotImplementedError
