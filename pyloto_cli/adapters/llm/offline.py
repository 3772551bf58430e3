"""The offline responder: a deterministic stand-in for the three LLM stages, with no network.

It is the default when no OpenAI key is configured, and what `replay`, `bench` and the tests
use. It fills the same fields as the real responder:

- event (LLM#1's job) from keywords: opt_out (stop/parar), human_handoff (human/agent/
  atendente), cancel, complaint, price (price/preço/cost), greeting (hi/hello/olá/oi),
  question (ends with `?`), else other;
- text (LLM#2's job): `You said: "…" (turn N)`, quoting the user's whole text;
- message type (LLM#3's job): a list every 5th turn, buttons every 3rd turn, else text, so
  the interactive payload paths are exercised too.

A voice note, an image, a document, a video, a location or shared contacts is acknowledged
from the webhook ("I got your voice note (audio/ogg)", "I got your document receipt.pdf", the
place or the cards as text); other messages without text get a short polite reply. When
override replies are given (the same `override_events`/`handoff_reply`/`optout_reply` settings
as the real responder), an overriding event replaces the reply, as the real responder does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Final, Self

from pyloto_cli.domain.media import offline_reply
from pyloto_cli.domain.reply import (
    NON_TEXT_REPLY,
    ListSection,
    Reply,
    ReplyKind,
    ReplyOption,
    override_replies,
)
from pyloto_cli.ports import ResponderRequest
from pyloto_cli.settings import Settings

_WORDS: Final = re.compile(r"\w+", re.UNICODE)

# First match wins: the more decisive intents come before the chattier ones.
_KEYWORDS: Final[tuple[tuple[str, frozenset[str]], ...]] = (
    ("opt_out", frozenset({"stop", "parar", "unsubscribe", "sair"})),
    ("human_handoff", frozenset({"human", "agent", "atendente", "humano", "operator"})),
    ("cancel", frozenset({"cancel", "cancelar", "cancellation", "cancelamento"})),
    ("complaint", frozenset({"complaint", "complain", "broken", "terrible", "reclamação"})),
    ("price", frozenset({"price", "prices", "preço", "preços", "cost", "costs", "valor"})),
    ("greeting", frozenset({"hi", "hello", "hey", "olá", "ola", "oi"})),
)


def detect_event(text: str | None) -> str:
    """The offline classification of a user's text (see the module docstring)."""
    if not text or not text.strip():
        return "other"
    words = set(_WORDS.findall(text.lower()))
    for event, keywords in _KEYWORDS:
        if words & keywords:
            return event
    return "question" if text.rstrip().endswith("?") else "other"


def _quote(text: str) -> str:
    """The user's whole text on one line (a long one shows how replies are split)."""
    return " ".join(text.split())


def _buttons(turn: int) -> tuple[ReplyOption, ...]:
    return (
        ReplyOption(id=f"t{turn}-yes", title="Yes"),
        ReplyOption(id=f"t{turn}-no", title="No"),
        ReplyOption(id=f"t{turn}-more", title="Tell me more"),
    )


def _sections(turn: int) -> tuple[ListSection, ...]:
    return (
        ListSection(
            title="Help",
            rows=(
                ReplyOption(id=f"t{turn}-prices", title="Prices", description="Plans and costs"),
                ReplyOption(id=f"t{turn}-hours", title="Opening hours"),
            ),
        ),
        ListSection(
            title="Account",
            rows=(ReplyOption(id=f"t{turn}-agent", title="Talk to a person"),),
        ),
    )


def _shape(text: str, turn: int) -> Reply:
    if turn > 0 and turn % 5 == 0:
        return Reply(text=text, kind=ReplyKind.LIST, sections=_sections(turn), list_button="Menu")
    if turn > 0 and turn % 3 == 0:
        return Reply(text=text, kind=ReplyKind.BUTTONS, buttons=_buttons(turn))
    return Reply(text=text)


class OfflineResponder:
    """`Responder` with no network: keyword events, an echo reply, periodic buttons and lists.

    `override_replies` maps an event to the message that replaces the reply (e.g.
    `{"human_handoff": "...", "opt_out": "..."}`); empty by default.
    """

    def __init__(self, override_replies: Mapping[str, str] | None = None) -> None:
        self._overrides = dict(override_replies or {})

    @classmethod
    def from_settings(cls, settings: Settings) -> OfflineResponder:
        """With the same override events and messages as the real responder."""
        return cls(
            override_replies(
                settings.override_events,
                handoff_reply=settings.handoff_reply,
                optout_reply=settings.optout_reply,
                safe_reply=settings.safe_reply,
            )
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def respond(self, request: ResponderRequest) -> Reply:
        """The deterministic reply to `request` (never raises, never waits on I/O)."""
        timings: dict[str, float] = {}
        text = request.message.text
        start = time.perf_counter()
        event = detect_event(text)
        timings["event"] = _ms_since(start)

        start = time.perf_counter()
        media = offline_reply(request.message)
        if media is not None:  # said from the webhook alone: nothing is downloaded offline
            reply_text = media
        elif text is None or not text.strip():
            reply_text = NON_TEXT_REPLY
        else:
            reply_text = f'You said: "{_quote(text)}" (turn {request.turn_number})'
        timings["response"] = _ms_since(start)

        override = self._overrides.get(event)
        if override is not None:
            return Reply(text=override, event=event, overridden=True, timings_ms=timings)

        start = time.perf_counter()
        plain = not text or media is not None
        shaped = Reply(text=reply_text) if plain else _shape(reply_text, request.turn_number)
        timings["message_type"] = _ms_since(start)
        return Reply(
            text=shaped.text,
            kind=shaped.kind,
            buttons=shaped.buttons,
            sections=shaped.sections,
            list_button=shaped.list_button,
            event=event,
            timings_ms=timings,
        )


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)
