"""`pyloto queue stats|drain|failed-deliveries|dead-letter ...` (see tools/queue_ops.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.json import JSON
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli._boundary import EXIT_FAILURE, EXIT_OK, boundary, print_json, queue_settings
from pyloto_cli.domain.task import QueueStats
from pyloto_cli.logs import log_id
from pyloto_cli.tools import ToolUsageError
from pyloto_cli.tools import queue_ops as ops

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
LimitOpt = Annotated[int, typer.Option(min=1, help="Show at most this many.")]


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape("" if row.get(c) is None else str(row.get(c))) for c in columns))
    return table


def _stats_table(stats: QueueStats) -> Table:
    data = ops.stats_json(stats)
    age = data.pop("oldest_age_s")
    data["oldest_age"] = "-" if age is None else f"{age:.1f} s"
    table = Table(title="queue", title_justify="left", show_header=False)
    for key, value in data.items():
        table.add_row(key.replace("_", " "), "not reported" if value is None else str(value))
    return table


@contextlib.contextmanager
def _stats_view(
    console: Console, *, live: bool, as_json: bool
) -> Iterator[Callable[[QueueStats], None]]:
    if as_json:
        yield lambda s: print_json(ops.stats_json(s))
    elif not live:
        yield lambda s: console.print(_stats_table(s))
    else:
        with Live(console=console, auto_refresh=False) as view:
            yield lambda s: view.update(_stats_table(s), refresh=True)
        if not console.is_terminal:
            console.line()


def stats(
    watch: Annotated[bool, typer.Option(help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between refreshes.")] = 1.0,
    count: Annotated[int | None, typer.Option(min=1, help="With --watch: stop after N.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Depth, ready, leased, retrying, dead-lettered, oldest age, backend.

    With --watch --json, one JSON object per line per refresh.
    """
    times = count if watch else 1
    view = _stats_view(Console(), live=watch, as_json=as_json)
    with boundary(Console(stderr=True)), contextlib.suppress(KeyboardInterrupt), view as show:
        settings = queue_settings()
        asyncio.run(ops.watch_stats(settings, open_roles, show, interval_s=interval, count=times))


@contextlib.contextmanager
def _drain_progress(
    console: Console, *, enabled: bool
) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("draining", total=None)

        def update(handled: int, total: int) -> None:
            progress.update(bar, completed=handled, total=max(total, handled))

        yield update


def _drain_table(report: ops.DrainReport) -> Table:
    table = Table(title="drain", title_justify="left", show_header=False)
    summary = report.to_json()
    remaining = summary.pop("remaining")
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), str(value))
    table.add_row("left in queue", str(remaining["depth"]))
    table.add_row("dead letters in total", str(remaining["dead_lettered"]))
    return table


def drain(as_json: JsonOpt = False) -> None:
    """Process until nothing is left to lease (burst mode); exit 1 if a task was dead-lettered."""
    err = Console(stderr=True)
    with boundary(err), _drain_progress(err, enabled=not as_json) as on_progress:
        report = asyncio.run(ops.run_drain(queue_settings(), open_roles, on_progress))
    if as_json:
        print_json(report.to_json())
    else:
        Console().print(_drain_table(report))
    raise typer.Exit(EXIT_FAILURE if report.dead else EXIT_OK)


def failed_deliveries(limit: LimitOpt = 100, as_json: JsonOpt = False) -> None:
    """Sent messages whose delivery failed (status webhooks), newest first, with error codes."""
    with boundary(Console(stderr=True)):
        rows = [
            ops.delivery_json(s)
            for s in asyncio.run(ops.failed_deliveries(queue_settings(), open_roles, limit))
        ]
    if as_json:
        print_json({"failed": rows})
        return
    columns = ["message_id", "error_code", "error_title", "recipient", "timestamp"]
    Console().print(_table(f"failed deliveries ({len(rows)})", rows, columns))


