"""The logic behind `pyloto enqueue`, `pyloto queue ...` and `pyloto replay`.

The Typer commands in `pyloto_cli/cli/` only parse options and render; everything they do is
here, as plain async functions over `Settings` that tests call directly.
"""

from __future__ import annotations

from pyloto_cli.settings import Settings


class ToolUsageError(ValueError):
    """The command was asked for something it cannot do (exit code 2)."""


def admin_settings(settings: Settings) -> Settings:
    """`settings` without network credentials: queue tools never call Graph or OpenAI."""
    return settings.model_copy(update={"whatsapp_access_token": None, "openai_api_key": None})
