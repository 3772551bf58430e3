"""The `pyloto` command: a Typer app; each command is thin and calls code outside `cli/`."""

from __future__ import annotations

import typer

from pyloto_cli.cli import bench, enqueue, queue, replay, serve

app = typer.Typer(
    name="pyloto",
    no_args_is_help=True,
    help="Run and operate the back end of a WhatsApp Cloud API assistant.",
    pretty_exceptions_show_locals=False,
)
serve.register(app)
bench.register(app)
enqueue.register(app)
queue.register(app)
replay.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
