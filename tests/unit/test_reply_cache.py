"""CachingResponder: short context-free turns reuse a recent reply at the same point."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from pyloto_cli.adapters.llm.cache import (
    CachingResponder,
    ReplyCache,
    cacheable_text,
    conversation_point,
    normalize,
)
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.bench.payloads import GREETINGS, message_text
from pyloto_cli.bench.report import reply_cache_usage
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.reply import Reply, ReplyKind, ReplyOption
from pyloto_cli.domain.webhook import MessageType, split_webhook
from pyloto_cli.pipeline.process import Outcome
from pyloto_cli.ports import Responder, ResponderRequest
from pyloto_cli.settings import Settings
from tests.fakes import request

GREETING = Reply(
    text="Hello! How can I help?",
    kind=ReplyKind.BUTTONS,
    buttons=(ReplyOption(id="b1", title="Prices"),),
    event="greeting",
    timings_ms={"event": 300.0, "response": 400.0},
)


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingResponder:
    """Answers every request with `reply` and counts the calls (the LLM stand-in)."""

    def __init__(self, reply: Reply = GREETING) -> None:
        self.reply = reply
        self.calls = 0

    async def respond(self, request: ResponderRequest) -> Reply:
        self.calls += 1
        return self.reply


def caching(
    inner: Responder, clock: FakeClock | None = None, *, ttl_s: float = 600.0, size: int = 100
) -> CachingResponder:
    cache = ReplyCache(ttl_s, size, clock=clock or FakeClock())
    return CachingResponder(inner, cache, max_words=4)


def later(text: str, bot_said: str = "Anything else?", turn: int = 3) -> ResponderRequest:
    """A later-turn request whose previous assistant message is `bot_said`."""
    return request(text, turn=turn, history=(("user", "hello"), ("assistant", bot_said)))


class TestEligibility:
    """Which turns may be cached, and their normalized text."""

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("Hi!", "hi"),
            ("  HI  there!!! ", "hi there"),
            ("Olá, tudo bem", "olá tudo bem"),
            ("thanks 🙏🏽", "thanks 🙏"),
            ("❤️", "❤"),
            ("\uff28\uff25\uff2c\uff2c\uff2f", "hello"),  # fullwidth HELLO
        ],
    )
    def test_short_plain_turns_are_normalized(self, text: str, key: str) -> None:
        """Case, width, punctuation, spacing and emoji variation do not change the key."""
        assert cacheable_text(text, max_words=4) == key
        assert normalize(text) == key

    @pytest.mark.parametrize(
        "text",
        [
            "hi?",
            "¿hola",
            "can you help me with my order please",
            "order 42",
            "see www.example.com",
            "look at example.com",
            "http://x",
            "mail me@example.org",
            "...",
            "",
            None,
            "x" * 300,
        ],
    )
    def test_questions_long_numbers_and_links_are_not_eligible(self, text: str | None) -> None:
        """Questions, long turns, digits, links and empty text are never cached."""
        assert cacheable_text(text, max_words=4) is None

    def test_non_text_and_quoting_messages_are_not_eligible(self) -> None:
        """A button reply or a message quoting an earlier one depends on its context."""
        responder = caching(CountingResponder())
        assert responder.key(request("Yes", msg_type=MessageType.INTERACTIVE)) is None
        quoting = request("ok")
        quoting = dataclasses.replace(
            quoting, message=dataclasses.replace(quoting.message, context_id="wamid.PREV")
        )
        assert responder.key(quoting) is None

    def test_point_is_first_turn_or_the_previous_bot_message(self) -> None:
        """Turn 1 is `first`; a later turn is keyed on what the bot said last."""
        assert conversation_point(request("hi")) == "first"
        assert conversation_point(later("ok", "A")) == conversation_point(later("x", "A", 7))
        assert conversation_point(later("ok", "A")) != conversation_point(later("ok", "B"))
        assert conversation_point(later("ok", "A")) != "first"


class TestHitsAndMisses:
    """Lookups before the wrapped responder is asked."""

    async def test_same_greeting_at_the_same_point_is_a_hit(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The second "hi" (any casing/punctuation) on a first turn costs no LLM call."""
        inner = CountingResponder()
        responder = caching(inner)
        caplog.set_level(logging.INFO, logger="pyloto")
        first = await responder.respond(request("Hi!"))
        second = await responder.respond(request("hi"))
        assert inner.calls == 1
        assert first == GREETING
        assert dataclasses.replace(second, timings_ms=GREETING.timings_ms) == GREETING
        assert set(second.timings_ms) == {"cache"}
        events = [r.getMessage() for r in caplog.records if r.name == "pyloto.llm"]
        assert events == ["reply_cache_miss", "reply_cache_hit"]
        stats = responder.stats()
        assert (stats.hits, stats.misses, stats.stored, stats.size) == (1, 1, 1, 1)

    async def test_first_and_later_turns_do_not_share_entries(self) -> None:
        """The same text on a later turn is a different point of the conversation."""
        inner = CountingResponder()
        responder = caching(inner)
        await responder.respond(request("hello"))
        await responder.respond(later("hello"))
        await responder.respond(later("hello", "Your order ships today."))
        assert inner.calls == 3
        await responder.respond(later("Hello!", turn=9))  # same previous bot message: a hit
        assert inner.calls == 3

    async def test_other_business_numbers_do_not_share_entries(self) -> None:
        """A reply is reused only for the business number it was written for."""
        inner = CountingResponder()
        responder = caching(inner)
        await responder.respond(request("hi"))
        other = request("hi")
        other = dataclasses.replace(
            other, message=dataclasses.replace(other.message, phone_number_id="15550002222")
        )
        await responder.respond(other)
        assert inner.calls == 2

    async def test_ineligible_turns_always_reach_the_responder(self) -> None:
        """A question is answered by the wrapped responder every time and never counted."""
        inner = CountingResponder()
        responder = caching(inner)
        for _ in range(3):
            await responder.respond(request("open on sunday?"))
        assert inner.calls == 3
        assert responder.stats().misses == 0


