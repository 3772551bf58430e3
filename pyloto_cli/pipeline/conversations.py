"""What an operator does to conversations: list them, look at one, hand it to a person, give it
back to the assistant. Shared by `pyloto conversations` and the admin API.

A conversation is named by its opaque id (`conversation_id` of its key), or by the user's wa_id
or BSUID. A mode change is one `append` with no turns and the mode fields as meta, so it lands
atomically with the session on every store. Only the user opts back in: `handoff` and `resume`
of an `opted_out` conversation are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyloto_cli.domain.conversation import (
    MODE_CHANGED_AT_KEY,
    MODE_KEY,
    MODE_REASON_KEY,
    STAFF_ACTIVE_AT_KEY,
    ConversationState,
    Mode,
    conversation_id,
)
from pyloto_cli.domain.errors import PylotoError
from pyloto_cli.domain.session import Session
from pyloto_cli.logs import get_logger, log_event, mask_phone
from pyloto_cli.ports import SessionHead, SessionStore

_log = get_logger("conversations")
OPERATOR = "operator"
# the fields a mode change writes: the rest of the state (last inbound time...) is left as is
_MODE_FIELDS = (MODE_KEY, MODE_REASON_KEY, MODE_CHANGED_AT_KEY, STAFF_ACTIVE_AT_KEY)
# an id is looked for among every conversation: the opaque id is a hash, it cannot be queried
_SCAN_ALL = 1_000_000


class ConversationNotFound(PylotoError):
    """No conversation, or more than one, answers to the id given."""


class ModeChangeRefused(PylotoError):
    """The conversation is in a mode the operator may not change (the user opted out)."""


@dataclass(frozen=True, slots=True)
class Conversation:
    """One conversation as an operator sees it (numbers masked in `to_json`)."""

    id: str
    key: str
    updated_at: float
    state: ConversationState
    wa_id: str | None = None
    user_id: str | None = None
    session: Session | None = None

    @classmethod
    def of(cls, head: SessionHead, session: Session | None = None) -> Conversation:
        """The view of a stored session's head (and, for `show`, its turns)."""
        return cls(
            id=conversation_id(head.key),
            key=head.key,
            updated_at=head.updated_at,
            state=ConversationState.from_meta(head.meta),
            wa_id=head.meta.get("wa_id") or None,
            user_id=head.meta.get("user_id") or None,
            session=session,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: no full phone number (the wa_id and the key's user are masked)."""
        number, _, user = self.key.partition(":")
        state = self.state
        data: dict[str, Any] = {
            "id": self.id,
            "phone_number_id": number,
            "user": mask_phone(user),
            "wa_id": mask_phone(self.wa_id),
            "bsuid": mask_phone(self.user_id),
            "mode": state.mode.value,
            "mode_reason": state.mode_reason,
            "mode_changed_at": state.mode_changed_at,
            "staff_active_at": state.staff_active_at,
            "last_inbound_at": state.last_inbound_at,
            "window_closes_at": state.window_closes_at(),
            "marketing_opt_out": state.marketing_opt_out,
            "updated_at": self.updated_at,
        }
        if self.session is not None:
            data["turns"] = [turn.to_dict() for turn in self.session.turns]
        return data


@dataclass(frozen=True, slots=True)
class ModeChange:
    """What `handoff` / `resume` did: the mode before and after (equal when nothing changed)."""

    conversation: Conversation
    old: Mode
    new: Mode

    def to_json(self) -> dict[str, str]:
        """What the CLI's `--json` and the admin API answer: the id, the mode before and after."""
        return {"id": self.conversation.id, "old": self.old.value, "new": self.new.value}


class ConversationDesk:
    """The operator's view of the conversations in `sessions`."""

    def __init__(
        self,
        sessions: SessionStore,
        *,
        history_turns: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self._history_turns = history_turns
        self._clock = clock

    async def list(self, mode: Mode | None = None, limit: int = 10_000) -> list[Conversation]:
        """Conversations, most recently active first, only those in `mode` when given."""
        found = [Conversation.of(head) for head in await self.sessions.list(limit)]
        return [c for c in found if mode is None or c.state.mode is mode]

    async def find(self, ident: str) -> Conversation:
        """The one conversation `ident` names (its id, wa_id or BSUID), with its turns."""
        ident = ident.strip()
        wanted = ident.lstrip("+")
        matches = [
            head
            for head in await self.sessions.list(_SCAN_ALL)
            if conversation_id(head.key) == ident.lower() or _names(head, wanted)
        ]
        if not matches:
            raise ConversationNotFound(f"no conversation {_shown(ident)}")
        if len(matches) > 1:
            raise ConversationNotFound(
                f"{_shown(ident)} names {len(matches)} conversations (one per business number): "
                "use the id from `pyloto conversations list`"
            )
        session = await self.sessions.load(matches[0].key)
        if session is None:  # deleted since the listing
            raise ConversationNotFound(f"no conversation {_shown(ident)}")
        return Conversation.of(_head(session), session)

    async def handoff(self, ident: str) -> ModeChange:
        """Hand the conversation to a person: the assistant stops answering it."""
        return await self._change(ident, Mode.HUMAN)

    async def resume(self, ident: str) -> ModeChange:
        """Give the conversation back to the assistant."""
        return await self._change(ident, Mode.ASSISTANT)

    async def _change(self, ident: str, mode: Mode) -> ModeChange:
        found = await self.find(ident)
        old = found.state.mode
        if old is Mode.OPTED_OUT:
            raise ModeChangeRefused(
                f"conversation {found.id} is opted_out: only the user can opt back in"
            )
        now = self._clock()
        state = found.state.with_mode(mode, OPERATOR, now) if old is not mode else found.state
        meta = {name: value for name, value in state.to_meta().items() if name in _MODE_FIELDS}
        meta[STAFF_ACTIVE_AT_KEY] = repr(now)
        session = await self.sessions.append(found.key, (), self._history_turns, meta)
        if old is not mode:
            log_event(
                _log,
                "conversation_mode_changed",
                conversation=found.id,
                old=old.value,
                new=mode.value,
                reason=OPERATOR,
            )
        return ModeChange(Conversation.of(_head(session)), old, mode)


def _head(session: Session) -> SessionHead:
    """The head of a session just read or written (what a listing would show of it)."""
    return SessionHead(session.key, session.updated_at, session.meta)


def _names(head: SessionHead, wanted: str) -> bool:
    """True when `wanted` is the conversation's user: its wa_id or BSUID, in meta or key."""
    user = head.key.partition(":")[2]
    return wanted in (user, head.meta.get("wa_id"), head.meta.get("user_id"))


def _shown(ident: str) -> str:
    """An id as an error may show it: a phone number masked, an opaque id or BSUID whole."""
    return f"{mask_phone(ident)}" if ident.lstrip("+").isdigit() else repr(ident)


def conversations_json(conversations: Sequence[Conversation]) -> list[dict[str, Any]]:
    """Every conversation as JSON."""
    return [c.to_json() for c in conversations]
