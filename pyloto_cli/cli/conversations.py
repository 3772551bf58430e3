"""`pyloto conversations list|show|handoff|resume` (see tools/conversations.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli._boundary import boundary, load_settings, print_json
from pyloto_cli.pipeline.conversations import Conversation, ModeChange, conversations_json
from pyloto_cli.settings import Settings, StoreBackend
from pyloto_cli.tools import ToolUsageError
from pyloto_cli.tools import conversations as ops
from pyloto_cli.tools.queue_ops import iso_time

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
IdArg = Annotated[
    str, typer.Argument(metavar="ID", help="The conversation's id, or the user's wa_id or BSUID.")
]
_COLUMNS = ("id", "number", "user", "mode", "last inbound", "window closes")
_PIPED_WIDTH = 120  # a table piped or logged is not cut at 80 columns


def store_settings() -> Settings:
    """Settings for a command on the session store, which must be one `serve` shares: on
    SQLite it says on stderr which data dir it reads (a command run elsewhere sees none)."""
    settings = load_settings()
    backend = settings.session_store_backend
    if backend is StoreBackend.MEMORY:
        raise ToolUsageError(
            "SESSION_STORE_BACKEND=memory keeps conversations inside one `pyloto serve` "
            "process: this command would see none; use the admin API, or sqlite, redis or "
            "firestore"
        )
    if backend is StoreBackend.SQLITE:
        where = escape(str(settings.data_dir.resolve()))
        note = "data dir" if (settings.data_dir / "state.db").exists() else "no sessions yet in"
        Console(stderr=True).print(f"{note}: {where}", highlight=False, soft_wrap=True)
    return settings


def _minute(epoch: float | None) -> str:
    """A time to the minute, UTC (the table's columns stay narrow; `--json` has seconds)."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _row(conversation: Conversation) -> list[str]:
    data = conversation.to_json()
    return [
        data["id"],
        data["phone_number_id"],
        data["wa_id"] or data["bsuid"] or data["user"] or "?",
        data["mode"],
        _minute(data["last_inbound_at"]),
        _minute(data["window_closes_at"]),
    ]


def list_(
    mode: Annotated[
        str | None, typer.Option(help="Only this mode: assistant, human or opted_out.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Conversations, most recently active first, with their mode and 24-hour window."""
    with boundary(Console(stderr=True)):
        wanted = ops.parse_mode(mode)
        found = asyncio.run(ops.list_conversations(store_settings(), open_roles, wanted))
    if as_json:
        print_json({"conversations": conversations_json(found)})
        return
    table = Table(title=f"conversations ({len(found)}), times UTC", title_justify="left")
    for column in _COLUMNS:
        table.add_column(column, no_wrap=True)
    for conversation in found:
        table.add_row(*(escape(cell) for cell in _row(conversation)))
    console = Console()
    if not console.is_terminal:
        console = Console(width=_PIPED_WIDTH)
    console.print(table)


def show(ident: IdArg, as_json: JsonOpt = False) -> None:
    """One conversation: its state and its turns (numbers masked)."""
    with boundary(Console(stderr=True)):
        found = asyncio.run(ops.show_conversation(store_settings(), open_roles, ident))
    data = found.to_json()
    if as_json:
        print_json(data)
        return
    console = Console()
    turns: list[dict[str, Any]] = data.pop("turns", [])
    for key, value in data.items():
        shown = iso_time(value) if key.endswith("_at") and value is not None else value
        console.print(f"[bold]{key}[/]: {escape(str(shown))}", highlight=False, soft_wrap=True)
    table = Table(title=f"turns ({len(turns)})", title_justify="left")
    for column in ("at", "role", "text"):
        table.add_column(column)
    for turn in turns:
        table.add_row(iso_time(turn["at"]) or "-", turn["role"], escape(turn["text"]))
    console.print(table)


def _report(change: ModeChange, as_json: bool) -> None:
    if as_json:
        print_json(change.to_json())
        return
    what = "now" if change.old is not change.new else "already"
    Console().print(
        f"conversation {change.conversation.id}: {what} [bold]{change.new.value}[/]",
        highlight=False,
    )


def handoff(ident: IdArg, as_json: JsonOpt = False) -> None:
    """Hand the conversation to a person: the assistant stops answering it."""
    with boundary(Console(stderr=True)):
        change = asyncio.run(ops.change_mode(store_settings(), open_roles, ident, to_human=True))
    _report(change, as_json)


def resume(ident: IdArg, as_json: JsonOpt = False) -> None:
    """Give the conversation back to the assistant."""
    with boundary(Console(stderr=True)):
        change = asyncio.run(ops.change_mode(store_settings(), open_roles, ident, to_human=False))
    _report(change, as_json)


def register(app: typer.Typer) -> None:
    """Add `pyloto conversations ...` to the app."""
    group = typer.Typer(no_args_is_help=True, help="See conversations; hand them off, resume.")
    group.command("list")(list_)
    group.command()(show)
    group.command()(handoff)
    group.command()(resume)
    app.add_typer(group, name="conversations")
