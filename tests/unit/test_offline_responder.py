"""OfflineResponder: deterministic events, echo replies and periodic interactive shapes."""

from __future__ import annotations

import pytest

from pyloto_cli.adapters.llm.offline import OfflineResponder, detect_event
from pyloto_cli.domain.reply import NON_TEXT_REPLY, ReplyKind
from pyloto_cli.domain.webhook import MessageType
from pyloto_cli.ports import Responder
from tests.fakes import request


@pytest.mark.parametrize(
    ("text", "event"),
    [
        ("Hi there", "greeting"),
        ("Olá, tudo bem", "greeting"),
        ("oi", "greeting"),
        ("What is the price of the blue one", "price"),
        ("Qual o preço?", "price"),
        ("how much does it cost", "price"),
        ("I want to cancel my order", "cancel"),
        ("This is terrible, I have a complaint", "complaint"),
        ("Can I talk to a human please", "human_handoff"),
        ("quero um atendente", "human_handoff"),
        ("STOP", "opt_out"),
        ("parar", "opt_out"),
        ("Do you open on Sundays?", "question"),
        ("ok thanks", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_detect_event_from_keywords(text: str | None, event: str) -> None:
    """Keywords (English and Portuguese) map to the LLM#1 event names."""
    assert detect_event(text) == event


def test_keywords_match_whole_words_only() -> None:
    """`this` does not count as `hi`, nor `stopwatch` as `stop`."""
    assert detect_event("this stopwatch") == "other"


class TestOfflineResponder:
    """The stand-in responder's replies."""

    async def test_quotes_text_and_turn_and_fills_every_stage(self) -> None:
        """The reply quotes the user's text and turn number; all three stages are timed."""
        responder: Responder = OfflineResponder()
        reply = await responder.respond(request("hello bot", turn=2))
        assert reply.text == 'You said: "hello bot" (turn 2)'
        assert reply.event == "greeting"
        assert reply.kind is ReplyKind.TEXT
        assert set(reply.timings_ms) == {"event", "response", "message_type"}
        assert reply.errors == ()
        assert not reply.overridden

    async def test_every_third_turn_has_three_buttons(self) -> None:
        """Turn 3 goes out as reply buttons with short unique titles."""
        reply = await OfflineResponder().respond(request("anything", turn=3))
        assert reply.kind is ReplyKind.BUTTONS
        assert len(reply.buttons) == 3
        assert len({b.id for b in reply.buttons}) == 3
        assert all(len(b.title) <= 20 for b in reply.buttons)

    async def test_every_fifth_turn_has_a_list(self) -> None:
        """Turn 5 (and 15, over buttons) goes out as a list with sections and rows."""
        for turn in (5, 15):
            reply = await OfflineResponder().respond(request("anything", turn=turn))
            assert reply.kind is ReplyKind.LIST
            assert reply.sections
            assert all(section.rows for section in reply.sections)

    async def test_non_text_message_gets_a_polite_text_reply(self) -> None:
        """An image without a caption gets the short text reply, never buttons."""
        reply = await OfflineResponder().respond(request(None, turn=3, msg_type=MessageType.IMAGE))
        assert reply.text == NON_TEXT_REPLY
        assert reply.kind is ReplyKind.TEXT

    async def test_is_deterministic(self) -> None:
        """The same request gives the same reply (timings aside)."""
        first = await OfflineResponder().respond(request("price?", turn=6))
        second = await OfflineResponder().respond(request("price?", turn=6))
        assert (first.text, first.kind, first.buttons, first.event) == (
            second.text,
            second.kind,
            second.buttons,
            second.event,
        )

    async def test_long_text_is_quoted_whole(self) -> None:
        """A very long message is quoted whole, on one line (its reply shows how long
        replies are split)."""
        text = "\n\n".join(f"paragraph {i} " + "word " * 300 for i in range(3))
        reply = await OfflineResponder().respond(request(text, turn=1))
        assert reply.text == f'You said: "{" ".join(text.split())}" (turn 1)'

    async def test_override_event_replaces_reply(self) -> None:
        """With override replies configured, an opt-out gets the configured message."""
        async with OfflineResponder({"opt_out": "You are unsubscribed."}) as responder:
            reply = await responder.respond(request("stop", turn=3))
        assert reply.text == "You are unsubscribed."
        assert reply.overridden
        assert reply.event == "opt_out"
        assert reply.kind is ReplyKind.TEXT

    async def test_from_settings_uses_configured_override_messages(self, make_settings) -> None:
        """`from_settings` overrides handoff with PYLOTO_HANDOFF_REPLY, like the real one."""
        responder = OfflineResponder.from_settings(make_settings(handoff_reply="A person soon."))
        reply = await responder.respond(request("I need a human", turn=1))
        assert (reply.text, reply.event, reply.overridden) == (
            "A person soon.",
            "human_handoff",
            True,
        )
        other = await responder.respond(request("price?", turn=1))
        assert not other.overridden
