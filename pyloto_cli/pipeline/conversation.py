"""Who answers a conversation: the rules that change its mode inside the pipeline.

On every attempt of every task, after the dedupe claim:

1. Mode changes from the user or the staff apply whatever the message's age: a text that is
   exactly an opt-out keyword -> one confirmation, then `opted_out`; exactly an opt-in keyword
   while opted out -> one confirmation, then `assistant`; a staff echo (a message sent from the
   WhatsApp Business app) -> `human`, silently, and its text is stored as a staff turn; a
   `user_preferences` item records `marketing_opt_out` and changes no mode.
2. The handoff timeout: `human` with no staff activity (an echo, an operator action, the
   handoff itself) for `handoff_timeout_s` -> `assistant`, and the message is answered.
3. `human` or `opted_out`: the message is stored in the session (the history stays complete)
   and marked done; no LLM call, no reply, no read receipt.
4. Otherwise the LLM stages answer; their `human_handoff` event -> `human` once the reply
   (the handoff message) is sent. Their `opt_out` event alone is only recorded on the turn.

The state lives in the session's meta (`domain/conversation.py`), so it changes in the same
atomic append as the turns that caused it. Only the fields that changed are written: an operator
who changed the mode while a task ran is not overwritten with what the task loaded. Each change
is logged as `conversation_mode_changed` and kept in a bounded history (`mode_history`).
"""

from __future__ import annotations

import itertools
import json
import operator
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from pyloto_cli.domain.conversation import ConversationState, Mode, conversation_id
from pyloto_cli.domain.errors import InvalidTask
from pyloto_cli.domain.session import Role, Session, Turn
from pyloto_cli.domain.task import Task, TaskKind
from pyloto_cli.domain.webhook import InboundMessage, MessageType, event_reason
from pyloto_cli.domain.webhook_content import int_of, obj_of, text_of
from pyloto_cli.domain.webhook_model import Message
from pyloto_cli.domain.webhook_split import ECHOES_FIELD, PREFERENCES_FIELD
from pyloto_cli.logs import get_logger, log_event, mask_phone
from pyloto_cli.ports import SessionStore

HISTORY_KEY: Final = "mode_history"  # the last HISTORY_MAX changes, as a JSON list
HISTORY_MAX: Final = 20
STAFF: Final = "staff"  # `Turn.author` of a turn a person wrote
HANDOFF_EVENT: Final = "human_handoff"
DEFAULT_OPTOUT_KEYWORDS: Final = "STOP,PARAR,SAIR,UNSUBSCRIBE"
DEFAULT_OPTIN_KEYWORDS: Final = "START,VOLTAR,RESUME"
_PARSE_ERRORS: Final = (ValueError, TypeError, OverflowError, RecursionError)
_log = get_logger("conversation")


class Reason(StrEnum):
    """Why a conversation changed mode (`conversation_mode_changed`'s `reason`)."""

    USER_OPT_OUT = "user_opt_out"
    USER_OPT_IN = "user_opt_in"
    USER_REQUEST = "user_request"  # the event stage's human_handoff
    STAFF_ECHO = "staff_echo"
    HANDOFF_TIMEOUT = "handoff_timeout"


def normalize_keyword(text: str) -> str:
    """`text` trimmed, without accents (NFKD, combining marks dropped) and case-folded."""
    decomposed = unicodedata.normalize("NFKD", text.strip())
    if decomposed.isascii():  # most texts: no mark to drop
        return decomposed.casefold()
    kept = map(operator.not_, map(unicodedata.combining, decomposed))
    return "".join(itertools.compress(decomposed, kept)).casefold()


def keyword_set(csv: str) -> frozenset[str]:
    """The normalized keywords of a comma-separated setting."""
    return frozenset(k for k in (normalize_keyword(part) for part in csv.split(",")) if k)


@dataclass(frozen=True, slots=True)
class ConversationRules:
    """The knobs of the mode rules (from Settings, at the edge)."""

    optout_keywords: frozenset[str] = field(
        default_factory=lambda: keyword_set(DEFAULT_OPTOUT_KEYWORDS)
    )
    optin_keywords: frozenset[str] = field(
        default_factory=lambda: keyword_set(DEFAULT_OPTIN_KEYWORDS)
    )
    optout_reply: str = (
        "You won't receive more messages from us. Reply START to receive them again."
    )
    optin_reply: str = "Welcome back! You'll receive our messages again. How can we help?"
    handoff_timeout_s: float = 43200.0


@dataclass(frozen=True, slots=True)
class ModeChange:
    """One change of mode, as logged and kept in the history."""

    old: Mode
    new: Mode
    reason: str
    at: float


