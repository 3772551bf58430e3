"""What the responder decided: the reply text, how it goes out, and the detected event."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

# What a message without text (an image, a sticker) gets instead of three LLM calls.
NON_TEXT_REPLY: Final = "I can read text messages only for now. Could you type your question?"


class ReplyKind(StrEnum):
    """How a reply goes out (LLM#3's choice)."""

    TEXT = "text"
    BUTTONS = "buttons"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class ReplyOption:
    """A reply button, or a list row (which may have a description)."""

    id: str
    title: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ListSection:
    """A titled group of list rows."""

    title: str
    rows: tuple[ReplyOption, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """The responder's answer to one user turn.

    `event` is LLM#1's classification (`unknown` when it failed). `overridden` is true when the
    event replaced the generated reply (human handoff, opt-out). `errors` names the stages that
    fell back, for the session and the logs; `timings_ms` holds each stage's duration.
    """

    text: str
    kind: ReplyKind = ReplyKind.TEXT
    buttons: tuple[ReplyOption, ...] = ()
    sections: tuple[ListSection, ...] = ()
    list_button: str = "Options"
    event: str = "unknown"
    overridden: bool = False
    errors: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)


def override_replies(
    events: str, *, handoff_reply: str, optout_reply: str, safe_reply: str
) -> dict[str, str]:
    """The message that replaces the generated reply, by overriding event.

    `events` is comma-separated (PYLOTO_OVERRIDE_EVENTS): a human handoff and an opt-out have
    their own message, any other listed event gets the safe reply.
    """
    own = {"human_handoff": handoff_reply, "opt_out": optout_reply}
    names = (e.strip() for e in events.split(","))
    return {name: own.get(name, safe_reply) for name in names if name}
