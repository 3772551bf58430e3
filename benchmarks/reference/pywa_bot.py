"""Reference bot "background": pywa's async client on FastAPI, as pywa's docs show it.

pywa registers the webhook on the FastAPI app (`server=app`): it checks the signature, answers
200 at once and runs the handler as a Starlette background task after the response. The
handler makes the three LLM calls (the default `AsyncOpenAI` client), then sends the reply
with `client.send_message(...)` from the number the message came to. Fast acks, but nothing
is durable (a crash or deploy loses what is in flight) and nothing bounds how many handlers
run at once.

    python -m benchmarks.reference.pywa_bot --port 8000
    uvicorn --factory benchmarks.reference.pywa_bot:create_app --port 8000

pywa always calls https://graph.facebook.com; its documented `session=` parameter takes an
`httpx.AsyncClient`, here one whose transport sends every request to `GRAPH_API_URL` instead
(a no-op for the real Graph API). Configuration: `config.py`. Needs the `bench` extra (pywa,
fastapi).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from openai import AsyncOpenAI
from pywa.types.callback import Button, Section, SectionList, SectionRow
from pywa_async import filters
from pywa_async.client import WhatsApp
from pywa_async.types.message import Message

from benchmarks.reference.config import WEBHOOK_PATH, BotConfig
from benchmarks.reference.llm import answer_message, load_prompts


class GraphHostTransport(httpx.AsyncBaseTransport):
    """Sends each request to `target`'s scheme, host and port (its path as a prefix)."""

    def __init__(self, target: str) -> None:
        self._target = httpx.URL(target)
        self._prefix = self._target.path.rstrip("/")
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Rewrite the URL and Host header, then send on the default transport."""
        target = self._target
        request.url = request.url.copy_with(
            scheme=target.scheme,
            host=target.host,
            port=target.port,
            path=self._prefix + request.url.path,
        )
        request.headers["Host"] = target.netloc.decode("ascii")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the inner transport's connections."""
        await self._inner.aclose()


@dataclass(slots=True)
class _LLM:
    """The OpenAI client, set by the lifespan."""

    opened: AsyncOpenAI | None = None

    def get(self) -> AsyncOpenAI:
        """The client; RuntimeError outside the lifespan."""
        if self.opened is None:
            raise RuntimeError("the app's lifespan is not running")
        return self.opened


def reply_buttons(shape: dict[str, Any]) -> list[Button] | SectionList | None:
    """LLM#3's choice as pywa's `buttons=` argument (None: a plain text message)."""
    if shape.get("kind") == "buttons":
        return [
            Button(title=b["title"], callback_data=f"btn-{i}")
            for i, b in enumerate(shape["buttons"], 1)
        ]
    if shape.get("kind") == "list":
        count = 0
        sections = []
        for section in shape["sections"]:
            rows = []
            for row in section["rows"]:
                count += 1
                rows.append(
                    SectionRow(
                        title=row["title"],
                        callback_data=f"row-{count}",
                        description=row.get("description") or None,
                    )
                )
            sections.append(Section(title=section["title"], rows=rows))
        return SectionList(button_title=shape.get("list_button") or "Options", sections=sections)
    return None


def api_version_number(version: str) -> str:
    """pywa wants `25.0` where the Graph URL (and GRAPH_API_VERSION) says `v25.0`."""
    return version.removeprefix("v")


def create_app(config: BotConfig | None = None) -> FastAPI:
    """The FastAPI app with pywa's webhook routes and one message handler."""
    cfg = config or BotConfig.from_env(os.environ)
    prompts = load_prompts()
    llm = _LLM()
    session = httpx.AsyncClient(transport=GraphHostTransport(cfg.graph_api_url))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        client = AsyncOpenAI(api_key=cfg.openai_api_key, base_url=cfg.openai_base_url)
        async with session, client:
            llm.opened = client
            yield
            llm.opened = None

    app = FastAPI(lifespan=lifespan)
    wa = WhatsApp(
        token=cfg.access_token,
        session=session,
        server=app,
        webhook_endpoint=WEBHOOK_PATH,
        verify_token=cfg.verify_token,
        app_secret=cfg.app_secret,
        api_version=api_version_number(cfg.graph_api_version),
    )

    # pywa's decorators are typed as plain functions, which mypy rejects as methods
    @wa.on_message(filters.text)  # type: ignore[misc]
    async def on_text(client: WhatsApp, msg: Message) -> None:
        answer = await answer_message(llm.get(), cfg.openai_model, prompts, msg.text or "")
        await client.send_message(
            to=msg.from_user.preferred_id,
            text=answer.text,
            buttons=reply_buttons(answer.shape),
            tracker=msg.id,  # sent as biz_opaque_callback_data; the bench matches on it
            sender=msg.metadata.phone_number_id,
        )

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    return app


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.reference.pywa_bot [--host H] [--port N]`."""
    config = BotConfig.from_env(os.environ)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=config.port)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(config), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
