"""LLMResponder over the OpenAI chat model (the real AsyncOpenAI client) against the fake server.

Latencies stay at tens of milliseconds; assertions are on what the server saw (arrival and
finish times, bodies), never on how long things took.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.adapters.llm.openai import OpenAIChatModel, open_openai_client
from pyloto_cli.domain.breaker import BreakerState, CircuitBreaker
from pyloto_cli.domain.errors import CircuitOpen, TransientError
from pyloto_cli.domain.reply import ReplyKind
from pyloto_cli.domain.webhook import MessageType
from pyloto_cli.pipeline.responder import CIRCUIT_OPEN, LLMResponder
from pyloto_cli.settings import Settings
from tests.fakes import request
from tests.fakes.openai_server import FakeAnswer, FakeOpenAIServer

BUTTONS = json.dumps(
    {
        "kind": "buttons",
        "buttons": [{"title": "Basic"}, {"title": "Pro"}],
        "list_button": "",
        "sections": [],
    }
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(latency_ms=50) as server:
        yield server


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read afresh (so mypy does not keep an earlier narrowing)."""
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def llm_settings(make_settings: Callable[..., Settings], fake: FakeOpenAIServer):
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "openai_api_key": "test-key",
            "openai_base_url": fake.base_url,
            "llm_max_retries": 0,
            "llm_stage_timeout": 2.0,
            "llm_deadline": 5.0,
        }
        return make_settings(**{**values, **overrides})

    return factory


@contextlib.asynccontextmanager
async def responder_for(settings: Settings, **kw: Any) -> AsyncIterator[LLMResponder]:
    async with (
        open_openai_client(settings) as client,
        LLMResponder(OpenAIChatModel(client), settings, **kw) as responder,
    ):
        yield responder


class TestHappyPath:
    """Three calls, two on the critical path, the typed request on the wire."""

    async def test_event_and_response_overlap_and_type_follows_response(
        self, fake: FakeOpenAIServer, llm_settings
    ) -> None:
        """LLM#1 and LLM#2 are in flight together; LLM#3 arrives after LLM#2 finished."""
        fake.latency_ms = 80
        fake.script("event", FakeAnswer(content='{"event": "price"}'))
        fake.script("text", FakeAnswer(content="Basic is 10, Pro is 20."))
        fake.script("message_type", FakeAnswer(content=BUTTONS))
        async with responder_for(llm_settings()) as responder:
            reply = await responder.respond(request("how much?", turn=2))
        (event,) = fake.by_route("event")
        (text,) = fake.by_route("text")
        (shape,) = fake.by_route("message_type")
        assert event.finished is not None
        assert text.finished is not None
        assert event.arrived < text.finished
        assert text.arrived < event.finished
        assert shape.arrived >= text.finished
        assert (reply.text, reply.event, reply.kind) == (
            "Basic is 10, Pro is 20.",
            "price",
            ReplyKind.BUTTONS,
        )
        assert [b.title for b in reply.buttons] == ["Basic", "Pro"]
        assert reply.errors == ()
        assert set(reply.timings_ms) == {"event", "response", "message_type"}

    async def test_request_bodies_on_the_wire(self, fake: FakeOpenAIServer, llm_settings) -> None:
        """Bearer key, per-stage models, strict json_schema for LLM#1 and LLM#3 only."""
        settings = llm_settings(openai_model="m-base", openai_model_event="m-event")
        async with responder_for(settings) as responder:
            await responder.respond(request("hello"))
        (event,) = fake.by_route("event")
        (text,) = fake.by_route("text")
        (shape,) = fake.by_route("message_type")
        assert event.headers["authorization"] == "Bearer test-key"
        assert (event.body["model"], text.body["model"], shape.body["model"]) == (
            "m-event",
            "m-base",
            "m-base",
        )
        fmt = event.body["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"]["strict"] is True
        assert "response_format" not in text.body
        assert text.body["messages"][-1] == {"role": "user", "content": "hello"}
        assert shape.body["messages"][-1]["content"] == "Thanks for your message! How can I help?"

    async def test_non_text_message_makes_no_calls(
        self, fake: FakeOpenAIServer, llm_settings
    ) -> None:
        """An image without caption gets the polite text reply without calling the model."""
        async with responder_for(llm_settings()) as responder:
            reply = await responder.respond(request(None, msg_type=MessageType.IMAGE))
        assert reply.kind is ReplyKind.TEXT
        assert reply.text
        assert fake.requests == []


