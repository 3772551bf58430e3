"""A conversation's session: its bounded history of turns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pyloto_cli.domain import json_codec


class Role(StrEnum):
    """Who spoke."""

    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class Turn:
    """One side of an exchange.

    A user turn carries the inbound wamid and, once detected, the event; an assistant turn
    carries the sent wamid (empty if nothing was sent), the reply's message type and the wamid
    it answers in `reply_to`. `author` is "staff" on an assistant turn a person wrote (an
    echo of a message sent from the WhatsApp Business app), None when pyloto wrote it.
    """

    role: Role
    text: str
    message_id: str
    at: float
    event: str | None = None
    message_type: str | None = None
    reply_to: str | None = None
    author: str | None = None

    def __post_init__(self) -> None:
        # every session store writes the text as UTF-8 (Firestore as a document field, not
        # through `json_codec`): a lone surrogate is replaced here, once
        for name in ("text", "message_id"):
            text = getattr(self, name)
            cleaned = json_codec.clean_text(text)
            if cleaned is not text:
                object.__setattr__(self, name, cleaned)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, without empty optional fields."""
        data: dict[str, Any] = {
            "role": self.role.value,
            "text": self.text,
            "message_id": self.message_id,
            "at": self.at,
        }
        for name in ("event", "message_type", "reply_to", "author"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        """Inverse of `to_dict`."""
        return cls(
            role=Role(data["role"]),
            text=data["text"],
            message_id=data["message_id"],
            at=float(data["at"]),
            event=data.get("event"),
            message_type=data.get("message_type"),
            reply_to=data.get("reply_to"),
            author=data.get("author"),
        )


@dataclass(frozen=True, slots=True)
class Session:
    """A conversation's history, newest turn last, bounded by the store's `max_turns`."""

    key: str
    turns: tuple[Turn, ...] = ()
    updated_at: float = 0.0
    meta: dict[str, str] = field(default_factory=dict)

    def with_turns(self, turns: tuple[Turn, ...], max_turns: int, now: float) -> Session:
        """A copy with `turns` appended and the oldest dropped beyond `max_turns`."""
        merged = (*self.turns, *turns)
        return replace(self, turns=merged[-max_turns:], updated_at=now)

    @property
    def user_turns(self) -> int:
        """How many user turns the (bounded) history holds."""
        return sum(1 for t in self.turns if t.role is Role.USER)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "key": self.key,
            "turns": [t.to_dict() for t in self.turns],
            "updated_at": self.updated_at,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        """Inverse of `to_dict`."""
        return cls(
            key=data["key"],
            turns=tuple(Turn.from_dict(t) for t in data.get("turns", ())),
            updated_at=float(data.get("updated_at", 0.0)),
            meta=dict(data.get("meta", {})),
        )
