"""Conversation modes in the pipeline: keywords, handoff, staff echoes, preferences, timeout.

Each test runs tasks through `Pipeline.process` on memory adapters with a fake clock, the
offline responder behind a counter (how many LLM calls) and a sender that records replies and
read receipts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.domain.conversation import ConversationState, Mode, conversation_id
from pyloto_cli.domain.session import Role, Session, Turn
from pyloto_cli.domain.task import JsonObject, Task
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.pipeline.conversation import (
    HISTORY_KEY,
    HISTORY_MAX,
    STAFF,
    ConversationRules,
    ConversationTracker,
    keyword_set,
    mode_history,
    normalize_keyword,
)
from pyloto_cli.pipeline.process import Outcome, Pipeline, PipelineConfig, TaskResult
from tests.unit.pipeline_support import PNID, CountingResponder, RecordingSender, message, webhook

USER = "15550001234"
KEY = f"{PNID}:{USER}"
T0 = 1_767_225_600.0
HANDOFF = "A person will answer here."
TIMEOUT = 3600.0


@dataclass
class ReadRecordingSender(RecordingSender):
    """Records read receipts too."""

    reads: list[str] = field(default_factory=list)

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        self.reads.append(message_id)


@dataclass
class Rig:
    pipeline: Pipeline
    sessions: MemorySessionStore
    sender: ReadRecordingSender
    responder: CountingResponder
    now: list[float]
    seq: int = 0

    async def run(self, payload: JsonObject) -> list[TaskResult]:
        tasks = split_webhook(json.loads(json.dumps(payload)), self.now[0])
        return [await self.pipeline.process(task) for task in tasks]

    async def say(self, text: str, *, at: float | None = None, wamid: str = "") -> TaskResult:
        self.seq += 1
        stamp = str(int(at if at is not None else self.now[0]))
        msg = message(wamid or f"wamid.M{self.seq}", text, timestamp=stamp)
        (result,) = await self.run(webhook([msg]))
        return result

    async def session(self, key: str = KEY) -> Session:
        session = await self.sessions.load(key)
        assert session is not None
        return session

    async def state(self, key: str = KEY) -> ConversationState:
        return ConversationState.from_meta((await self.session(key)).meta)

    def texts(self) -> list[str]:
        return [
            body["text"]["body"] if body["type"] == "text" else body["interactive"]["body"]["text"]
            for _, body in self.sender.sent
        ]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    now = [T0]
    rules = ConversationRules(handoff_timeout_s=TIMEOUT)
    async with (
        MemorySessionStore() as sessions,
        MemoryDeduper() as deduper,
        MemoryStatusStore() as statuses,
    ):
        sender = ReadRecordingSender()
        responder = CountingResponder(inner=OfflineResponder({"human_handoff": HANDOFF}))
        pipeline = Pipeline(
            sessions=sessions,
            deduper=deduper,
            responder=responder,
            sender=sender,
            statuses=statuses,
            config=PipelineConfig(mark_read=True, conversation=rules),
            clock=lambda: now[0],
        )
        yield Rig(pipeline, sessions, sender, responder, now)


def echo_payload(item: JsonObject, *, pnid: str = PNID) -> JsonObject:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid},
        "message_echoes": [item],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "smb_message_echoes", "value": value}]}],
    }


def echo(
    wamid: str, text: str | None = "Carla here, I'll check your order", **extra: Any
) -> JsonObject:
    item: JsonObject = {
        "from": "15550000000",
        "to": USER,
        "id": wamid,
        "timestamp": str(int(T0)),
        "type": "text",
        "text": {"body": text},
    }
    item.update(extra)
    return item


def preference(value: str) -> JsonObject:
    item = {"wa_id": USER, "category": "marketing_messages", "value": value, "timestamp": T0}
    change = {
        "field": "user_preferences",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PNID},
            "user_preferences": [item],
        },
    }
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}


# --- keywords ---------------------------------------------------------------------------------


async def test_stop_confirms_once_then_silence_until_start(rig: Rig) -> None:
    """STOP: one confirmation and opted_out; later messages are stored, deduped, unanswered;
    START: one confirmation and assistant; the next message is answered by the LLM again."""
    rules = rig.pipeline.config.conversation
    await rig.say("STOP")
    assert rig.texts() == [rules.optout_reply]
    assert (await rig.state()).mode is Mode.OPTED_OUT
    assert rig.responder.calls == 0

    quiet = await rig.say("are you there?", wamid="wamid.QUIET")
    assert quiet.outcome is Outcome.DONE
    assert rig.texts() == [rules.optout_reply]
    assert rig.responder.calls == 0
    assert rig.sender.reads == []  # no read receipt for a conversation pyloto does not answer
    assert (await rig.session()).turns[-1].message_id == "wamid.QUIET"
    again = await rig.say("are you there?", wamid="wamid.QUIET")  # Meta redelivers it
    assert again.outcome is Outcome.SKIPPED

    await rig.say("start")
    assert rig.texts() == [rules.optout_reply, rules.optin_reply]
    assert (await rig.state()).mode is Mode.ASSISTANT
    await rig.say("hello again")
    assert rig.responder.calls == 1
    assert rig.texts()[-1].startswith('You said: "hello again"')


@pytest.mark.parametrize("text", ["STOP", "  stop ", "Stóp", "pArAr", "SAÍR", "Unsubscribe\n"])
async def test_opt_out_keywords_ignore_case_accents_and_spaces(rig: Rig, text: str) -> None:
    await rig.say(text)
    assert (await rig.state()).mode is Mode.OPTED_OUT
    assert len(rig.sender.sent) == 1


async def test_a_keyword_inside_a_sentence_is_an_ordinary_message(rig: Rig) -> None:
    """Only an exact keyword opts out; the LLM's opt_out guess is recorded on the turn."""
    await rig.say("please stop sending me promos")
    assert (await rig.state()).mode is Mode.ASSISTANT
    assert rig.responder.calls == 1
    user_turn = (await rig.session()).turns[0]
    assert user_turn.event == "opt_out"
    assert rig.texts()[0].startswith("You said:")


