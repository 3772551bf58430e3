"""`pyloto send`: an operator's one-off message through pyloto's sender (see tools/send.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli._boundary import EXIT_OK, boundary, load_settings, print_json
from pyloto_cli.domain.outbound_media import MediaKind
from pyloto_cli.logs import configure_logging
from pyloto_cli.tools import ToolUsageError
from pyloto_cli.tools.send import SendOutcome, SendRequest, run_send


def _media(
    image: Path | None, document: Path | None, audio: Path | None, video: Path | None
) -> tuple[MediaKind, Path] | None:
    given = [
        (kind, path)
        for kind, path in (
            (MediaKind.IMAGE, image),
            (MediaKind.DOCUMENT, document),
            (MediaKind.AUDIO, audio),
            (MediaKind.VIDEO, video),
        )
        if path is not None
    ]
    if len(given) > 1:
        names = " and ".join(f"--{kind.value}" for kind, _ in given)
        raise ToolUsageError(f"give one file to send (got {names})")
    return given[0] if given else None


def _show(console: Console, outcome: SendOutcome) -> None:
    verb = "dry run (no WHATSAPP_ACCESS_TOKEN): would send" if outcome.dry_run else "sent"
    console.print(
        f"{verb} {outcome.type} to {escape(outcome.to)} from {outcome.phone_number_id}: "
        f"{escape(outcome.message_id)}",
        highlight=False,
        soft_wrap=True,
    )


def send(
    to: Annotated[
        str, typer.Option("--to", metavar="NUMBER_OR_BSUID", help="The user: +phone or BSUID.")
    ],
    from_id: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="PHONE_NUMBER_ID",
            help="The business number's id (default: WHATSAPP_PHONE_NUMBER_ID).",
        ),
    ] = None,
    text: Annotated[str | None, typer.Option(help="A text message.")] = None,
    image: Annotated[
        Path | None, typer.Option(help="A JPEG or PNG, up to 5 MB.", metavar="FILE")
    ] = None,
    document: Annotated[
        Path | None, typer.Option(help="A PDF, text or Office file, up to 100 MB.", metavar="FILE")
    ] = None,
    audio: Annotated[
        Path | None,
        typer.Option(help="AAC, AMR, MP3, M4A or OGG/Opus, up to 16 MB.", metavar="FILE"),
    ] = None,
    video: Annotated[
        Path | None, typer.Option(help="MP4 or 3GPP, up to 16 MB.", metavar="FILE")
    ] = None,
    caption: Annotated[
        str | None, typer.Option(help="Caption of an image, document or video.")
    ] = None,
    template: Annotated[
        str | None, typer.Option(metavar="NAME", help="An approved template's name.")
    ] = None,
    lang: Annotated[
        str | None, typer.Option(metavar="CODE", help="The template's language (en_US).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(metavar="TEXT", help="A body parameter ({{1}}, {{2}}...), in order."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Send one message (text, media or template) to a user, as pyloto's worker would."""
    err = Console(stderr=True)
    with boundary(err):
        settings = load_settings()
        if settings.log_level.upper() != "DEBUG":
            # the outcome, or the reason nothing was sent, is the command's one line: the
            # sender's own warnings (`send_failed`) would say it twice
            configure_logging(settings.log_format, "CRITICAL")
        request = SendRequest(
            to=to,
            from_id=from_id,
            text=text,
            media=_media(image, document, audio, video),
            caption=caption,
            template=template,
            language=lang,
            params=tuple(param or ()),
        )
        outcome = asyncio.run(run_send(settings, open_roles, request))
    if as_json:
        print_json(outcome.to_json())
    else:
        _show(Console(), outcome)
    raise typer.Exit(EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add `pyloto send` to the app."""
    app.command()(send)
