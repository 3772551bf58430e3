"""What the responder decided: the reply text, how it goes out, and the detected event."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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
