"""Who answers a conversation, and when it may be written to: its mode and its clock.

The state travels in `Session.meta` (flat string fields), so every session store keeps it with
the history and changes it in the same atomic append that records the turns: a mode can never
disagree with the history that led to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

# The meta keys this module owns; nothing else writes them.
MODE_KEY = "mode"
MODE_REASON_KEY = "mode_reason"
MODE_CHANGED_AT_KEY = "mode_changed_at"
STAFF_ACTIVE_AT_KEY = "staff_active_at"
LAST_INBOUND_AT_KEY = "last_inbound_at"
MARKETING_OPT_OUT_KEY = "marketing_opt_out"
REENGAGED_WINDOW_KEY = "reengaged_window"

WINDOW_SECONDS = 24 * 3600.0


class Mode(StrEnum):
    """Who handles the conversation."""

    ASSISTANT = "assistant"  # the pipeline answers
    HUMAN = "human"  # a person answers: pyloto stores, never replies
    OPTED_OUT = "opted_out"  # the user asked not to be messaged: nothing reaches them


# a mode by its stored value (a lookup: read on every message, where `Mode(v)` costs more)
_MODES: dict[str, Mode] = {mode.value: mode for mode in Mode}


@dataclass(frozen=True, slots=True)
class ConversationState:
    """A typed view of the conversation fields kept in a session's meta.

    Times are epoch seconds; None means "never". `reengaged_window` is the `last_inbound_at` of
    the window a re-engagement template was sent for, so it is sent once per closed window.
    """

    mode: Mode = Mode.ASSISTANT
    mode_reason: str | None = None
    mode_changed_at: float | None = None
    staff_active_at: float | None = None
    last_inbound_at: float | None = None
    marketing_opt_out: bool = False
    reengaged_window: float | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> ConversationState:
        """Read the state from a session's meta; unknown or malformed values read as defaults."""
        return cls(
            mode=_MODES.get(meta.get(MODE_KEY) or "", Mode.ASSISTANT),
            mode_reason=meta.get(MODE_REASON_KEY) or None,
            mode_changed_at=_float(meta.get(MODE_CHANGED_AT_KEY)),
            staff_active_at=_float(meta.get(STAFF_ACTIVE_AT_KEY)),
            last_inbound_at=_float(meta.get(LAST_INBOUND_AT_KEY)),
            marketing_opt_out=meta.get(MARKETING_OPT_OUT_KEY) == "true",
            reengaged_window=_float(meta.get(REENGAGED_WINDOW_KEY)),
        )

    def to_meta(self) -> dict[str, str]:
        """The meta fields to merge into the session (every key, so a reset is written too)."""
        return {key: _meta_text(value) for key, value in self._fields()}

    def changed_meta(self, before: ConversationState) -> dict[str, str]:
        """The fields of `to_meta` whose text differs from `before`'s, in its order: only what
        changed is encoded (this runs on every message)."""
        changed: dict[str, str] = {}
        for (key, new), (_, old) in zip(self._fields(), before._fields(), strict=True):
            if new is not old and (text := _meta_text(new)) != _meta_text(old):
                changed[key] = text
        return changed

    def _fields(self) -> tuple[tuple[str, Mode | str | float | bool | None], ...]:
        """Each meta key with the value it holds, in the order `to_meta` writes them."""
        return (
            (MODE_KEY, self.mode),
            (MODE_REASON_KEY, self.mode_reason),
            (MODE_CHANGED_AT_KEY, self.mode_changed_at),
            (STAFF_ACTIVE_AT_KEY, self.staff_active_at),
            (LAST_INBOUND_AT_KEY, self.last_inbound_at),
            (MARKETING_OPT_OUT_KEY, self.marketing_opt_out),
            (REENGAGED_WINDOW_KEY, self.reengaged_window),
        )

    def with_mode(self, mode: Mode, reason: str, now: float) -> ConversationState:
        """A copy in `mode`, recording why and when."""
        return replace(self, mode=mode, mode_reason=reason, mode_changed_at=now)

    def with_last_inbound(self, at: float) -> ConversationState:
        """A copy whose user last wrote at `at` (built directly: this runs on every message,
        where `dataclasses.replace` costs several times more)."""
        return ConversationState(
            mode=self.mode,
            mode_reason=self.mode_reason,
            mode_changed_at=self.mode_changed_at,
            staff_active_at=self.staff_active_at,
            last_inbound_at=at,
            marketing_opt_out=self.marketing_opt_out,
            reengaged_window=self.reengaged_window,
        )

    def window_open(self, now: float) -> bool:
        """True while the user's last inbound message is less than 24 hours old."""
        return self.last_inbound_at is not None and now - self.last_inbound_at < WINDOW_SECONDS

    def window_closes_at(self) -> float | None:
        """When free-form messages stop being allowed, or None before any inbound message."""
        return None if self.last_inbound_at is None else self.last_inbound_at + WINDOW_SECONDS


def conversation_id(conversation_key: str) -> str:
    """The opaque id an operator uses: the first 16 hex characters of sha256 of the key."""
    return hashlib.sha256(conversation_key.encode("utf-8")).hexdigest()[:16]


def _float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _meta_text(value: Mode | str | float | bool | None) -> str:
    """A field as `to_meta` writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mode):
        return value.value
    return value if isinstance(value, str) else repr(value)
