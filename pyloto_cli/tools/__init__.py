"""The logic behind `pyloto enqueue`, `pyloto queue ...` and `pyloto replay`.

The Typer commands in `pyloto_cli/cli/` only parse options and render; everything they do is
here, as plain async functions over `Settings` that tests call directly.
"""

from __future__ import annotations


class ToolUsageError(ValueError):
    """The command was asked for something it cannot do (exit code 2)."""