@dataclass(slots=True)
class ConversationTracker:
    """A conversation's state through one task: what was loaded, what it became, and why."""

    key: str
    before: ConversationState
    state: ConversationState
    history: str | None = None
    changes: list[ModeChange] = field(default_factory=list)

    @classmethod
    def of(cls, key: str, session: Session | None) -> ConversationTracker:
        """The tracker of `key`'s loaded session (None: a new conversation)."""
        meta = session.meta if session is not None else {}
        state = ConversationState.from_meta(meta)
        return cls(key, state, state, meta.get(HISTORY_KEY))

    def change(self, mode: Mode, reason: str, now: float) -> None:
        """Switch to `mode` (nothing when already in it)."""
        if mode is self.state.mode:
            return
        self.changes.append(ModeChange(self.state.mode, mode, reason, now))
        self.state = self.state.with_mode(mode, reason, now)

    def inbound(self, timestamp: int) -> None:
        """The user wrote at `timestamp` (the message's own time, epoch seconds)."""
        last = self.state.last_inbound_at
        if timestamp > 0 and (last is None or timestamp > last):
            self.state = self.state.with_last_inbound(float(timestamp))

    def staff_active(self, now: float) -> None:
        """A person at the business acted on the conversation."""
        self.state = replace(self.state, staff_active_at=now)

    def meta(self) -> dict[str, str]:
        """The meta fields this task changed, with the history when the mode changed."""
        changed = self.state.changed_meta(self.before)
        if self.changes:
            changed[HISTORY_KEY] = _history_json(self.history, self.changes)
        return changed

    def log_changes(self) -> None:
        """Log each change (once it is saved)."""
        for change in self.changes:
            log_event(
                _log,
                "conversation_mode_changed",
                conversation=masked_key(self.key),
                conversation_id=conversation_id(self.key),
                old_mode=change.old.value,
                new_mode=change.new.value,
                reason=change.reason,
            )


