"""The real responder: the stage graph over a chat model, behind a circuit breaker.

    async with open_openai_client(settings) as client:
        responder = LLMResponder(OpenAIChatModel(client), settings)
        reply = await responder.respond(request)

It knows the model only as a `ports.ChatModel`, so the stages, their fallbacks and the
breaker are the same whatever service answers; the composition root picks the adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self

from pyloto_cli.domain.breaker import Breaker, BreakerState, CircuitBreaker
from pyloto_cli.domain.errors import CircuitOpen, TransientError
from pyloto_cli.domain.reply import NON_TEXT_REPLY, Reply
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.llm_output import Prompts, load_prompts
from pyloto_cli.pipeline.stages import (
    RESPONSE_STAGE,
    Stage,
    StageContext,
    StageGraph,
    StageOutcome,
    build_reply,
    default_stages,
)
from pyloto_cli.ports import NO_METRICS, ChatModel, Metrics, ResponderRequest
from pyloto_cli.settings import Settings

CIRCUIT_OPEN: Final = "circuit_open"
DEADLINE: Final = "deadline"  # what `StageGraph` reports for a stage the deadline cut short
_logger = get_logger("llm")


class LLMResponder:
    """`Responder` running the stage graph on a chat model, behind a circuit breaker.

    It does not own `model` (the composition root opens and closes its client). `stages`
    replaces the default graph; `prompts` defaults to the shipped prompts overridden from
    `settings.prompts_dir`.
    """

    def __init__(
        self,
        model: ChatModel,
        settings: Settings,
        *,
        stages: Sequence[Stage[Any]] | None = None,
        prompts: Prompts | None = None,
        breaker: Breaker | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._metrics = metrics
        self._model = model
        self._settings = settings
        self._graph = StageGraph(stages if stages is not None else default_stages())
        self._prompts = prompts if prompts is not None else load_prompts(settings.prompts_dir)
        self.breaker: Breaker = breaker or CircuitBreaker(
            settings.llm_breaker_failures, settings.llm_breaker_cooldown
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
        """The reply. A stage whose output is unusable falls back; the LLM service failing
        the response stage (429, 5xx, timeout, unreachable) raises TransientError, and an open
        breaker CircuitOpen: the task says nothing yet and is tried again later."""
        text = request.message.text
        if text is None or not text.strip():
            return Reply(text=NON_TEXT_REPLY, event="other")
        if not self.breaker.allow():
            log_event(_logger, "llm_error", logging.WARNING, stage="all", reason=CIRCUIT_OPEN)
            self._metrics.llm_error("all", CIRCUIT_OPEN)
            raise CircuitOpen(f"llm_{CIRCUIT_OPEN}", retry_after=self.breaker.retry_in())
        ctx = StageContext(request, self._settings, self._prompts, self._model)
        down: list[StageOutcome] = []

        def record(outcome: StageOutcome) -> None:
            self._record(outcome)
            if outcome.service_failure and outcome.stage == RESPONSE_STAGE:
                down.append(outcome)

        result = await self._graph.run(
            ctx,
            stage_timeout=self._settings.llm_stage_timeout,
            deadline=self._settings.llm_deadline,
            on_outcome=record,
        )
        if down and result.stopped_by is None:
            raise TransientError(f"llm_unavailable: {down[0].reason}")
        return build_reply(result, self._settings)

    def _record(self, outcome: StageOutcome) -> None:
        if outcome.reason == DEADLINE:  # cut short, not timed: its time would read 0
            self._metrics.llm_error(outcome.stage, DEADLINE)
        else:
            self._metrics.llm_stage(outcome.stage, outcome.ms / 1000, outcome.reason)
        was_open = self.breaker.state is BreakerState.OPEN
        if outcome.service_failure:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        if (self.breaker.state is BreakerState.OPEN) is not was_open:
            self._metrics.breaker_open(not was_open)
