"""The logic behind `pyloto enqueue`, `queue ...`, `replay` and `conversations`.

The Typer commands in `pyloto_cli/cli/` only parse options and render; everything they do is
here, as plain async functions over `Settings` that tests call directly. Each is given the
composition root's opener (`bootstrap.open_roles`) and asks it for the roles it uses: tools sit
below the composition root and never import it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol, TypeAlias

from pyloto_cli.settings import Settings

if TYPE_CHECKING:
    from pyloto_cli.pipeline.process import Pipeline
    from pyloto_cli.pipeline.worker import Worker
    from pyloto_cli.ports import Deduper, QueueAdmin, Sender, SessionStore, StatusStore, TaskSink


class StoreSet(Protocol):
    """The state stores of one process."""

    @property
    def sessions(self) -> SessionStore: ...

    @property
    def deduper(self) -> Deduper: ...

    @property
    def statuses(self) -> StatusStore: ...


class ToolRoles(Protocol):
    """What a tool may ask of the roles the composition root opened (`bootstrap.Roles`)."""

    @property
    def settings(self) -> Settings: ...

    async def sink(self) -> TaskSink: ...

    async def admin(self) -> QueueAdmin | None: ...

    async def pulls(self) -> bool: ...

    async def worker(self) -> Worker: ...

    async def pipeline(self) -> Pipeline: ...

    async def sender(self) -> Sender: ...

    async def stores(self) -> StoreSet: ...


# `bootstrap.open_roles`, as the tools see it
RolesOpener: TypeAlias = Callable[[Settings], AbstractAsyncContextManager[ToolRoles]]


class ToolUsageError(ValueError):
    """The command was asked for something it cannot do (exit code 2)."""


def admin_settings(settings: Settings) -> Settings:
    """`settings` without network credentials: queue tools never call Graph or OpenAI."""
    return settings.model_copy(update={"whatsapp_access_token": None, "openai_api_key": None})
