"""`pyloto doctor`: check a configuration before a deploy (see tools/doctor.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from pyloto_cli.cli._boundary import EXIT_FAILURE, EXIT_OK, boundary, load_settings, print_json
from pyloto_cli.settings import Settings
from pyloto_cli.tools.doctor import CheckResult, Openers, invalid_settings, run_doctor

if TYPE_CHECKING:
    import openai


@asynccontextmanager
async def open_http(
    settings: Settings, timeouts: httpx.Timeout
) -> AsyncIterator[httpx.AsyncClient]:
    """The Graph client `serve` uses, with the doctor's short timeouts (imported on use, so
    other commands do not pay for the HTTP stack at start-up)."""
    from pyloto_cli.adapters.sender.graph import open_graph_client

    async with open_graph_client(settings, timeouts=timeouts) as client:
        yield client


@asynccontextmanager
async def open_openai(settings: Settings) -> AsyncIterator[openai.AsyncOpenAI]:
    """The OpenAI client `serve` uses (imported on use, like `open_http`)."""
    from pyloto_cli.adapters.llm.openai import open_openai_client

    async with open_openai_client(settings) as client:
        yield client


def _show(console: Console, results: list[CheckResult]) -> None:
    for result in results:
        mark = "[green]ok  [/]" if result.ok else "[bold red]FAIL[/]"
        console.print(
            f"{mark} {escape(result.name)}: {escape(result.detail)}",
            highlight=False,
            soft_wrap=True,
        )
    failed = sum(not r.ok for r in results)
    summary = "all checks pass" if not failed else f"{failed} of {len(results)} checks failed"
    console.print(summary, highlight=False)


def _run(webhook_url: str | None) -> list[CheckResult]:
    try:
        settings = load_settings()
    except ValidationError as exc:  # a malformed setting is a failed check, not a usage error
        return invalid_settings(exc)
    openers = Openers(http=open_http, openai=open_openai)
    return asyncio.run(run_doctor(settings, openers, webhook_url=webhook_url))


def doctor(
    webhook_url: Annotated[
        str | None,
        typer.Option(
            "--webhook-url",
            metavar="URL",
            help="Also check this public URL answers Meta's verify handshake.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check the configuration before a deploy: settings, extras, backends, Graph, OpenAI."""
    err = Console(stderr=True)
    with boundary(err):
        results = _run(webhook_url)
    ok = all(r.ok for r in results)
    if as_json:
        print_json({"ok": ok, "checks": [r.to_json() for r in results]})
    else:
        _show(Console(), results)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add `pyloto doctor` to the app."""
    app.command()(doctor)
