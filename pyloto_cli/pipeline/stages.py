"""The LLM stages as a small dependency graph, its runner, and each stage's fallback.

A `Stage` names the stages whose outputs it needs; `StageGraph.run` starts every stage as soon
as its inputs are ready (one asyncio task each, in a TaskGroup). The default graph:

    LLM#1 event ─────────────┐
    LLM#2 response ── LLM#3 message_type ──> Reply

LLM#1 and LLM#2 start together, LLM#3 starts when LLM#2's text is ready: two calls on the
critical path. A stage may stop the graph early (`stop_when`): an event in the override set
(PYLOTO_OVERRIDE_EVENTS, human_handoff by default) cancels what is still running and its
configured message is the reply.
To reorder or replace stages, pass another tuple of `Stage`s (same output names) to the
responder; the runner does not change.

Failure never stalls: each stage runs under its own timeout, the graph under a deadline. A
timeout, an `LLMCallError` (429, 5xx, connection, output not matching the schema) makes the
stage use its fallback (event `unknown`, the safe reply, a text message), logs `llm_error`
with the stage and reason, and names the stage in `Reply.errors`. A stage whose input fell back
is not run; it takes its fallback too.

This module knows no SDK: the stages call a `ports.ChatModel` (the OpenAI adapter); the
responder that runs the graph is pipeline/responder.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Generic, TypeVar

from pyloto_cli.domain.llm import ChatMessage, ChatRequest, LLMCallError
from pyloto_cli.domain.reply import Reply, override_replies
from pyloto_cli.domain.session import Role
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.llm_output import (
    EVENT_SCHEMA,
    MESSAGE_TYPE_SCHEMA,
    TEXT_SHAPE,
    MessageShape,
    Prompts,
    parse_event,
    parse_message_type,
)
from pyloto_cli.ports import ChatModel, ResponderRequest
from pyloto_cli.settings import Settings

EVENT_STAGE: Final = "event"
RESPONSE_STAGE: Final = "response"
TYPE_STAGE: Final = "message_type"
UNKNOWN_EVENT: Final = "unknown"
EVENT_HISTORY_TURNS: Final = 6

_logger = get_logger("llm")
T = TypeVar("T")
Outputs = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class StageContext:
    """What every stage may read."""

    request: ResponderRequest
    settings: Settings
    prompts: Prompts
    chat: ChatModel


@dataclass(frozen=True, slots=True)
class Stage(Generic[T]):
    """A node of the graph: `run` gets the outputs of `needs`; `fallback` replaces a failure."""

    name: str
    run: Callable[[StageContext, Outputs], Awaitable[T]]
    fallback: Callable[[StageContext], T]
    needs: tuple[str, ...] = ()
    stop_when: Callable[[T, StageContext], bool] | None = None


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """How one stage ended: its value (the fallback on failure) and why it failed, if it did."""

    stage: str
    value: object
    ms: float
    reason: str | None = None
    service_failure: bool = False


@dataclass(frozen=True, slots=True)
class GraphResult:
    """Every stage's output (fallbacks included), the failed stages, timings, early stop."""

    outputs: dict[str, object]
    errors: tuple[str, ...]
    timings_ms: dict[str, float]
    stopped_by: str | None = None


OutcomeHook = Callable[[StageOutcome], None]


class StageGraph:
    """A validated set of stages (unique names, known inputs, no cycles) and its runner."""

    def __init__(self, stages: Sequence[Stage[Any]]) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names: {names}")
        for stage in stages:
            unknown = set(stage.needs) - set(names)
            if unknown:
                raise ValueError(f"stage {stage.name!r} needs unknown stages {sorted(unknown)}")
        _check_acyclic(stages)
        self.stages: tuple[Stage[Any], ...] = tuple(stages)

    async def run(
        self,
        ctx: StageContext,
        *,
        stage_timeout: float,
        deadline: float,
        on_outcome: OutcomeHook | None = None,
    ) -> GraphResult:
        """Run the stages, each as soon as its inputs are ready; never raises for LLM failures."""
        run = _GraphRun(self.stages, ctx, stage_timeout, on_outcome)
        try:
            async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
                await run.drive(group)
        except TimeoutError:
            run.expire()
        return GraphResult(dict(run.outputs), tuple(run.errors), run.timings, run.stopped_by)


