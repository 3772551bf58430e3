"""`pyloto queue stats|drain|failed-deliveries|dead-letter ...` (see tools/queue_ops.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.json import JSON
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from pyloto_cli.cli._boundary import EXIT_FAILURE, EXIT_OK, boundary, load_settings, print_json
from pyloto_cli.domain.task import QueueStats
from pyloto_cli.tools import queue_ops as ops

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
LimitOpt = Annotated[int, typer.Option(min=1, help="Show at most this many.")]

queue_app = typer.Typer(no_args_is_help=True, help="Inspect and operate the queue.")
dead_app = typer.Typer(no_args_is_help=True, help="Tasks that will not be retried.")


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape("" if row.get(c) is None else str(row.get(c))) for c in columns))
    return table


def _stats_table(stats: QueueStats) -> Table:
    data = ops.stats_json(stats)
    age = data["oldest_age_s"]
    data["oldest_age_s"] = "-" if age is None else f"{age:.1f} s"
    table = Table(title="queue", title_justify="left", show_header=False)
    for key, value in data.items():
        table.add_row(key.replace("_", " "), str(value))
    return table


@queue_app.command()
def stats(
    watch: Annotated[bool, typer.Option(help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between refreshes.")] = 1.0,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after N refreshes.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Depth, ready, leased, retrying, dead-lettered, oldest age (one JSON line per refresh)."""
    console, err = Console(), Console(stderr=True)
    times = count if watch else 1
    with boundary(err), contextlib.suppress(KeyboardInterrupt):
        settings = load_settings()
        if as_json or not watch:
            show = (lambda s: print_json(ops.stats_json(s))) if as_json else console.print
            asyncio.run(ops.watch_stats(settings, lambda s: show(_stats_table(s) if not as_json else s), interval_s=interval, count=times))
            return
        with Live(console=console, auto_refresh=False) as live:
            update = lambda s: live.update(_stats_table(s), refresh=True)  # noqa: E731
            asyncio.run(ops.watch_stats(settings, update, interval_s=interval, count=times))
