"""The real responder: the three LLM stages on one `openai.AsyncOpenAI` client.

    async with open_openai_client(settings) as client:
        responder = OpenAIResponder(client, settings)
        reply = await responder.respond(request)

One client per process, a `DirectOpenAI` (the SDK's `AsyncOpenAI` that builds a call's request
from the one it built for the last call like it) over a `DirectOpenAIClient` (the SDK's
`DefaultAioHttpClient` whose requests go straight to its transport, past httpx2's auth, redirect
and cookie steps), both in adapters/direct_http.py, on the SDK's aiohttp transport, closed on exit.
Calls go through the client's low-level `request()` (what its `post()` calls): the same
retries, backoff and error types as `chat.completions.create()`, without its parameter
transform. The request options are built once (`FinalRequestOptions` for the absolute URL) and
shallow-copied per call with the body as JSON bytes, which skips `post()`'s per-call
construction (pydantic deep-copies every default); the answer comes back as the raw
`httpx2.Response` whose JSON is read here (only the first choice's message), not cast into
`ChatCompletion` models. Together about a third less CPU per call than the typed `post()`
(benchmarks/llm_client_cpu.py). Structured answers are validated by the stages (pydantic).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Final, Self

import httpx2
import openai
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions  # what `post()` builds; covered by the tests

from pyloto_cli.adapters.direct_http import DirectOpenAI, DirectOpenAIClient
from pyloto_cli.adapters.llm.offline import NON_TEXT_REPLY
from pyloto_cli.domain import json_codec
from pyloto_cli.domain.breaker import CircuitBreaker
from pyloto_cli.domain.reply import Reply
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.stages import (
    ChatRequest,
    LLMCallError,
    Prompts,
    Stage,
    StageContext,
    StageGraph,
    StageOutcome,
    build_reply,
    default_stages,
    load_prompts,
)
from pyloto_cli.ports import ResponderRequest
from pyloto_cli.settings import Settings

CIRCUIT_OPEN: Final = "circuit_open"
# the SDK's own connection limit, every connection kept while idle (a call per stage in flight)
OPENAI_LIMITS: Final = httpx2.Limits(
    max_connections=1000, max_keepalive_connections=1000, keepalive_expiry=5.0
)
_logger = get_logger("llm")


@contextlib.asynccontextmanager
async def open_openai_client(settings: Settings) -> AsyncIterator[AsyncOpenAI]:
    """The process's OpenAI client on the aiohttp transport, closed on exit.

    `OPENAI_API_KEY` is required; `OPENAI_BASE_URL` points it elsewhere (a proxy, a fake).
    Timeout and retries come from `PYLOTO_LLM_STAGE_TIMEOUT` / `PYLOTO_LLM_MAX_RETRIES`.
    """
    if settings.openai_api_key is None:
        raise ValueError("OPENAI_API_KEY is required for the OpenAI responder")
    http_client = DirectOpenAIClient()
    client = DirectOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=settings.llm_max_retries,
        timeout=settings.llm_stage_timeout,
        http_client=http_client,
    )
    async with client:
        yield client


class OpenAIChat:
    """`ChatCall` on an AsyncOpenAI client: one chat completion, errors mapped to reasons."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self._client = client
        base = client.base_url  # the SDK joins a relative path to it the same way, per call
        url = str(base.copy_with(raw_path=base.raw_path + b"chat/completions"))
        self._options = FinalRequestOptions.construct(method="post", url=url)

    async def __call__(self, request: ChatRequest) -> str:
        """The first choice's content; raises LLMCallError (chained to the SDK's error)."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.stage, "strict": True, "schema": request.schema},
            }
        content = json_codec.dumps(body)
        options = self._options.model_copy(
            update={"content": content, "timeout": request.timeout_s}
        )
        try:
            response = await self._client.request(httpx2.Response, options)
            data = json_codec.loads(response.content)
        except openai.APIError as exc:
            raise _call_error(exc) from exc
        except ValueError as exc:  # a 200 whose body is not JSON (a proxy's page)
            raise LLMCallError("bad_response") from exc
        return _content(data)


def _call_error(exc: openai.APIError) -> LLMCallError:
    if isinstance(exc, openai.APITimeoutError):
        return LLMCallError("timeout")
    if isinstance(exc, openai.APIConnectionError):
        return LLMCallError("connection")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        reason = "rate_limited" if code == 429 else f"http_{code}"
        return LLMCallError(reason, service=code >= 500 or code in (408, 409, 429), code=code)
    return LLMCallError("bad_response", service=False)


def _content(data: Any) -> str:
    """The first choice's message content from the answer's JSON."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMCallError("bad_response", service=False)
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise LLMCallError("bad_response", service=False)
    if message.get("refusal"):
        raise LLMCallError("refused", service=False)
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise LLMCallError("empty_output", service=False)
    return content


class OpenAIResponder:
    """`Responder` running the stage graph on OpenAI, behind a circuit breaker.

    It does not own `client` (see `open_openai_client`). `stages` replaces the default graph;
    `prompts` defaults to the shipped prompts overridden from `settings.prompts_dir`.
    """

    def __init__(
        self,
        client: AsyncOpenAI,
        settings: Settings,
        *,
        stages: Sequence[Stage[Any]] | None = None,
        prompts: Prompts | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._chat = OpenAIChat(client)
        self._settings = settings
        self._graph = StageGraph(stages if stages is not None else default_stages())
        self._prompts = prompts if prompts is not None else load_prompts(settings.prompts_dir)
        self.breaker = breaker or CircuitBreaker(
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
        """The reply; LLM failures fall back (never raises for them)."""
        text = request.message.text
        if text is None or not text.strip():
            return Reply(text=NON_TEXT_REPLY, event="other")
        if not self.breaker.allow():
            log_event(_logger, "llm_error", logging.WARNING, stage="all", reason=CIRCUIT_OPEN)
            return Reply(text=self._settings.safe_reply, errors=(CIRCUIT_OPEN,))
        ctx = StageContext(request, self._settings, self._prompts, self._chat)
        result = await self._graph.run(
            ctx,
            stage_timeout=self._settings.llm_stage_timeout,
            deadline=self._settings.llm_deadline,
            on_outcome=self._record,
        )
        return build_reply(result, self._settings)

    def _record(self, outcome: StageOutcome) -> None:
        if outcome.service_failure:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
