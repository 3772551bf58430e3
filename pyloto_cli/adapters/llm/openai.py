"""The chat model on OpenAI: one chat completion per call, on the SDK's public surface.

    async with open_openai_client(settings) as client:
        model = OpenAIChatModel(client)
        content = await model.complete(request)

One `AsyncOpenAI` client per process on the SDK's aiohttp transport (`DefaultAioHttpClient`,
less CPU per call than its default httpx2 one), closed on exit; retries, backoff and error
types are the SDK's. A call is the client's `post(<base_url>/chat/completions,
cast_to=httpx2.Response, content=...)`, the SDK's documented way to get the raw response: the
body goes out as JSON bytes and only the first choice's message is read from the answer, where
`chat.completions.create()` would transform the parameters and build a `ChatCompletion` model
that the stages take one string from (benchmarks/llm_client_cpu.py compares the public paths).
Structured answers are validated by the stages (pydantic). A message with images goes as a
text part and `image_url` parts. `OpenAITranscriber` turns a voice note into text with the
SDK's `audio.transcriptions.create`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx2
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient

from pyloto_cli.domain import json_codec
from pyloto_cli.domain.llm import ChatMessage, ChatRequest, LLMCallError
from pyloto_cli.domain.media import base_mime
from pyloto_cli.settings import Settings


@contextlib.asynccontextmanager
async def open_openai_client(settings: Settings) -> AsyncIterator[AsyncOpenAI]:
    """The process's OpenAI client on the aiohttp transport, closed on exit.

    `OPENAI_API_KEY` is required; `OPENAI_BASE_URL` points it elsewhere (a proxy, a fake).
    Timeout and retries come from `PYLOTO_LLM_STAGE_TIMEOUT` / `PYLOTO_LLM_MAX_RETRIES`.
    """
    if settings.openai_api_key is None:
        raise ValueError("OPENAI_API_KEY is required for the OpenAI responder")
    client = AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=settings.llm_max_retries,
        timeout=settings.llm_stage_timeout,
        http_client=DefaultAioHttpClient(),
    )
    async with client:
        yield client


class OpenAIChatModel:
    """`ChatModel` on an AsyncOpenAI client: one chat completion, errors mapped to reasons.

    It does not own `client` (see `open_openai_client`).
    """

    def __init__(self, client: AsyncOpenAI) -> None:
        self._client = client
        # The absolute URL, joined once: the SDK joins a relative path to its base URL on
        # every call, which costs more than the rest of its URL handling.
        self._url = f"{client.base_url}chat/completions"

    async def complete(self, request: ChatRequest) -> str:
        """The first choice's content; raises LLMCallError (chained to the SDK's error)."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_message(m) for m in request.messages],
        }
        if request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.stage, "strict": True, "schema": request.schema},
            }
        try:
            response = await self._client.post(
                self._url,
                cast_to=httpx2.Response,
                content=json_codec.dumps(body),
                options={"timeout": request.timeout_s},
            )
            data = json_codec.loads(response.content)
        except openai.APIError as exc:
            raise _call_error(exc) from exc
        except ValueError as exc:  # a 200 whose body is not JSON (a proxy's page)
            raise LLMCallError("bad_response") from exc
        return _content(data)


def _message(message: ChatMessage) -> dict[str, Any]:
    """A chat message's JSON: plain text, or a text part and image parts."""
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in message.images]
    return {"role": message.role, "content": parts}


# Extensions OpenAI's transcription endpoint reads the format from (it goes by the file name).
_AUDIO_SUFFIXES: Final[dict[str, str]] = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "m4a",
    "audio/amr": "amr",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/webm": "webm",
    "audio/flac": "flac",
}


class OpenAITranscriber:
    """`Transcriber` on an AsyncOpenAI client: the SDK's `audio.transcriptions.create`.

    It does not own `client`. The file goes as it is (voice notes are ogg/opus, which the
    endpoint reads), named with the extension of its MIME type.
    """

    def __init__(self, client: AsyncOpenAI, *, model: str, timeout_s: float) -> None:
        self._client = client
        self.model = model
        self._timeout_s = timeout_s

    async def transcribe(self, path: Path, mime_type: str) -> str:
        """The transcript's text; raises LLMCallError (chained to the SDK's error)."""
        base = base_mime(mime_type)
        name = f"audio.{_AUDIO_SUFFIXES.get(base, 'ogg')}"
        # an open file, not its bytes: the multipart body is read from it in chunks as it is
        # sent (again from the start on a retry), so a 16 MB voice note is never whole in memory
        with path.open("rb") as audio:
            try:
                result = await self._client.audio.transcriptions.create(
                    model=self.model, file=(name, audio, base), timeout=self._timeout_s
                )
            except openai.APIError as exc:
                raise _call_error(exc) from exc
        text = result.text if isinstance(result.text, str) else ""
        if not text.strip():
            raise LLMCallError("empty_output", service=False)
        return text.strip()


def _call_error(exc: openai.APIError) -> LLMCallError:
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return LLMCallError("timeout")
    if isinstance(exc, openai.APIConnectionError):
        return LLMCallError("connection")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        reason = "rate_limited" if code == 429 else f"http_{code}"
        return LLMCallError(reason, service=code >= 500 or code in (408, 409, 429), code=code)
    return LLMCallError("bad_response", service=False)


def _refused(exc: BaseException) -> bool:
    """Whether a timeout error was in fact a failed connection, from its causes' types.

    The SDK's aiohttp transport reports a refused connection or an unknown host as a connect
    timeout; the OS error under it (an `OSError` that is not a `TimeoutError`) tells them apart.
    """
    causes: list[BaseException] = []
    cause = exc.__cause__
    while cause is not None and len(causes) < 8:
        causes.append(cause)
        cause = cause.__cause__
    if any(isinstance(c, TimeoutError) for c in causes):
        return False
    return any(isinstance(c, OSError) for c in causes)


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