class TestFailures:
    """Every failure falls back; the message is still answered."""

    async def test_event_timeout_gives_unknown_event(
        self, fake: FakeOpenAIServer, llm_settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        """LLM#1 slower than the stage timeout: event `unknown`, reply still generated."""
        fake.script("event", FakeAnswer(latency_ms=1500))
        fake.script("text", FakeAnswer(content="Sure."))
        with caplog.at_level(logging.WARNING, logger="pyloto"):
            async with responder_for(llm_settings(llm_stage_timeout=0.3)) as responder:
                reply = await responder.respond(request("hi"))
        assert (reply.text, reply.event, reply.errors) == ("Sure.", "unknown", ("event",))
        fields = [r.fields for r in caplog.records if r.getMessage() == "llm_error"]  # type: ignore[attr-defined]
        assert fields == [{"stage": "event", "reason": "timeout"}]

    @pytest.mark.parametrize(("status", "reason"), [(429, "rate_limited"), (500, "http_500")])
    async def test_response_error_status_says_nothing_yet(
        self,
        fake: FakeOpenAIServer,
        llm_settings,
        caplog: pytest.LogCaptureFixture,
        status: int,
        reason: str,
    ) -> None:
        """A 429 or 500 for LLM#2: no reply yet (TransientError: the task is retried within
        the horizon), LLM#3 not called, llm_error logged."""
        fake.script("text", FakeAnswer(status=status))
        settings = llm_settings()
        with caplog.at_level(logging.WARNING, logger="pyloto"):
            async with responder_for(settings) as responder:
                with pytest.raises(TransientError, match=f"llm_unavailable: {reason}"):
                    await responder.respond(request("hi"))
        assert fake.by_route("message_type") == []
        fields = [r.fields for r in caplog.records if r.getMessage() == "llm_error"]  # type: ignore[attr-defined]
        assert fields == [{"stage": "response", "reason": reason}]

    async def test_one_retry_recovers_from_a_500(
        self, fake: FakeOpenAIServer, llm_settings
    ) -> None:
        """With PYLOTO_LLM_MAX_RETRIES=1 the client retries once and the stage succeeds."""
        fake.script(
            "text",
            FakeAnswer(status=500, headers={"retry-after-ms": "10"}),
            FakeAnswer(content="Second time lucky."),
        )
        async with responder_for(llm_settings(llm_max_retries=1)) as responder:
            reply = await responder.respond(request("hi"))
        assert (reply.text, reply.errors) == ("Second time lucky.", ())
        assert [r.status for r in fake.by_route("text")] == [500, 200]

    @pytest.mark.parametrize(
        "answer",
        [
            FakeAnswer(raw_body="{this is not json"),
            FakeAnswer(raw_body='{"object": "chat.completion", "choices": []}'),
            FakeAnswer(content='{"kind": "buttons", "buttons": []}'),
            FakeAnswer(content="Sure, here are buttons: Yes / No"),
        ],
        ids=["http-body-not-json", "no-choices", "schema-mismatch", "prose-not-json"],
    )
    async def test_malformed_type_output_falls_back_to_text(
        self, fake: FakeOpenAIServer, llm_settings, answer: FakeAnswer
    ) -> None:
        """Whatever is wrong with LLM#3's answer, the reply goes out as text."""
        fake.script("text", FakeAnswer(content="Here you go."))
        fake.script("message_type", answer)
        async with responder_for(llm_settings()) as responder:
            reply = await responder.respond(request("hi"))
        assert (reply.text, reply.kind, reply.errors) == (
            "Here you go.",
            ReplyKind.TEXT,
            ("message_type",),
        )

    async def test_overall_deadline_says_nothing_yet(
        self, fake: FakeOpenAIServer, llm_settings
    ) -> None:
        """Past PYLOTO_LLM_DEADLINE without the reply text: no reply yet, a retry later."""
        fake.latency_ms = 1500
        settings = llm_settings(llm_stage_timeout=2.0, llm_deadline=0.3)
        async with responder_for(settings) as responder:
            with pytest.raises(TransientError, match="llm_unavailable: deadline"):
                await responder.respond(request("hi"))

    async def test_connection_refused_says_nothing_yet(
        self, make_settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nothing listening: a connection error is a transient failure like any other."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings = make_settings(
            openai_api_key="test-key",
            openai_base_url=f"http://127.0.0.1:{port}/v1",
            llm_max_retries=0,
        )
        with caplog.at_level(logging.WARNING, logger="pyloto"):
            async with responder_for(settings) as responder:
                with pytest.raises(TransientError, match="llm_unavailable: connection"):
                    await responder.respond(request("hi"))
        reasons = {r.fields["reason"] for r in caplog.records if r.getMessage() == "llm_error"}  # type: ignore[attr-defined]
        assert reasons == {"connection"}


class TestBreaker:
    """N consecutive failures open the breaker; a probe after the cool-down closes it."""

    async def test_breaker_opens_skips_calls_then_probe_closes_it(
        self, fake: FakeOpenAIServer, llm_settings
    ) -> None:
        """Open: CircuitOpen (a wait) with no call. After the cool-down a successful probe
        closes it."""
        clock = Clock()
        breaker = CircuitBreaker(2, 30.0, clock=clock)
        settings = llm_settings()
        fake.always(FakeAnswer(status=503))
        async with responder_for(settings, breaker=breaker) as responder:
            with pytest.raises(TransientError, match="llm_unavailable"):
                await responder.respond(request("hi"))
            assert state(breaker) is BreakerState.OPEN
            seen = len(fake.requests)

            with pytest.raises(CircuitOpen, match=CIRCUIT_OPEN) as skipped:
                await responder.respond(request("hi again"))
            assert skipped.value.retry_after == pytest.approx(30.0)
            assert len(fake.requests) == seen

            fake.always(None)
            clock.now += 30.0
            probe = await responder.respond(request("still there?"))
        assert probe.errors == ()
        assert probe.text == "Thanks for your message! How can I help?"
        assert state(breaker) is BreakerState.CLOSED
        assert len(fake.requests) == seen + 3


class TestOverrideAndPrompts:
    """Override events and the prompts directory."""

    async def test_handoff_event_replaces_reply_and_cancels_the_rest(
        self, fake: FakeOpenAIServer, llm_settings
    ) -> None:
        """human_handoff arrives first: configured message, LLM#2 abandoned, LLM#3 never sent."""
        fake.script("event", FakeAnswer(content='{"event": "human_handoff"}', latency_ms=20))
        fake.script("text", FakeAnswer(latency_ms=1000))
        settings = llm_settings(handoff_reply="Connecting you with a person.")
        async with responder_for(settings) as responder:
            reply = await responder.respond(request("I want a human"))
        assert (reply.text, reply.event, reply.overridden) == (
            "Connecting you with a person.",
            "human_handoff",
            True,
        )
        assert reply.errors == ()
        assert fake.by_route("message_type") == []
        (text,) = fake.by_route("text")
        assert text.finished is None

    async def test_prompts_dir_overrides_the_shipped_prompt(
        self, fake: FakeOpenAIServer, llm_settings, tmp_path: Path
    ) -> None:
        """A response.txt in PYLOTO_PROMPTS_DIR is LLM#2's system prompt."""
        (tmp_path / "response.txt").write_text("Always answer in haiku.", encoding="utf-8")
        async with responder_for(llm_settings(prompts_dir=tmp_path)) as responder:
            await responder.respond(request("hi"))
        (text,) = fake.by_route("text")
        assert text.body["messages"][0] == {"role": "system", "content": "Always answer in haiku."}
        (event,) = fake.by_route("event")
        assert event.body["messages"][0]["content"] != "Always answer in haiku."


async def test_client_factory_requires_a_key(make_settings) -> None:
    """Without OPENAI_API_KEY the factory refuses to build a client."""
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        async with open_openai_client(make_settings()):
            pass
