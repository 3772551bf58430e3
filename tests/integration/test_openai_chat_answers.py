"""OpenAIChat reads the raw answer itself: every malformed or refused answer maps to a reason.

The real AsyncOpenAI client (aiohttp transport) against the fake server; each test scripts the
text route's answer and checks the `LLMCallError` reason and whether it blames the service.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pyloto_cli.adapters.llm.openai import OpenAIChat, open_openai_client
from pyloto_cli.pipeline.llm_output import LLMCallError
from pyloto_cli.pipeline.stages import ChatMessage, ChatRequest
from pyloto_cli.settings import Settings
from tests.fakes.openai_server import FakeAnswer, FakeOpenAIServer

REQUEST = ChatRequest("response", "m-test", (ChatMessage("user", "olá, 5511987654321?"),), 2.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(latency_ms=0) as server:
        yield server


@pytest.fixture
async def chat(
    fake: FakeOpenAIServer, make_settings: Callable[..., Settings]
) -> AsyncIterator[OpenAIChat]:
    settings: Settings = make_settings(
        openai_api_key="test-key", openai_base_url=fake.base_url, llm_max_retries=0
    )
    async with open_openai_client(settings) as client:
        yield OpenAIChat(client)


def completion(message: dict[str, Any]) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion", "choices": [{"message": message}]})


async def test_content_and_the_body_on_the_wire(fake: FakeOpenAIServer, chat: OpenAIChat) -> None:
    """The first choice's content; the JSON body reached <base_url>/chat/completions."""
    fake.script("text", FakeAnswer(content="Bom dia!"))
    assert await chat(REQUEST) == "Bom dia!"
    (seen,) = fake.requests
    assert seen.body == {
        "model": "m-test",
        "messages": [{"role": "user", "content": REQUEST.messages[0].content}],
    }
    assert seen.headers["authorization"] == "Bearer test-key"
    assert seen.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("raw_body", "reason", "service"),
    [
        ("<html>proxy error</html>", "bad_response", True),
        (json.dumps({"choices": []}), "bad_response", False),
        (json.dumps(["not", "an", "object"]), "bad_response", False),
        (json.dumps({"choices": [{"message": None}]}), "bad_response", False),
        (
            completion({"role": "assistant", "content": None, "refusal": "I can't."}),
            "refused",
            False,
        ),
        (completion({"role": "assistant", "content": "  "}), "empty_output", False),
        (completion({"role": "assistant", "content": 42}), "empty_output", False),
    ],
)
async def test_malformed_answers_map_to_reasons(
    fake: FakeOpenAIServer, chat: OpenAIChat, raw_body: str, reason: str, service: bool
) -> None:
    """A 200 that is not a usable completion raises LLMCallError with a stable reason."""
    fake.script("text", FakeAnswer(raw_body=raw_body))
    with pytest.raises(LLMCallError) as caught:
        await chat(REQUEST)
    assert (caught.value.reason, caught.value.service) == (reason, service)


@pytest.mark.parametrize(
    ("status", "reason", "service"),
    [(400, "http_400", False), (429, "rate_limited", True), (503, "http_503", True)],
)
async def test_error_statuses_keep_the_sdk_error_types(
    fake: FakeOpenAIServer, chat: OpenAIChat, status: int, reason: str, service: bool
) -> None:
    """The SDK still raises its status errors (chained), mapped to the same reasons."""
    fake.script("text", FakeAnswer(status=status))
    with pytest.raises(LLMCallError) as caught:
        await chat(REQUEST)
    assert (caught.value.reason, caught.value.service, caught.value.code) == (
        reason,
        service,
        status,
    )
    assert type(caught.value.__cause__).__module__.startswith("openai")