def _check_acyclic(stages: Sequence[Stage[Any]]) -> None:
    done: set[str] = set()
    left = {s.name: set(s.needs) for s in stages}
    while left:
        ready = [name for name, needs in left.items() if needs <= done]
        if not ready:
            raise ValueError(f"stage graph has a cycle among {sorted(left)}")
        for name in ready:
            done.add(name)
            del left[name]


class _GraphRun:
    """The state of one run of a graph."""

    def __init__(
        self,
        stages: Sequence[Stage[Any]],
        ctx: StageContext,
        stage_timeout: float,
        on_outcome: OutcomeHook | None,
    ) -> None:
        self.ctx = ctx
        self.stage_timeout = stage_timeout
        self.on_outcome = on_outcome
        self.pending: dict[str, Stage[Any]] = {s.name: s for s in stages}
        self.running: dict[asyncio.Task[StageOutcome], Stage[Any]] = {}
        self.outputs: dict[str, object] = {}
        self.fell_back: set[str] = set()
        self.errors: list[str] = []
        self.timings: dict[str, float] = {}
        self.stopped_by: str | None = None

    async def drive(self, group: asyncio.TaskGroup) -> None:
        self.start_ready(group)
        while self.running:
            done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self.finish(self.running.pop(task), task.result())
            if self.stopped_by is not None:
                for task in self.running:
                    task.cancel()
                self.running.clear()
                self.pending.clear()
                return
            self.start_ready(group)

    def start_ready(self, group: asyncio.TaskGroup) -> None:
        changed = True
        while changed:
            changed = False
            for name, stage in list(self.pending.items()):
                if any(need in self.fell_back for need in stage.needs):
                    del self.pending[name]
                    self.outputs[name] = stage.fallback(self.ctx)
                    self.fell_back.add(name)
                    changed = True
                elif all(need in self.outputs for need in stage.needs):
                    del self.pending[name]
                    inputs = {need: self.outputs[need] for need in stage.needs}
                    task = group.create_task(
                        _attempt(stage, self.ctx, inputs, self.stage_timeout), name=f"llm-{name}"
                    )
                    self.running[task] = stage

    def finish(self, stage: Stage[Any], outcome: StageOutcome) -> None:
        self.timings[stage.name] = outcome.ms
        self.outputs[stage.name] = outcome.value
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        if outcome.reason is not None:
            self.fail(stage.name, outcome.reason)
        elif stage.stop_when is not None and stage.stop_when(outcome.value, self.ctx):
            self.stopped_by = stage.name

    def fail(self, name: str, reason: str) -> None:
        self.fell_back.add(name)
        self.errors.append(name)
        log_event(_logger, "llm_error", logging.WARNING, stage=name, reason=reason)

    def expire(self) -> None:
        """The deadline passed: every unfinished stage takes its fallback."""
        for stage in [*self.running.values(), *self.pending.values()]:
            self.outputs[stage.name] = stage.fallback(self.ctx)
            self.fail(stage.name, "deadline")
        if self.on_outcome is not None:
            for stage in self.running.values():
                fallback = self.outputs[stage.name]
                self.on_outcome(StageOutcome(stage.name, fallback, 0.0, "deadline", True))
        self.running.clear()
        self.pending.clear()


async def _attempt(
    stage: Stage[Any], ctx: StageContext, inputs: Outputs, timeout_s: float
) -> StageOutcome:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            value = await stage.run(ctx, inputs)
    except TimeoutError:
        return StageOutcome(stage.name, stage.fallback(ctx), _ms_since(start), "timeout", True)
    except LLMCallError as exc:
        reason, service = exc.reason, exc.service
        return StageOutcome(stage.name, stage.fallback(ctx), _ms_since(start), reason, service)
    return StageOutcome(stage.name, value, _ms_since(start))


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


# --- The default stages -------------------------------------------------------------------


def history_messages(request: ResponderRequest, limit: int | None = None) -> list[ChatMessage]:
    """The session's turns (newest `limit`) as chat messages, then the user's current turn."""
    turns = request.session.turns if request.session is not None else ()
    past = [t for t in turns if t.message_id != request.message.id and t.text]
    if limit is not None:
        past = past[-limit:]
    messages = [ChatMessage("user" if t.role is Role.USER else "assistant", t.text) for t in past]
    messages.append(ChatMessage("user", request.message.text or ""))
    return messages


def _model(settings: Settings, specific: str | None) -> str:
    return specific or settings.openai_model


