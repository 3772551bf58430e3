"""One chat completion in the domain's terms: what is asked (`ChatRequest`) and how it fails
(`LLMCallError`). The chat-model port (`ports.ChatModel`) takes and raises these, so the stages
in pipeline/ and the SDK adapter in adapters/llm/ share them without knowing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyloto_cli.domain.errors import TransientError


class LLMCallError(TransientError):
    """One LLM call failed. `reason` is short and stable (`timeout`, `rate_limited`,
    `http_500`, `connection`, `bad_output`, ...); `service` is true when the service itself
    failed, which is what the circuit breaker counts (a malformed answer does not)."""

    def __init__(self, reason: str, *, service: bool = True, code: int | None = None) -> None:
        super().__init__(reason, code=code)
        self.service = service


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat message sent to the model; `images` (data URLs) go beside the text as image
    parts, for a vision-capable model."""

    role: str
    content: str
    images: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion; `schema` asks for structured output named after the stage."""

    stage: str
    model: str
    messages: tuple[ChatMessage, ...]
    timeout_s: float
    schema: Mapping[str, Any] | None = None
