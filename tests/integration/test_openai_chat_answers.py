"""OpenAIChatModel reads the raw answer itself: every malformed or refused answer maps to a reason.

The real AsyncOpenAI client (aiohttp transport) against the fake server; each test scripts the
text route's answer and checks the `LLMCallError` reason and whether it blames the service.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pyloto_cli.adapters.llm.openai import OpenAIChatModel, open_openai_client
from pyloto_cli.domain.llm import ChatMessage, ChatRequest, LLMCallError
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
) -> AsyncIterator[OpenAIChatModel]:
    settings: Settings = make_settings(
        openai_api_key="test-key", openai_base_url=fake.base_url, llm_max_retries=0
    )
    async with open_openai_client(settings) as client:
        yield OpenAIChatModel(client)


def completion(message: dict[str, Any]) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion", "choices": [{"message": message}]})


async def test_content_and_the_body_on_the_wire(
    fake: FakeOpenAIServer, chat: OpenAIChatModel
) -> None:
    """The first choice's content; the JSON body reached <base_url>/chat/completions."""
    fake.script("text", FakeAnswer(content="Bom dia!"))
    assert await chat.complete(REQUEST) == "Bom dia!"
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
    fake: FakeOpenAIServer, chat: OpenAIChatModel, raw_body: str, reason: str, service: bool
) -> None:
    """A 200 that is not a usable completion raises LLMCallError with a stable reason."""
    fake.script("text", FakeAnswer(raw_body=raw_body))
    with pytest.raises(LLMCallError) as caught:
        await chat.complete(REQUEST)
    assert (caught.value.reason, caught.value.service) == (reason, service)


@pytest.mark.parametrize(
    ("status", "reason", "service"),
    [(400, "http_400", False), (429, "rate_limited", True), (503, "http_503", True)],
)
async def test_error_statuses_keep_the_sdk_error_types(
    fake: FakeOpenAIServer, chat: OpenAIChatModel, status: int, reason: str, service: bool
) -> None:
    """The SDK still raises its status errors (chained), mapped to the same reasons."""
    fake.script("text", FakeAnswer(status=status))
    with pytest.raises(LLMCallError) as caught:
        await chat.complete(REQUEST)
    assert (caught.value.reason, caught.value.service, caught.value.code) == (
        reason,
        service,
        status,
    )
    assert type(caught.value.__cause__).__module__.startswith("openai")


async def test_the_per_call_timeout_maps_to_timeout(
    fake: FakeOpenAIServer, make_settings: Callable[..., Settings]
) -> None:
    """The request's own timeout bounds the call, below the client's default."""
    fake.script("text", FakeAnswer(latency_ms=2000))
    settings: Settings = make_settings(
        openai_api_key="test-key",
        openai_base_url=fake.base_url,
        llm_max_retries=0,
        llm_stage_timeout=30.0,
    )
    quick = ChatRequest("response", "m-test", REQUEST.messages, 0.2)
    async with open_openai_client(settings) as client:
        with pytest.raises(LLMCallError) as caught:
            await asyncio.wait_for(OpenAIChatModel(client).complete(quick), timeout=1.5)
    assert (caught.value.reason, caught.value.service) == ("timeout", True)


async def test_nothing_listening_maps_to_connection(make_settings: Callable[..., Settings]) -> None:
    """A refused connection is the service's failure, reason `connection`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings: Settings = make_settings(
        openai_api_key="test-key",
        openai_base_url=f"http://127.0.0.1:{port}/v1",
        llm_max_retries=0,
    )
    async with open_openai_client(settings) as client:
        with pytest.raises(LLMCallError) as caught:
            await OpenAIChatModel(client).complete(REQUEST)
    assert (caught.value.reason, caught.value.service) == ("connection", True)
