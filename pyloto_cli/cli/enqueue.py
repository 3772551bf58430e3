"""`pyloto enqueue`: captured webhook bodies onto the configured queue (see tools/enqueue.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli._boundary import EXIT_FAILURE, EXIT_OK, boundary, print_json, queue_settings
from pyloto_cli.tools.enqueue import ENQUEUE_SUFFIXES, EnqueueReport, FileOutcome, run_enqueue
from pyloto_cli.tools.sources import expand


@contextlib.contextmanager
def _progress(
    console: Console, total: int, *, enabled: bool
) -> Iterator[Callable[[FileOutcome], None] | None]:
    if not enabled:
        yield None
        return
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("enqueueing", total=total)
        yield lambda _outcome: progress.advance(bar)


def _show(console: Console, report: EnqueueReport) -> None:
    for rejected in report.rejected:
        name, reason = escape(rejected.name), escape(rejected.rejected or "")
        console.print(f"[red]rejected[/] {name}: {reason}", highlight=False)
    console.print(
        f"[bold]{report.enqueued}[/] enqueued, [bold]{report.duplicates}[/] duplicate, "
        f"[bold]{len(report.rejected)}[/] rejected ({len(report.files)} files)",
        highlight=False,
    )


def enqueue(
    targets: Annotated[
        list[str],
        typer.Argument(metavar="FILE|DIR|-", help="Webhook bodies: files, directories, - (stdin)."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Put captured webhook bodies on the configured queue, as the webhook would."""
    err = Console(stderr=True)
    with boundary(err):
        settings = queue_settings()
        sources = expand(targets, ENQUEUE_SUFFIXES, typer.get_binary_stream("stdin"))
        has_dir = not as_json and any(Path(t).is_dir() for t in targets)
        with _progress(err, len(sources), enabled=has_dir) as on_file:
            report = asyncio.run(run_enqueue(settings, open_roles, sources, on_file))
    if as_json:
        print_json(report.to_json())
    else:
        _show(Console(), report)
    raise typer.Exit(EXIT_FAILURE if report.rejected else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add `pyloto enqueue` to the app."""
    app.command()(enqueue)
