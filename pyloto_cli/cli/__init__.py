"""The `pyloto` command: a Typer app; each command is thin and calls code outside `cli/`."""

from __future__ import annotations

from importlib.metadata import version as package_version
from typing import Annotated

import typer

from pyloto_cli.cli import bench, conversations, doctor, enqueue, queue, replay, send, serve

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
doctor.register(app)
send.register(app)
conversations.register(app)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"pyloto {package_version('pyloto')}")
        raise typer.Exit(0)


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print pyloto's version and exit.",
        ),
    ] = False,
) -> None:
    """Run and operate the back end of a WhatsApp Cloud API assistant."""


def main() -> None:
    """Console-script entry point."""
    app()
