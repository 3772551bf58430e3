"""The reference bots' three LLM calls, as a user following OpenAI's docs would write them.

One after another on the client's `chat.completions.create()`, with pyloto's prompts, model and
JSON schemas (so the work per message is the same as pyloto's):

1. event: the event of the customer's message (structured output, schema `event`);
2. response: the reply text;
3. message_type: text, buttons or a list, given the reply text (schema `message_type`).

The schema names are pyloto's stage names; the fake OpenAI server routes on them. No
timeouts, retries or fallbacks beyond the SDK's defaults: a failed call raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from openai import AsyncOpenAI

from pyloto_cli.pipeline.llm_output import (
    EVENT_SCHEMA,
    MESSAGE_TYPE_SCHEMA,
    Prompts,
    load_prompts,
)

EVENT_SCHEMA_NAME: Final = "event"
TYPE_SCHEMA_NAME: Final = "message_type"

__all__ = ["Answer", "Prompts", "answer_message", "load_prompts"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the three calls decided: the event, the reply text and how to show it."""

    event: str
    text: str
    shape: dict[str, Any]  # LLM#3's JSON: kind, buttons, list_button, sections


async def _complete(
    llm: AsyncOpenAI,
    model: str,
    system: str,
    user: str,
    schema: tuple[str, dict[str, Any]] | None = None,
) -> str:
    messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if schema is None:
        completion = await llm.chat.completions.create(model=model, messages=messages)
    else:
        name, body = schema
        completion = await llm.chat.completions.create(
            model=model,
            messages=messages,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "strict": True, "schema": body},
            },
        )
    return completion.choices[0].message.content or ""


async def answer_message(llm: AsyncOpenAI, model: str, prompts: Prompts, text: str) -> Answer:
    """The three calls for one customer message, in order."""
    event = json.loads(
        await _complete(llm, model, prompts.event, text, (EVENT_SCHEMA_NAME, EVENT_SCHEMA))
    )["event"]
    reply = (await _complete(llm, model, prompts.response, text)).strip()
    shape = json.loads(
        await _complete(
            llm, model, prompts.message_type, reply, (TYPE_SCHEMA_NAME, MESSAGE_TYPE_SCHEMA)
        )
    )
    return Answer(event=str(event), text=reply, shape=shape)