class TestWhatIsStored:
    """Only clean replies to context-free events are stored."""

    @pytest.mark.parametrize(
        "reply",
        [
            Reply(text="A person will reply soon.", event="human_handoff", overridden=True),
            Reply(text="Sorry, not now.", event="greeting", errors=("response",)),
            Reply(text="Sorry, not now.", errors=("circuit_open",)),
            Reply(text="Cancelled.", event="cancel"),
            Reply(text="Here is the price list.", event="price"),
        ],
    )
    async def test_overridden_fallback_and_intent_replies_are_not_stored(
        self, reply: Reply
    ) -> None:
        """Handoff/opt-out, fallbacks and replies to real intents are asked again next time."""
        inner = CountingResponder(reply)
        responder = caching(inner)
        assert await responder.respond(request("hi")) == reply
        assert await responder.respond(request("hi")) == reply
        assert inner.calls == 2
        assert responder.stats().stored == 0

    async def test_stored_reply_keeps_no_timings_of_the_miss(self) -> None:
        """The stored copy is detached from the original reply's timing dict."""
        inner = CountingResponder(dataclasses.replace(GREETING, timings_ms={"event": 1.0}))
        responder = caching(inner)
        await responder.respond(request("hi"))
        inner.reply.timings_ms["event"] = 99.0
        hit = await responder.respond(request("hi"))
        assert "event" not in hit.timings_ms


class TestBounds:
    """TTL and LRU bound."""

    async def test_entries_expire_after_the_ttl(self) -> None:
        """An entry older than the TTL is a miss and the responder is asked again."""
        clock = FakeClock()
        inner = CountingResponder()
        responder = caching(inner, clock, ttl_s=60.0)
        await responder.respond(request("hi"))
        clock.now += 59.9
        await responder.respond(request("hi"))
        assert inner.calls == 1
        clock.now += 0.2
        await responder.respond(request("hi"))
        assert inner.calls == 2

    def test_least_recently_used_entry_is_dropped_beyond_the_bound(self) -> None:
        """With room for two, touching `a` keeps it; adding `c` drops `b`."""
        cache = ReplyCache(60.0, max_entries=2, clock=FakeClock())
        cache.put(("a",), GREETING)
        cache.put(("b",), GREETING)
        assert cache.get(("a",)) is GREETING
        cache.put(("c",), GREETING)
        assert len(cache) == 2
        assert cache.get(("b",)) is None
        assert cache.get(("a",)) is GREETING
        assert cache.get(("c",)) is GREETING

    def test_bad_bounds_are_refused(self) -> None:
        """A zero TTL or size is a configuration error, not a silent no-op cache."""
        with pytest.raises(ValueError, match="ttl_s"):
            ReplyCache(0.0)
        with pytest.raises(ValueError, match="max_entries"):
            ReplyCache(1.0, max_entries=0)


