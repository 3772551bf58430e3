"""The stage graph runner, the default stages' requests and parsing, prompts, the breaker.

No sockets: a recording `ChatModel` stands in for the model (the wire format is covered by
tests/integration/test_openai_responder.py against the fake server).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.domain.breaker import BreakerState, CircuitBreaker
from pyloto_cli.domain.llm import ChatRequest, LLMCallError
from pyloto_cli.domain.reply import ReplyKind
from pyloto_cli.pipeline.llm_output import EVENTS, load_prompts, parse_event, parse_message_type
from pyloto_cli.pipeline.stages import (
    Outputs,
    Stage,
    StageContext,
    StageGraph,
    StageOutcome,
    build_reply,
    default_stages,
)
from pyloto_cli.settings import Settings
from tests.fakes import request

EVENT_OK = json.dumps({"event": "price"})
TEXT_SHAPE_JSON = json.dumps({"kind": "text", "buttons": [], "list_button": "", "sections": []})


class RecordingChat:
    """A ChatModel answering per stage from a table (a string, or an exception to raise)."""

    def __init__(self, answers: dict[str, str | Exception]) -> None:
        self.answers = answers
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> str:
        self.requests.append(request)
        answer = self.answers[request.stage]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def by_stage(self, stage: str) -> ChatRequest:
        return next(r for r in self.requests if r.stage == stage)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(openai_api_key="test-key", llm_stage_timeout=1.0, llm_deadline=2.0)


def context(
    settings: Settings, chat: Any, text: str = "how much is it?", **kw: Any
) -> StageContext:
    return StageContext(request(text, **kw), settings, load_prompts(None), chat)


async def run_default(settings: Settings, chat: RecordingChat, **kw: Any) -> Any:
    graph = StageGraph(default_stages())
    result = await graph.run(
        context(settings, chat, **kw),
        stage_timeout=settings.llm_stage_timeout,
        deadline=settings.llm_deadline,
    )
    return build_reply(result, settings)


# --- The runner ----------------------------------------------------------------------------


def pure_stage(
    name: str,
    log: list[str],
    *,
    needs: tuple[str, ...] = (),
    gate: asyncio.Event | None = None,
    value: str | None = None,
    fail: str | None = None,
    ended: asyncio.Event | None = None,
) -> Stage[str]:
    async def run(_ctx: StageContext, inputs: Outputs) -> str:
        log.append(f"start {name}")
        if gate is not None:
            await gate.wait()
        if fail is not None:
            raise LLMCallError(fail)
        log.append(f"end {name}")
        if ended is not None:
            ended.set()
        return value or "+".join([name, *(str(inputs[n]) for n in needs)])

    return Stage(name, run, lambda _ctx: f"fallback-{name}", needs=needs)


class TestStageGraph:
    """The runner starts each stage as soon as its inputs are ready."""

    async def test_independent_stages_start_together_and_dependents_wait(self, settings) -> None:
        """`b` (needs `a`) starts only after `a` ends, while `c` runs alongside `a`."""
        log: list[str] = []
        gate = asyncio.Event()
        c_ended = asyncio.Event()
        graph = StageGraph(
            [
                pure_stage("a", log, gate=gate),
                pure_stage("b", log, needs=("a",)),
                pure_stage("c", log, ended=c_ended),
            ]
        )
        task = asyncio.create_task(graph.run(context(settings, None), stage_timeout=1, deadline=2))
        async with asyncio.timeout(5):
            await c_ended.wait()
        assert "start b" not in log
        assert {"start a", "start c"} <= set(log)
        gate.set()
        result = await task
        assert log.index("end a") < log.index("start b")
        assert result.outputs == {"a": "a", "b": "b+a", "c": "c"}
        assert result.errors == ()
        assert set(result.timings_ms) == {"a", "b", "c"}

    async def test_failed_stage_falls_back_and_its_dependents_are_not_run(
        self, settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A failing stage takes its fallback, logs llm_error; a stage needing it is skipped."""
        log: list[str] = []
        graph = StageGraph(
            [pure_stage("a", log, fail="http_500"), pure_stage("b", log, needs=("a",))]
        )
        with caplog.at_level(logging.WARNING, logger="pyloto"):
            result = await graph.run(context(settings, None), stage_timeout=1, deadline=2)
        assert result.outputs == {"a": "fallback-a", "b": "fallback-b"}
        assert result.errors == ("a",)
        assert "start b" not in log
        errors = [r for r in caplog.records if r.getMessage() == "llm_error"]
        assert [r.fields for r in errors] == [{"stage": "a", "reason": "http_500"}]  # type: ignore[attr-defined]

    async def test_stage_timeout_falls_back(self, settings) -> None:
        """A stage slower than its timeout falls back with reason `timeout`."""
        outcomes: list[StageOutcome] = []
        never = asyncio.Event()
        graph = StageGraph([pure_stage("slow", [], gate=never), pure_stage("fast", [])])
        result = await graph.run(
            context(settings, None), stage_timeout=0.05, deadline=2, on_outcome=outcomes.append
        )
        assert result.outputs == {"slow": "fallback-slow", "fast": "fast"}
        assert result.errors == ("slow",)
        slow = next(o for o in outcomes if o.stage == "slow")
        assert (slow.reason, slow.service_failure) == ("timeout", True)

    async def test_deadline_falls_back_for_every_unfinished_stage(self, settings) -> None:
        """At the overall deadline, running and waiting stages all take their fallbacks."""
        never = asyncio.Event()
        graph = StageGraph(
            [
                pure_stage("a", [], gate=never),
                pure_stage("b", [], needs=("a",)),
                pure_stage("c", []),
            ]
        )
        result = await graph.run(context(settings, None), stage_timeout=5, deadline=0.05)
        assert result.outputs == {"a": "fallback-a", "b": "fallback-b", "c": "c"}
        assert set(result.errors) == {"a", "b"}

    async def test_stop_when_cancels_running_stages(self, settings) -> None:
        """A stage's `stop_when` ends the run at once; unfinished stages get no output."""
        log: list[str] = []
        never = asyncio.Event()

        async def stopper(_ctx: StageContext, _inputs: Outputs) -> str:
            return "stop"

        graph = StageGraph(
            [
                Stage("s", stopper, lambda _c: "x", stop_when=lambda v, _c: v == "stop"),
                pure_stage("slow", log, gate=never),
                pure_stage("after", log, needs=("slow",)),
            ]
        )
        result = await graph.run(context(settings, None), stage_timeout=5, deadline=5)
        assert result.stopped_by == "s"
        assert result.outputs == {"s": "stop"}
        assert result.errors == ()
        assert "start after" not in log

    @pytest.mark.parametrize(
        ("needs", "message"),
        [((("a", "b"), ("b", "a")), "cycle"), ((("a", "zzz"), ("b", "")), "unknown")],
    )
    def test_invalid_graphs_are_refused(self, needs: Any, message: str) -> None:
        """Cycles and unknown inputs are refused when the graph is built."""
        stages = [pure_stage(name, [], needs=tuple(n for n in (dep,) if n)) for name, dep in needs]
        with pytest.raises(ValueError, match=message):
            StageGraph(stages)

    def test_duplicate_names_are_refused(self) -> None:
        """Two stages may not share a name."""
        with pytest.raises(ValueError, match="duplicate"):
            StageGraph([pure_stage("a", []), pure_stage("a", [])])


