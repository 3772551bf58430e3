"""`pyloto conversations list|show|handoff|resume`: the operator's desk over the session store.

Each function opens the stores the settings describe (no network client), does one thing and
closes them. The rules (ids, refusals, the atomic mode change) are `ConversationDesk`'s.
"""

from __future__ import annotations

from pyloto_cli.domain.conversation import Mode
from pyloto_cli.pipeline.conversations import Conversation, ConversationDesk, ModeChange
from pyloto_cli.settings import Settings
from pyloto_cli.tools import RolesOpener, ToolRoles, ToolUsageError, admin_settings


def parse_mode(value: str | None) -> Mode | None:
    """`--mode`'s value; a usage error naming the choices for anything else."""
    if value is None:
        return None
    try:
        return Mode(value.strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise ToolUsageError(f"unknown mode {value!r}; use one of {choices}") from None


async def _desk(roles: ToolRoles) -> ConversationDesk:
    sessions = (await roles.stores()).sessions
    return ConversationDesk(sessions, history_turns=roles.settings.history_turns)


async def list_conversations(
    settings: Settings, open_roles: RolesOpener, mode: Mode | None = None
) -> list[Conversation]:
    """Conversations, most recently active first (only those in `mode` when given)."""
    async with open_roles(admin_settings(settings)) as roles:
        return await (await _desk(roles)).list(mode)


async def show_conversation(
    settings: Settings, open_roles: RolesOpener, ident: str
) -> Conversation:
    """The conversation `ident` names, with its turns; ConversationNotFound otherwise."""
    async with open_roles(admin_settings(settings)) as roles:
        return await (await _desk(roles)).find(ident)


async def change_mode(
    settings: Settings, open_roles: RolesOpener, ident: str, *, to_human: bool
) -> ModeChange:
    """Hand off (`to_human`) or resume the conversation `ident` names."""
    async with open_roles(admin_settings(settings)) as roles:
        desk = await _desk(roles)
        return await (desk.handoff(ident) if to_human else desk.resume(ident))
