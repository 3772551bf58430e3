"""Reference bot "inline": the tutorial design, everything done before the webhook answers.

A FastAPI app whose webhook verifies the signature, then, for each text message, awaits the
three LLM calls and the Graph send, and only then answers 200. Nothing is queued: a slow LLM
keeps Meta waiting, and a crash or error mid-way answers 500 (Meta retries the webhook).

    python -m benchmarks.reference.inline_bot --port 8000
    uvicorn --factory benchmarks.reference.inline_bot:create_app --port 8000

Clients as their docs show them: `AsyncOpenAI` with its defaults and a default
`httpx.AsyncClient` for the Graph API, opened and closed by the app's lifespan. Configuration:
`config.py` (the same environment variables as `pyloto serve`).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from openai import AsyncOpenAI

from benchmarks.reference.config import WEBHOOK_PATH, BotConfig
from benchmarks.reference.llm import Answer, answer_message, load_prompts


@dataclass(slots=True)
class _Clients:
    """The app's two clients, set by the lifespan."""

    opened: tuple[AsyncOpenAI, httpx.AsyncClient] | None = None

    def get(self) -> tuple[AsyncOpenAI, httpx.AsyncClient]:
        """The clients; RuntimeError outside the lifespan."""
        if self.opened is None:
            raise RuntimeError("the app's lifespan is not running")
        return self.opened


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """True when `header` is `sha256=` + the HMAC-SHA256 of the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


def text_messages(payload: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(phone_number_id, message) for every inbound text message of a webhook."""
    for entry in payload.get("entry", []):
        for change in entry.get("changes", []):
            value = change.get("value", {})
            phone_number_id = value.get("metadata", {}).get("phone_number_id")
            for message in value.get("messages", []):
                if message.get("type") == "text":
                    yield phone_number_id, message


def _list_action(shape: dict[str, Any]) -> dict[str, Any]:
    ids = itertools.count(1)
    sections = []
    for section in shape["sections"]:
        rows = []
        for row in section["rows"]:
            item = {"id": f"row-{next(ids)}", "title": row["title"]}
            if row.get("description"):
                item["description"] = row["description"]
            rows.append(item)
        sections.append({"title": section["title"], "rows": rows})
    return {"button": shape.get("list_button") or "Options", "sections": sections}


def graph_message(to: str, wamid: str, answer: Answer) -> dict[str, Any]:
    """The Graph API body of the reply: text, reply buttons or a list, as LLM#3 chose."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "biz_opaque_callback_data": wamid,  # the one concession: the bench matches on it
    }
    kind = answer.shape.get("kind")
    if kind == "buttons":
        buttons = [
            {"type": "reply", "reply": {"id": f"btn-{i}", "title": b["title"]}}
            for i, b in enumerate(answer.shape["buttons"], 1)
        ]
        interactive = {
            "type": "button",
            "body": {"text": answer.text},
            "action": {"buttons": buttons},
        }
        return {**body, "type": "interactive", "interactive": interactive}
    if kind == "list":
        interactive = {
            "type": "list",
            "body": {"text": answer.text},
            "action": _list_action(answer.shape),
        }
        return {**body, "type": "interactive", "interactive": interactive}
    return {**body, "type": "text", "text": {"body": answer.text}}


def create_app(config: BotConfig | None = None) -> FastAPI:
    """The FastAPI app; `config` defaults to the environment's."""
    cfg = config or BotConfig.from_env(os.environ)
    prompts = load_prompts()
    clients = _Clients()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        llm = AsyncOpenAI(api_key=cfg.openai_api_key, base_url=cfg.openai_base_url)
        async with llm, httpx.AsyncClient() as graph:
            clients.opened = (llm, graph)
            yield
            clients.opened = None

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post(WEBHOOK_PATH)
    async def webhook(request: Request) -> Response:
        body = await request.body()
        if not signature_ok(cfg.app_secret, body, request.headers.get("x-hub-signature-256")):
            return Response("invalid signature", status_code=403)
        llm, graph = clients.get()
        for phone_number_id, message in text_messages(json.loads(body)):
            answer = await answer_message(llm, cfg.openai_model, prompts, message["text"]["body"])
            url = f"{cfg.graph_api_url}/{cfg.graph_api_version}/{phone_number_id}/messages"
            response = await graph.post(
                url,
                json=graph_message(message["from"], message["id"], answer),
                headers={"Authorization": f"Bearer {cfg.access_token}"},
            )
            response.raise_for_status()
        return Response("OK")

    return app


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.reference.inline_bot [--host H] [--port N]`."""
    config = BotConfig.from_env(os.environ)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=config.port)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(config), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