def mode_history(meta: dict[str, str]) -> list[dict[str, Any]]:
    """The recorded mode changes of a session's meta, oldest first ([] when unreadable)."""
    try:
        entries = json.loads(meta.get(HISTORY_KEY) or "[]")
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _history_json(raw: str | None, changes: Sequence[ModeChange]) -> str:
    entries = mode_history({HISTORY_KEY: raw or "[]"})
    entries.extend(
        {"at": c.at, "from": c.old.value, "to": c.new.value, "reason": c.reason} for c in changes
    )
    return json.dumps(entries[-HISTORY_MAX:], separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the pipeline does with inbound messages after the mode rules ran."""

    answer: bool  # run the LLM stages and reply
    confirmation: str | None = None  # send this instead (a keyword was acted on)
    event: str = "unknown"  # recorded on the user's turn with the confirmation
    keyword_message: InboundMessage | None = None  # what the confirmation answers


def on_inbound(
    tracker: ConversationTracker,
    rules: ConversationRules,
    msgs: Sequence[InboundMessage],
    now: float,
) -> Verdict:
    """Apply rules 1-3 to a conversation's new messages (oldest first)."""
    for msg in msgs:
        tracker.inbound(msg.timestamp)
    verdict: Verdict | None = None
    for msg in msgs:
        word = _keyword(msg)
        if word in rules.optout_keywords and tracker.state.mode is not Mode.OPTED_OUT:
            tracker.change(Mode.OPTED_OUT, Reason.USER_OPT_OUT, now)
            verdict = Verdict(False, rules.optout_reply, "opt_out", msg)
        elif word in rules.optin_keywords and tracker.state.mode is Mode.OPTED_OUT:
            tracker.change(Mode.ASSISTANT, Reason.USER_OPT_IN, now)
            verdict = Verdict(False, rules.optin_reply, "opt_in", msg)
    if verdict is not None:
        return verdict
    if handoff_expired(tracker.state, rules, now):
        tracker.change(Mode.ASSISTANT, Reason.HANDOFF_TIMEOUT, now)
    return Verdict(answer=tracker.state.mode is Mode.ASSISTANT)


def after_reply(tracker: ConversationTracker, event: str, now: float) -> None:
    """Rule 4: the user asked for a person; the handoff message is what was just sent."""
    if event == HANDOFF_EVENT:
        tracker.change(Mode.HUMAN, Reason.USER_REQUEST, now)


def handoff_expired(state: ConversationState, rules: ConversationRules, now: float) -> bool:
    """A `human` conversation whose last staff activity (or handoff) is older than the timeout."""
    if state.mode is not Mode.HUMAN:
        return False
    times = [t for t in (state.staff_active_at, state.mode_changed_at) if t is not None]
    return not times or now - max(times) >= rules.handoff_timeout_s


def _keyword(msg: InboundMessage) -> str | None:
    if msg.type is not MessageType.TEXT or not msg.text or not (msg.wa_id or msg.user_id):
        return None  # a keyword is a text from someone a confirmation can reach
    return normalize_keyword(msg.text)


# --- echoes and marketing preferences ---------------------------------------------------------


def is_conversation_event(task: Task) -> bool:
    """An echo or a marketing preference keyed to a user's conversation (not a malformed one)."""
    return (
        task.kind is TaskKind.EVENT
        and task.field in (ECHOES_FIELD, PREFERENCES_FIELD)
        and event_reason(task) is None
        and not task.conversation_key.startswith("event:")
    )


@dataclass(frozen=True, slots=True)
class Echo:
    """A message a person sent from the Business app: new, or a revoke / edit of an earlier one."""

    id: str
    raw_type: str
    text: str
    original_id: str | None = None  # what a revoke or an edit changes

    @classmethod
    def of(cls, item: dict[str, Any]) -> Echo:
        """The echo in a task's item; InvalidTask (dead-lettered at once) when it is malformed."""
        wamid, raw_type = text_of(item, "id"), text_of(item, "type")
        if wamid is None or raw_type is None:
            raise InvalidTask("echo without id or type")
        if raw_type in ("revoke", "edit"):
            body = obj_of(item, raw_type)
            original = text_of(body, "original_message_id")
            if original is None:
                raise InvalidTask(f"{raw_type} echo without original_message_id")
            text = "" if raw_type == "revoke" else _words(obj_of(body, "message"))
            return cls(wamid, raw_type, text, original)
        return cls(wamid, raw_type, _words(item))


def _words(item: dict[str, Any]) -> str:
    try:
        message = Message.from_dict(item)
        text = message.text
    except _PARSE_ERRORS as exc:
        raise InvalidTask(f"echo cannot be parsed: {type(exc).__name__}: {exc}") from exc
    return text if text is not None else f"[{message.raw_type or 'unknown'}]"


async def apply_conversation_event(
    task: Task, sessions: SessionStore, history_turns: int, now: float
) -> None:
    """Record an echo (the conversation goes `human`, silently) or a marketing preference."""
    if task.field == ECHOES_FIELD:
        echo = Echo.of(task.item)  # parsed before anything is read or written
        await _record_echo(echo, task.conversation_key, sessions, history_turns, now)
    else:
        await _record_preference(task, sessions, history_turns)


async def _record_echo(
    echo: Echo, key: str, sessions: SessionStore, history_turns: int, now: float
) -> None:
    session = await sessions.load(key)
    tracker = ConversationTracker.of(key, session)
    tracker.staff_active(now)
    tracker.change(Mode.HUMAN, Reason.STAFF_ECHO, now)
    turns = session.turns if session is not None else ()
    if echo.original_id is not None and session is not None:
        target = next((i for i, t in enumerate(turns) if t.message_id == echo.original_id), None)
        if target is not None:
            # Session stores append atomically but do not edit a turn: the rewrite is a save.
            # The queue hands this conversation's tasks out one at a time, so nothing else
            # writes the session meanwhile (the same assumption as the pipeline's load).
            kind = "revoke" if echo.raw_type == "revoke" else turns[target].message_type
            edited = replace(turns[target], text=echo.text, message_type=kind)
            new_turns = (*turns[:target], edited, *turns[target + 1 :])
            meta = {**session.meta, **tracker.meta()}
            await sessions.save(replace(session, turns=new_turns, meta=meta, updated_at=now))
            _echo_logged(echo, key, found=True)
            tracker.log_changes()
            return
    new: tuple[Turn, ...] = ()
    if echo.original_id is None and not any(t.message_id == echo.id for t in turns):
        new = (
            Turn(Role.ASSISTANT, echo.text, echo.id, now, message_type=echo.raw_type, author=STAFF),
        )
    await sessions.append(key, new, history_turns, tracker.meta())
    _echo_logged(echo, key, found=echo.original_id is None)
    tracker.log_changes()


def _echo_logged(echo: Echo, key: str, *, found: bool) -> None:
    fields: dict[str, Any] = {"conversation": masked_key(key), "echo_type": echo.raw_type}
    if echo.original_id is not None:
        fields["original_found"] = found
    log_event(_log, "staff_echo_recorded", message_id=echo.id, **fields)


async def _record_preference(task: Task, sessions: SessionStore, history_turns: int) -> None:
    """A marketing stop / resume: recorded on the conversation; sends nothing, keeps the mode."""
    value = text_of(task.item, "value")
    category = text_of(task.item, "category")
    if value not in ("stop", "resume"):
        log_event(_log, "marketing_preference_ignored", value=value, category=category)
        return
    key = task.conversation_key
    tracker = ConversationTracker.of(key, await sessions.load(key))
    tracker.state = replace(tracker.state, marketing_opt_out=value == "stop")
    await sessions.append(key, (), history_turns, tracker.meta())
    log_event(
        _log,
        "marketing_preference_recorded",
        conversation=masked_key(key),
        marketing_opt_out=value == "stop",
        at=int_of(task.item.get("timestamp")),
    )


def masked_key(key: str) -> str:
    """A conversation key with the user's number masked, for logs."""
    number, _, user = key.partition(":")
    return f"{number}:{mask_phone(user)}"
