"""`pyloto replay`: recorded webhooks through the whole pipeline, offline (tools/replay.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.json import JSON
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli._boundary import EXIT_FAILURE, EXIT_OK, boundary, load_settings, print_json
from pyloto_cli.logs import log_id
from pyloto_cli.tools.replay import REPLAY_SUFFIXES, ReplayClock, ReplayReport, run_replay
from pyloto_cli.tools.sources import expand

_OUTCOME_STYLE = {
    "done": "green",
    "skipped": "yellow",
    "reply_expired": "yellow",
    "retry": "red",
    "dead": "red",
}


def _facts(item: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    message, status, reply = item.get("message"), item.get("status"), item.get("reply")
    if message:
        grid.add_row("message", f"{message['type']} from {message['from'] or '?'}")
        grid.add_row("text", repr(message["text"]) if message["text"] is not None else "-")
    if status:
        grid.add_row("status", f"{status['status']} of {status['id']}")
    if item.get("field"):
        grid.add_row("field", f"{item['field']} {item.get('reason') or ''}".rstrip())
    if message and not reply and item["outcome"] == "done":
        grid.add_row("reply", "none (this message gets no reply)")
    if reply:
        grid.add_row("event", item.get("event", "-"))
        grid.add_row("reply", reply["text"])
        grid.add_row("message type", reply["message_type"])
    outcome = item["outcome"]
    reason = f" ({item['reason']})" if item.get("reason") else ""
    grid.add_row("outcome", Text(outcome + reason, style=_OUTCOME_STYLE.get(outcome, "red")))
    timings = item.get("timings_ms") or {}
    grid.add_row("timings", "  ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))
    if item.get("task_id"):
        grid.add_row("task", Text(item["task_id"], overflow="fold"))
        grid.add_row("log id", log_id(item["task_id"]))  # what its log lines carry
    return grid


def _show_item(console: Console, item: dict[str, Any]) -> None:
    """One item as a panel: the task id whole, with the hash its log lines carry."""
    parts: list[Any] = [_facts(item)]
    for sent in item.get("sent") or ():
        parts.append(Text(f"POST /{sent['phone_number_id']}/messages", style="bold cyan"))
        parts.append(JSON.from_data(sent["body"]))
    title = f"{item['source']} · {item['kind']} {item.get('task_id', '')}".rstrip()
    console.print(Panel(Group(*parts), title=escape(title), title_align="left"))


def _show_summary(console: Console, report: ReplayReport) -> None:
    if report.diff:
        console.print(Text("transcript differs from --expect:", style="bold red"))
        for line in report.diff.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            console.print(Text(line, style=style), soft_wrap=True)
    elif report.diff is not None:
        console.print(Text("transcript matches --expect", style="green"))
    if report.recorded is not None:
        console.print(f"recorded {len(report.items)} items to {escape(str(report.recorded))}")
    console.print(f"{len(report.items)} items, {len(report.failures)} failed", highlight=False)


def replay(
    paths: Annotated[list[str], typer.Argument(metavar="PATH", help="Files or directories.")],
    live_llm: Annotated[bool, typer.Option(help="Use the real LLM (OPENAI_*).")] = False,
    record: Annotated[Path | None, typer.Option(help="Write the transcript here.")] = None,
    expect: Annotated[Path | None, typer.Option(help="Compare with this transcript.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    now: Annotated[
        ReplayClock,
        typer.Option(
            help="What the stale limit and the 24-hour window are judged against: the wall "
            "clock, or the newest message timestamp in the input (old recordings replay as "
            "recorded)."
        ),
    ] = ReplayClock.WALL,
) -> None:
    """Run recorded webhooks through the whole pipeline offline; exit 1 on failure or diff."""
    console = Console()
    with boundary(Console(stderr=True)):
        settings = load_settings()
        sources = expand(paths, REPLAY_SUFFIXES, typer.get_binary_stream("stdin"))
        show = None if as_json else (lambda item: _show_item(console, item))
        report = asyncio.run(
            run_replay(
                settings,
                open_roles,
                sources,
                live_llm=live_llm,
                record=record,
                expect=expect,
                on_item=show,
                now=now,
            )
        )
    if as_json:
        print_json(report.to_json())
    else:
        _show_summary(console, report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add `pyloto replay` to the app."""
    app.command()(replay)