def _show_dead_list(console: Console, rows: list[dict[str, Any]]) -> None:
    """Each dead letter as a few lines, its id alone on the first one and never wrapped (a
    table would cut a 60-character wamid, and `show` and `requeue` need it whole)."""
    console.print(f"[bold]dead letters ({len(rows)})[/]", highlight=False)
    for row in rows:
        console.print(escape(row["task_id"]), style="bold", soft_wrap=True, highlight=False)
        facts = (
            f"log id {log_id(row['task_id'])} · {row['kind']} · {row['conversation']}"
            f" · attempts {row['attempts']} · dead {row['dead_at']}"
        )
        console.print(f"  {escape(facts)}", soft_wrap=True, highlight=False)
        console.print(f"  error: {escape(str(row['error']))}", soft_wrap=True, highlight=False)


def dead_list(limit: LimitOpt = 100, as_json: JsonOpt = False) -> None:
    """Dead letters, oldest first: ids whole, with the hash their log lines carry."""
    with boundary(Console(stderr=True)):
        rows = [
            ops.dead_letter_json(d)
            for d in asyncio.run(ops.list_dead(queue_settings(), open_roles, limit))
        ]
    if as_json:
        print_json({"dead_letters": rows})
        return
    _show_dead_list(Console(), rows)


def dead_show(task_id: str, as_json: JsonOpt = False) -> None:
    """One dead letter with its error and the item as received (phone numbers masked)."""
    err = Console(stderr=True)
    with boundary(err):
        dead = asyncio.run(ops.show_dead(queue_settings(), open_roles, task_id))
    if dead is None:
        err.print(f"[bold red]error:[/] no dead letter {escape(task_id)}", highlight=False)
        raise typer.Exit(EXIT_FAILURE)
    data = ops.dead_letter_json(dead, full=True)
    if as_json:
        print_json(data)
        return
    item = data.pop("item")
    data["log_id"] = log_id(dead.task.task_id)
    console = Console()
    for key, value in data.items():
        console.print(f"[bold]{key}[/]: {escape(str(value))}", highlight=False, soft_wrap=True)
    console.print(JSON.from_data(item))


def dead_requeue(
    task_ids: Annotated[list[str] | None, typer.Argument(metavar="ID")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Requeue every dead letter.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead letters back on the queue (attempts reset); exit 1 if an ID was not dead."""
    err = Console(stderr=True)
    with boundary(err):
        if bool(task_ids) == all_:
            raise ToolUsageError("give dead letter IDs or --all (not both)")
        report = asyncio.run(
            ops.requeue_dead(queue_settings(), open_roles, None if all_ else task_ids)
        )
    if as_json:
        print_json({"requeued": report.requeued, "missing": list(report.missing)})
    else:
        for missing in report.missing:
            err.print(f"[red]not a dead letter:[/] {escape(missing)}", highlight=False)
        Console().print(f"requeued [bold]{report.requeued}[/]", highlight=False)
    raise typer.Exit(EXIT_FAILURE if report.missing else EXIT_OK)


def dead_purge(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete every dead letter (asks first unless --yes)."""
    with boundary(Console(stderr=True)):
        settings = queue_settings()
        if not yes:
            typer.confirm("Delete every dead letter?", abort=True)
        purged = asyncio.run(ops.purge_dead(settings, open_roles))
    if as_json:
        print_json({"purged": purged})
    else:
        Console().print(f"purged [bold]{purged}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `pyloto queue ...` (and its `dead-letter` group) to the app."""
    queue_app = typer.Typer(no_args_is_help=True, help="Inspect and operate the queue.")
    queue_app.command()(stats)
    queue_app.command()(drain)
    queue_app.command("failed-deliveries")(failed_deliveries)
    dead_app = typer.Typer(no_args_is_help=True, help="Tasks that will not be retried.")
    dead_app.command("list")(dead_list)
    dead_app.command("show")(dead_show)
    dead_app.command("requeue")(dead_requeue)
    dead_app.command("purge")(dead_purge)
    queue_app.add_typer(dead_app, name="dead-letter")
    app.add_typer(queue_app, name="queue")