async def detect_event(ctx: StageContext, _inputs: Outputs) -> str:
    """LLM#1: the event of the user's turn, given the recent history (structured output)."""
    history = history_messages(ctx.request, EVENT_HISTORY_TURNS)
    content = await ctx.chat.complete(
        ChatRequest(
            stage=EVENT_STAGE,
            model=_model(ctx.settings, ctx.settings.openai_model_event),
            messages=(ChatMessage("system", ctx.prompts.event), *history),
            timeout_s=ctx.settings.llm_stage_timeout,
            schema=EVENT_SCHEMA,
        )
    )
    return parse_event(content)


async def write_response(ctx: StageContext, _inputs: Outputs) -> str:
    """LLM#2: the reply text, given the history and the user's turn (with the images the user
    sent, on the vision model)."""
    history = history_messages(ctx.request)
    model = _model(ctx.settings, ctx.settings.openai_model_response)
    if ctx.request.images:
        history[-1] = replace(history[-1], images=ctx.request.images)
        model = ctx.settings.vision_model or model
    content = await ctx.chat.complete(
        ChatRequest(
            stage=RESPONSE_STAGE,
            model=model,
            messages=(ChatMessage("system", ctx.prompts.response), *history),
            timeout_s=ctx.settings.llm_stage_timeout,
        )
    )
    text = content.strip()
    if not text:
        raise LLMCallError("empty_output", service=False)
    return text


async def choose_message_type(ctx: StageContext, inputs: Outputs) -> MessageShape:
    """LLM#3: text, buttons or a list, given LLM#2's text (structured output)."""
    content = await ctx.chat.complete(
        ChatRequest(
            stage=TYPE_STAGE,
            model=_model(ctx.settings, ctx.settings.openai_model_type),
            messages=(
                ChatMessage("system", ctx.prompts.message_type),
                ChatMessage("user", str(inputs[RESPONSE_STAGE])),
            ),
            timeout_s=ctx.settings.llm_stage_timeout,
            schema=MESSAGE_TYPE_SCHEMA,
        )
    )
    return parse_message_type(content)


def _override_replies(settings: Settings) -> dict[str, str]:
    return override_replies(
        settings.override_events,
        handoff_reply=settings.handoff_reply,
        optout_reply=settings.optout_reply,
        safe_reply=settings.safe_reply,
    )


def override_events(settings: Settings) -> frozenset[str]:
    """The events whose configured message replaces the generated reply."""
    return frozenset(_override_replies(settings))


def override_reply(event: str, settings: Settings) -> str | None:
    """The configured message for an overriding event, else None."""
    return _override_replies(settings).get(event)


def _is_override(event: str, ctx: StageContext) -> bool:
    return event in override_events(ctx.settings)


def default_stages() -> tuple[Stage[Any], ...]:
    """LLM#1 and LLM#2 together, LLM#3 after LLM#2; an override event stops the graph."""
    event: Stage[str] = Stage(
        EVENT_STAGE, detect_event, lambda _ctx: UNKNOWN_EVENT, stop_when=_is_override
    )
    response: Stage[str] = Stage(
        RESPONSE_STAGE, write_response, lambda ctx: ctx.settings.safe_reply
    )
    shape: Stage[MessageShape] = Stage(
        TYPE_STAGE, choose_message_type, lambda _ctx: TEXT_SHAPE, needs=(RESPONSE_STAGE,)
    )
    return (event, response, shape)


def build_reply(result: GraphResult, settings: Settings) -> Reply:
    """The Reply from the graph's outputs, applying an overriding event."""
    event = str(result.outputs.get(EVENT_STAGE, UNKNOWN_EVENT))
    override = override_reply(event, settings)
    if override is not None:
        return Reply(
            text=override,
            event=event,
            overridden=True,
            errors=result.errors,
            timings_ms=result.timings_ms,
        )
    text = result.outputs.get(RESPONSE_STAGE)
    shape = result.outputs.get(TYPE_STAGE)
    if not isinstance(shape, MessageShape):
        shape = TEXT_SHAPE
    return Reply(
        text=text if isinstance(text, str) else settings.safe_reply,
        kind=shape.kind,
        buttons=shape.buttons,
        sections=shape.sections,
        list_button=shape.list_button,
        event=event,
        errors=result.errors,
        timings_ms=result.timings_ms,
    )