# --- The default stages ------------------------------------------------------------------


class TestDefaultStages:
    """The three LLM stages' requests and how their answers become a Reply."""

    async def test_requests_carry_prompts_history_schema_and_models(self, make_settings) -> None:
        """LLM#1 gets recent history + schema, LLM#2 the whole history, LLM#3 LLM#2's text."""
        settings = make_settings(openai_model="base-model", openai_model_type="type-model")
        chat = RecordingChat(
            {"event": EVENT_OK, "response": "It costs 10.", "message_type": TEXT_SHAPE_JSON}
        )
        history = tuple(("user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(10))
        reply = await run_default(settings, chat, history=history, turn=6)
        event, response, shape = (chat.by_stage(s) for s in ("event", "response", "message_type"))
        assert event.schema is not None
        assert event.schema["properties"]["event"]["enum"] == list(EVENTS)
        assert event.messages[0].role == "system"
        assert event.messages[0].content == load_prompts(None).event
        assert [m.content for m in event.messages[1:]] == [
            *(f"turn {i}" for i in range(4, 10)),
            "how much is it?",
        ]
        assert len(response.messages) == 1 + 10 + 1
        assert response.schema is None
        assert response.messages[-1].role == "user"
        assert [m.content for m in shape.messages[1:]] == ["It costs 10."]
        assert (event.model, response.model, shape.model) == ("base-model",) * 2 + ("type-model",)
        assert (reply.text, reply.event, reply.kind, reply.errors) == (
            "It costs 10.",
            "price",
            ReplyKind.TEXT,
            (),
        )

    async def test_list_answer_becomes_list_reply(self, settings) -> None:
        """A list shape keeps sections and rows, with generated unique row ids."""
        shape = {
            "kind": "list",
            "buttons": [],
            "list_button": "Plans",
            "sections": [
                {"title": "Basic", "rows": [{"title": "Solo", "description": "1 user"}]},
                {"title": "Pro", "rows": [{"title": "Team", "description": ""}]},
            ],
        }
        chat = RecordingChat(
            {"event": EVENT_OK, "response": "Pick a plan.", "message_type": json.dumps(shape)}
        )
        reply = await run_default(settings, chat)
        assert reply.kind is ReplyKind.LIST
        assert reply.list_button == "Plans"
        rows = [row for section in reply.sections for row in section.rows]
        assert [(r.id, r.title, r.description) for r in rows] == [
            ("row-1", "Solo", "1 user"),
            ("row-2", "Team", None),
        ]

    @pytest.mark.parametrize(
        "bad",
        [
            "not json",
            '{"event": "weather"}',
            '{"event": "price", "extra": 1}',
            '{"kind": "buttons"}',
            "",
        ],
    )
    async def test_malformed_event_answer_falls_back_to_unknown(self, settings, bad: str) -> None:
        """An event answer outside the schema gives `unknown`; the reply still goes out."""
        chat = RecordingChat({"event": bad, "response": "Hi!", "message_type": TEXT_SHAPE_JSON})
        reply = await run_default(settings, chat)
        assert (reply.event, reply.text, reply.errors) == ("unknown", "Hi!", ("event",))

    @pytest.mark.parametrize(
        "bad",
        [
            '{"kind": "buttons", "buttons": [], "list_button": "", "sections": []}',
            json.dumps({"kind": "buttons", "buttons": [{"title": "x"}] * 4}),
            '{"kind": "list", "buttons": [], "list_button": "", "sections": []}',
            '{"kind": "carousel"}',
            '{"kind": "text"',
        ],
    )
    async def test_malformed_type_answer_falls_back_to_text(self, settings, bad: str) -> None:
        """A message-type answer outside the schema gives a text reply with LLM#2's text."""
        chat = RecordingChat({"event": EVENT_OK, "response": "Hi!", "message_type": bad})
        reply = await run_default(settings, chat)
        assert (reply.kind, reply.text, reply.errors) == (ReplyKind.TEXT, "Hi!", ("message_type",))

    async def test_failed_response_gives_safe_reply_without_type_call(self, settings) -> None:
        """LLM#2 failing gives the safe reply, and LLM#3 is not called."""
        chat = RecordingChat(
            {"event": EVENT_OK, "response": LLMCallError("rate_limited"), "message_type": "{}"}
        )
        reply = await run_default(settings, chat)
        assert reply.text == settings.safe_reply
        assert reply.errors == ("response",)
        assert reply.kind is ReplyKind.TEXT
        assert [r.stage for r in chat.requests if r.stage == "message_type"] == []

    @pytest.mark.parametrize("event", ["human_handoff", "opt_out"])
    async def test_override_event_replaces_reply(self, make_settings, event: str) -> None:
        """An overriding event's configured message replaces LLM#2's reply."""
        settings = make_settings(
            handoff_reply="A person will answer.",
            optout_reply="Bye.",
            override_events="human_handoff,opt_out",
        )
        chat = RecordingChat(
            {
                "event": json.dumps({"event": event}),
                "response": "generated",
                "message_type": TEXT_SHAPE_JSON,
            }
        )
        reply = await run_default(settings, chat)
        expected = "A person will answer." if event == "human_handoff" else "Bye."
        assert (reply.text, reply.event, reply.overridden) == (expected, event, True)

    async def test_the_llms_opt_out_alone_is_recorded_not_acted_on(self, make_settings) -> None:
        """By default only human_handoff overrides: an opt_out guess keeps the generated reply
        (opting out is the user's exact keyword, handled before the LLM)."""
        chat = RecordingChat(
            {
                "event": json.dumps({"event": "opt_out"}),
                "response": "generated",
                "message_type": TEXT_SHAPE_JSON,
            }
        )
        reply = await run_default(make_settings(), chat)
        assert (reply.text, reply.event, reply.overridden) == ("generated", "opt_out", False)

    async def test_override_set_is_configurable(self, make_settings) -> None:
        """An event outside PYLOTO_OVERRIDE_EVENTS does not override."""
        settings = make_settings(override_events="human_handoff")
        chat = RecordingChat(
            {
                "event": json.dumps({"event": "opt_out"}),
                "response": "generated",
                "message_type": TEXT_SHAPE_JSON,
            }
        )
        reply = await run_default(settings, chat)
        assert (reply.text, reply.overridden) == ("generated", False)


def test_parsers_strip_whitespace_and_blank_descriptions() -> None:
    """Answers are validated strictly but tolerate surrounding whitespace."""
    assert parse_event(' {"event": " cancel "} ') == "cancel"
    shape = parse_message_type(
        json.dumps({"kind": "buttons", "buttons": [{"title": " Yes "}, {"title": "No"}]})
    )
    assert [(b.id, b.title) for b in shape.buttons] == [("btn-1", "Yes"), ("btn-2", "No")]


# --- Prompts -------------------------------------------------------------------------------


class TestPrompts:
    """Shipped prompts, overridable per file from PYLOTO_PROMPTS_DIR."""

    def test_shipped_prompts_load(self) -> None:
        """The package ships a non-empty prompt per stage."""
        prompts = load_prompts(None)
        assert "human_handoff" in prompts.event
        assert prompts.response
        assert "buttons" in prompts.message_type

    def test_override_dir_replaces_only_present_files(self, tmp_path: Path) -> None:
        """A prompts dir with only response.txt replaces that prompt alone."""
        (tmp_path / "response.txt").write_text("Answer like a pirate.\n", encoding="utf-8")
        prompts = load_prompts(tmp_path)
        assert prompts.response == "Answer like a pirate."
        assert prompts.event == load_prompts(None).event

    def test_missing_override_dir_is_an_error(self, tmp_path: Path) -> None:
        """A configured prompts dir that does not exist fails loudly."""
        with pytest.raises(ValueError, match="PYLOTO_PROMPTS_DIR"):
            load_prompts(tmp_path / "nope")


# --- Circuit breaker -------------------------------------------------------------------------


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read afresh (so mypy does not keep an earlier narrowing)."""
    return breaker.state


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestCircuitBreaker:
    """closed -> open after N failures -> half-open probe -> closed or open again."""

    def test_opens_after_consecutive_failures_only(self) -> None:
        """A success resets the count; N failures in a row open the breaker."""
        breaker = CircuitBreaker(3, 10.0, clock=FakeClock())
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
        breaker.record_failure()
        breaker.record_failure()
        assert breaker.allow()
        breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN
        assert not breaker.allow()

    def test_half_open_allows_one_probe_and_closes_on_success(self) -> None:
        """After the cool-down one probe passes, others wait; its success closes it."""
        clock = FakeClock()
        breaker = CircuitBreaker(1, 10.0, clock=clock)
        breaker.record_failure()
        clock.now += 10.0
        assert breaker.allow()
        assert state(breaker) is BreakerState.HALF_OPEN
        assert not breaker.allow()
        breaker.record_success()
        assert state(breaker) is BreakerState.CLOSED
        assert breaker.allow()

    def test_failed_probe_reopens(self) -> None:
        """A failed probe opens the breaker for another cool-down."""
        clock = FakeClock()
        breaker = CircuitBreaker(5, 10.0, clock=clock)
        for _ in range(5):
            breaker.record_failure()
        clock.now += 11.0
        assert breaker.allow()
        breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN
        clock.now += 5.0
        assert not breaker.allow()

    def test_lost_probe_is_replaced_after_a_cool_down(self) -> None:
        """A probe that never reports does not keep the breaker half-open forever."""
        clock = FakeClock()
        breaker = CircuitBreaker(1, 10.0, clock=clock)
        breaker.record_failure()
        clock.now += 10.0
        assert breaker.allow()
        clock.now += 10.0
        assert breaker.allow()