def text_payload(wamid: str, wa_id: str, body: str) -> dict[str, Any]:
    """A `messages` webhook with one text message from fictional `wa_id`."""
    # stamped now: the pipeline does not answer a message older than a day
    message = {"from": wa_id, "id": wamid, "timestamp": str(int(time.time())), "type": "text"}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550100000", "phone_number_id": "109000000000001"},
        "contacts": [{"profile": {"name": "Test"}, "wa_id": wa_id}],
        "messages": [{**message, "text": {"body": body}}],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "209000000000001", "changes": [{"field": "messages", "value": value}]}],
    }


class TestWiring:
    """The composition root wraps the responder only when PYLOTO_REPLY_CACHE is on."""

    async def test_off_by_default(self, make_settings: Callable[..., Settings]) -> None:
        """Without the setting the offline responder is used as is."""
        settings = make_settings(
            queue_backend="memory", session_store_backend="memory", dedupe_backend="memory"
        )
        assert settings.reply_cache is False
        async with open_roles(settings) as roles:
            assert isinstance((await roles.pipeline()).responder, OfflineResponder)

    async def test_on_wraps_the_responder_and_the_pipeline_hits(
        self, make_settings: Callable[..., Settings]
    ) -> None:
        """Two users greeting first: the second reply comes from the cache, both are sent."""
        settings = make_settings(
            queue_backend="memory",
            session_store_backend="memory",
            dedupe_backend="memory",
            reply_cache=True,
            reply_cache_ttl_seconds=30,
            reply_cache_max_words=3,
        )
        async with open_roles(settings) as roles:
            pipeline = await roles.pipeline()
            responder = pipeline.responder
            assert isinstance(responder, CachingResponder)
            assert isinstance(responder.inner, OfflineResponder)
            results = []
            for n, wa_id in enumerate(("15550000001", "15550000002")):
                (task,) = split_webhook(text_payload(f"wamid.C{n}", wa_id, "Hello!"), 1.0)
                results.append(await pipeline.process(task))
        assert [r.outcome for r in results] == [Outcome.DONE, Outcome.DONE]
        first, second = (r.reply for r in results)
        assert first is not None
        assert second is not None
        assert "cache" not in first.timings_ms
        assert set(second.timings_ms) == {"cache"}
        assert second.text == first.text
        assert responder.stats().hits == 1


class TestBenchFigures:
    """The bench's hit rate, read from the server's JSON log, and its greeting share."""

    def test_usage_counts_hits_and_misses_of_the_log(self) -> None:
        """Hit/miss events are counted; other lines, non-JSON lines included, are skipped."""
        lines = [
            '{"event": "runtime_opened", "responder": "CachingResponder"}',
            "INFO:     Uvicorn running on http://127.0.0.1:8000",
            '{"event": "reply_cache_miss", "point": "first"}',
            '{"event": "reply_cache_hit", "point": "first"}',
            '{"event": "reply_cache_hit", "point": "later"}',
            '{"event": "message_sent"}',
        ]
        usage = reply_cache_usage(lines)
        assert (usage.enabled, usage.hits, usage.misses) == (True, 2, 1)
        assert usage.hit_rate == pytest.approx(2 / 3, abs=1e-4)
        assert usage.show() == "2 / 3 (66.7%)"

    def test_usage_tells_off_from_unknown(self) -> None:
        """Another responder means off; a log without `runtime_opened` means unknown."""
        off = reply_cache_usage(['{"event": "runtime_opened", "responder": "LLMResponder"}'])
        assert (off.enabled, off.hit_rate, off.show()) == (False, None, "off")
        assert reply_cache_usage([]).show() == "-"

    def test_greeting_share_is_spread_and_eligible(self) -> None:
        """A 0.5 share makes every other message a cacheable greeting; 0 makes none."""
        texts = [message_text(i, 0.5) for i in range(10)]
        greetings = [t for t in texts if t in GREETINGS]
        assert len(greetings) == 5
        assert set(greetings) == set(GREETINGS)
        assert all(cacheable_text(t, max_words=4) for t in greetings)
        assert not any(cacheable_text(message_text(i, 0.0), max_words=4) for i in range(10))