async def test_opt_in_keyword_is_ordinary_text_unless_opted_out(rig: Rig) -> None:
    await rig.say("start")
    assert rig.responder.calls == 1
    assert rig.texts()[0].startswith('You said: "start"')
    assert HISTORY_KEY not in (await rig.session()).meta


async def test_stop_while_opted_out_sends_nothing_more(rig: Rig) -> None:
    await rig.say("STOP")
    await rig.say("STOP")
    assert len(rig.sender.sent) == 1
    assert [e["reason"] for e in mode_history((await rig.session()).meta)] == ["user_opt_out"]


async def test_custom_keywords_and_replies(rig: Rig) -> None:
    rig.pipeline.config = PipelineConfig(
        conversation=ConversationRules(
            optout_keywords=keyword_set("BAIXA, cancelar "),
            optin_keywords=keyword_set("alta"),
            optout_reply="Hecho.",
            optin_reply="De nuevo.",
        )
    )
    await rig.say("STOP")  # not a keyword any more
    assert (await rig.state()).mode is Mode.ASSISTANT
    await rig.say("Cancelar")
    await rig.say("ALTA")
    assert rig.texts()[1:] == ["Hecho.", "De nuevo."]


def test_normalize_keyword() -> None:
    assert normalize_keyword("  Sáír\t") == "sair"
    assert normalize_keyword("\uff33\uff34\uff2f\uff30") == "stop"  # full-width STOP (NFKD)
    assert keyword_set("STOP, ,parar,") == frozenset({"stop", "parar"})


# --- the user asks for a person ---------------------------------------------------------------


async def test_handoff_sends_one_message_then_silence(rig: Rig) -> None:
    await rig.say("I want to talk to a human agent")
    assert rig.texts() == [HANDOFF]
    state = await rig.state()
    assert (state.mode, state.mode_reason) == (Mode.HUMAN, "user_request")
    reads = list(rig.sender.reads)
    calls = rig.responder.calls
    await rig.say("hello? anyone?")
    assert rig.texts() == [HANDOFF]
    assert rig.responder.calls == calls
    assert rig.sender.reads == reads
    session = await rig.session()
    assert [t.role for t in session.turns] == [Role.USER, Role.ASSISTANT, Role.USER]


async def test_every_mode_change_is_logged_with_the_masked_conversation(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await rig.say("I want a human")
    changes = [r for r in caplog.records if r.getMessage() == "conversation_mode_changed"]
    assert len(changes) == 1
    fields = changes[0].fields  # type: ignore[attr-defined]
    assert fields["old_mode"] == "assistant"
    assert fields["new_mode"] == "human"
    assert fields["reason"] == "user_request"
    assert fields["conversation"] == f"{PNID}:***1234"
    assert fields["conversation_id"] == conversation_id(KEY)
    assert USER not in json.dumps(fields)


# --- time -------------------------------------------------------------------------------------


async def test_handoff_times_out_and_the_next_message_is_answered(rig: Rig) -> None:
    await rig.say("human please")
    rig.now[0] += TIMEOUT - 1
    await rig.say("still waiting")
    assert len(rig.sender.sent) == 1
    rig.now[0] += 1
    await rig.say("hello?")
    assert len(rig.sender.sent) == 2
    assert rig.texts()[-1].startswith('You said: "hello?"')
    state = await rig.state()
    assert (state.mode, state.mode_reason) == (Mode.ASSISTANT, "handoff_timeout")


async def test_staff_activity_restarts_the_timeout(rig: Rig) -> None:
    await rig.say("human please")
    rig.now[0] += TIMEOUT - 10
    await rig.run(echo_payload(echo("wamid.E1")))
    rig.now[0] += 20  # past the handoff's timeout, not the echo's
    await rig.say("thanks")
    assert len(rig.sender.sent) == 1
    assert (await rig.state()).mode is Mode.HUMAN


# --- staff echoes -----------------------------------------------------------------------------


async def test_an_echo_creates_the_session_and_hands_off_silently(rig: Rig) -> None:
    (result,) = await rig.run(echo_payload(echo("wamid.E1", "Carla here")))
    assert result.outcome is Outcome.DONE
    assert rig.sender.sent == []
    session = await rig.session()
    (turn,) = session.turns
    assert (turn.role, turn.text, turn.message_id, turn.author) == (
        Role.ASSISTANT,
        "Carla here",
        "wamid.E1",
        STAFF,
    )
    state = ConversationState.from_meta(session.meta)
    assert (state.mode, state.mode_reason, state.staff_active_at) == (Mode.HUMAN, "staff_echo", T0)
    await rig.say("thank you Carla")
    assert rig.sender.sent == []
    assert rig.responder.calls == 0


async def test_an_echo_is_recorded_once_when_redelivered(rig: Rig) -> None:
    await rig.run(echo_payload(echo("wamid.E1")))
    await rig.run(echo_payload(echo("wamid.E1")))
    assert [t.message_id for t in (await rig.session()).turns] == ["wamid.E1"]


async def test_edit_and_revoke_echoes_update_the_staff_turn(rig: Rig) -> None:
    await rig.say("hi")
    await rig.run(echo_payload(echo("wamid.E1", "ships tomorrow")))
    edit = {
        "original_message_id": "wamid.E1",
        "message": {"type": "text", "text": {"body": "ships Monday"}},
    }
    await rig.run(echo_payload(echo("wamid.E2", type="edit", edit=edit, text=None)))
    turns = (await rig.session()).turns
    assert [(t.text, t.message_type) for t in turns if t.author == STAFF] == [
        ("ships Monday", "text")
    ]
    assert len(turns) == 3  # user, reply, staff: the edit added no turn
    revoke = {"original_message_id": "wamid.E1"}
    await rig.run(echo_payload(echo("wamid.E3", type="revoke", revoke=revoke, text=None)))
    (staff,) = [t for t in (await rig.session()).turns if t.author == STAFF]
    assert (staff.text, staff.message_type, staff.message_id) == ("", "revoke", "wamid.E1")


async def test_an_echo_with_a_bsuid_joins_the_users_bsuid_conversation(rig: Rig) -> None:
    item = echo("wamid.E1")
    del item["to"]
    item["to_user_id"] = "BR.2000000000000000003"
    await rig.run(echo_payload(item))
    state = await rig.state(f"{PNID}:BR.2000000000000000003")
    assert state.mode is Mode.HUMAN


async def test_a_malformed_echo_is_dead_lettered_and_changes_nothing(rig: Rig) -> None:
    """A revoke without the message it revokes can never be applied: dead on attempt 1."""
    await rig.say("hi")
    before = await rig.session()
    (result,) = await rig.run(echo_payload(echo("wamid.E9", type="revoke", revoke={}, text=None)))
    assert result.outcome is Outcome.DEAD
    assert "revoke echo without original_message_id" in (result.reason or "")
    assert await rig.session() == before


async def test_an_echo_without_a_recipient_is_kept_as_an_event_and_changes_nothing(
    rig: Rig,
) -> None:
    item = echo("wamid.E1")
    del item["to"]
    (result,) = await rig.run(echo_payload(item))
    assert result.outcome is Outcome.DONE
    assert await rig.sessions.load(KEY) is None
    assert rig.sender.sent == []


# --- marketing preferences --------------------------------------------------------------------


async def test_marketing_preferences_are_recorded_without_sending_or_changing_the_mode(
    rig: Rig,
) -> None:
    await rig.say("hi")
    await rig.run(preference("stop"))
    state = await rig.state()
    assert (state.marketing_opt_out, state.mode) == (True, Mode.ASSISTANT)
    assert len(rig.sender.sent) == 1
    await rig.run(preference("resume"))
    assert (await rig.state()).marketing_opt_out is False
    await rig.run(preference("unexpected"))
    assert (await rig.state()).marketing_opt_out is False


# --- order of rules and bookkeeping -----------------------------------------------------------


async def test_a_keyword_applies_in_human_mode_and_before_the_timeout(rig: Rig) -> None:
    """Rule 2 (keywords) comes before rule 3 (timeout, then silence in human mode)."""
    await rig.say("human please")
    rig.now[0] += TIMEOUT * 2
    await rig.say("STOP")
    state = await rig.state()
    assert (state.mode, state.mode_reason) == (Mode.OPTED_OUT, "user_opt_out")
    assert [e["reason"] for e in mode_history((await rig.session()).meta)] == [
        "user_request",
        "user_opt_out",
    ]
    assert rig.texts()[-1] == rig.pipeline.config.conversation.optout_reply


async def test_a_keyword_applies_whatever_the_messages_age(rig: Rig) -> None:
    await rig.say("STOP", at=T0 - 3 * 86400)
    assert (await rig.state()).mode is Mode.OPTED_OUT


async def test_last_inbound_at_is_the_messages_own_time(rig: Rig) -> None:
    await rig.say("hi", at=T0 - 120)
    assert (await rig.state()).last_inbound_at == T0 - 120
    await rig.say("older, delivered late", at=T0 - 600)
    assert (await rig.state()).last_inbound_at == T0 - 120
    await rig.run(echo_payload(echo("wamid.E1")))
    await rig.say("in human mode", at=T0 - 60)
    assert (await rig.state()).last_inbound_at == T0 - 60


async def test_the_mode_history_keeps_the_last_changes(rig: Rig) -> None:
    for _ in range(HISTORY_MAX):
        await rig.say("STOP")
        await rig.say("START")
    history = mode_history((await rig.session()).meta)
    assert len(history) == HISTORY_MAX
    assert history[-1]["reason"] == "user_opt_in"
    assert history[-1]["from"] == "opted_out"
    assert history[-1]["to"] == "assistant"


def test_only_changed_fields_are_written() -> None:
    """A task writes what it changed: an operator's change made meanwhile is not overwritten."""
    meta = ConversationState(mode=Mode.HUMAN, mode_reason="operator").to_meta()
    tracker = ConversationTracker.of(KEY, Session(key=KEY, meta=meta))
    tracker.inbound(1_767_225_700)
    assert tracker.meta() == {"last_inbound_at": repr(1_767_225_700.0)}


async def test_unreadable_mode_history_starts_again(rig: Rig) -> None:
    await rig.sessions.save(Session(key=KEY, meta={HISTORY_KEY: "not json"}))
    await rig.say("STOP")
    assert [e["to"] for e in mode_history((await rig.session()).meta)] == ["opted_out"]


def test_tasks_of_echoes_are_ordered_with_the_users_messages() -> None:
    """The echo's task shares the user's conversation key, so the queue orders them."""
    msg_task: Task = split_webhook(webhook([message("wamid.M1", "hi")]), T0)[0]
    echo_task: Task = split_webhook(echo_payload(echo("wamid.E1")), T0)[0]
    assert echo_task.conversation_key == msg_task.conversation_key == KEY
    assert echo_task.task_id == "echo:wamid.E1"


def test_an_echo_to_a_plus_number_joins_the_same_conversation() -> None:
    (task,) = split_webhook(echo_payload(echo("wamid.E1", to=f"+{USER}")), T0)
    assert task.conversation_key == KEY


async def test_echoes_that_are_not_a_list_stay_one_event_and_change_nothing(rig: Rig) -> None:
    payload = echo_payload(echo("wamid.E1"))
    payload["entry"][0]["changes"][0]["value"]["message_echoes"] = {"id": "wamid.E1"}
    (task,) = split_webhook(payload, T0)
    assert task.conversation_key.startswith("event:evt:")
    assert task.value["_pyloto_reason"] == "message_echoes_not_a_list_of_objects"
    (result,) = await rig.run(payload)
    assert result.outcome is Outcome.DONE
    assert await rig.sessions.load(KEY) is None


def test_turns_stored_before_the_author_field_still_load() -> None:
    """`author` is optional: old stored turns load, and a turn without it is stored as before."""
    old = {"role": "assistant", "text": "hi", "message_id": "wamid.X", "at": 1.0}
    turn = Turn.from_dict(old)
    assert turn.author is None
    assert turn.to_dict() == old
    staff = Turn.from_dict({**old, "author": STAFF})
    assert staff.to_dict() == {**old, "author": STAFF}


async def test_in_a_burst_the_confirmation_answers_the_keyword(rig: Rig) -> None:
    """A burst of a question then STOP: no LLM reply, one confirmation answering STOP, every
    message stored."""
    payload = webhook([message("wamid.B1", "a question"), message("wamid.B2", "stop")])
    tasks = split_webhook(payload, T0)
    result = await rig.pipeline.process_batch(tasks)
    assert result.outcome is Outcome.DONE
    assert rig.responder.calls == 0
    [(_, body)] = rig.sender.sent
    assert body["biz_opaque_callback_data"] == "wamid.B2"
    turns = (await rig.session()).turns
    assert [t.message_id for t in turns[:2]] == ["wamid.B1", "wamid.B2"]
    assert turns[1].event == "opt_out"
    assert (await rig.state()).mode is Mode.OPTED_OUT
