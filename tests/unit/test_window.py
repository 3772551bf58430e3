"""The 24-hour window and stale messages: the pure rules, then the pipeline's hooks on memory
adapters (a message too old, a window that closed while the task waited, the template, the
conversation taken over while the LLM ran, Graph's 131047)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.bootstrap import window_rules
from pyloto_cli.domain.conversation import ConversationState, Mode
from pyloto_cli.domain.errors import PermanentError
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.session import Role
from pyloto_cli.domain.webhook import inbound_message, split_webhook
from pyloto_cli.pipeline.process import Outcome, Pipeline, PipelineConfig, TaskResult
from pyloto_cli.pipeline.settlement import Action, settle
from pyloto_cli.pipeline.window import (
    Decision,
    ReengageTemplate,
    Verdict,
    WindowRules,
    check_before_send,
    is_stale,
    with_inbound,
)
from pyloto_cli.ports import ResponderRequest
from pyloto_cli.settings import Settings
from tests.unit.pipeline_support import PNID, RecordingSender, message, webhook

DAY = 86_400.0
T0 = 1_767_225_600.0  # the messages' timestamp
TEMPLATE = ReengageTemplate("hello_again", "pt_BR")
KEY = f"{PNID}:15550001234"


# --- the pure rules ---------------------------------------------------------------------------


def state(**fields: Any) -> ConversationState:
    return ConversationState(last_inbound_at=T0, **fields)


@pytest.mark.parametrize("mode", [Mode.HUMAN, Mode.OPTED_OUT])
def test_a_conversation_out_of_the_assistants_hands_gets_nothing(mode: Mode) -> None:
    """Whatever the window, a human or opted-out conversation is not written to."""
    decision = check_before_send(state(mode=mode), T0 + 60, TEMPLATE)
    assert decision == Decision(Verdict.HOLD, f"conversation is {mode.value}")


def test_an_open_window_sends_and_a_closed_one_expires_without_a_template() -> None:
    """Up to 24 hours after the last inbound message a reply goes; after, it cannot."""
    assert check_before_send(state(), T0 + DAY - 1).verdict is Verdict.SEND
    assert check_before_send(state(), T0 + DAY) == Decision(Verdict.EXPIRED, "reply_expired")
    assert check_before_send(ConversationState(), T0).verdict is Verdict.EXPIRED


def test_a_closed_window_sends_the_template_once_and_never_to_a_marketing_opt_out() -> None:
    """The template goes once per closed window (named by its last inbound time), never to a
    user who stopped marketing messages."""
    late = T0 + DAY + 1
    assert check_before_send(state(), late, TEMPLATE).verdict is Verdict.TEMPLATE
    sent_before = check_before_send(state(reengaged_window=T0), late, TEMPLATE)
    assert sent_before.verdict is Verdict.EXPIRED
    assert "already" in sent_before.reason
    earlier_window = check_before_send(state(reengaged_window=T0 - DAY), late, TEMPLATE)
    assert earlier_window.verdict is Verdict.TEMPLATE
    opted = check_before_send(state(marketing_opt_out=True), late, TEMPLATE)
    assert opted.verdict is Verdict.EXPIRED
    assert "marketing" in opted.reason


def _msg(timestamp: str) -> Any:
    (task,) = split_webhook(webhook([{**message("wamid.S", "oi"), "timestamp": timestamp}]), 0)
    return inbound_message(task)


def test_staleness_is_judged_on_the_messages_own_timestamp() -> None:
    """Older than the limit is stale; at the limit it is not; no timestamp is not stale."""
    msg = _msg(str(int(T0)))
    assert is_stale(msg, T0 + DAY + 1, DAY)
    assert not is_stale(msg, T0 + DAY, DAY)
    assert is_stale(msg, T0 + 61, 60)
    assert not is_stale(_msg("0"), T0 + 10 * DAY, DAY)


def test_the_message_being_answered_opens_the_window() -> None:
    """The state's last inbound time is the newer of the stored one and the message's."""
    msg = _msg(str(int(T0)))
    assert with_inbound(ConversationState(), msg, T0 + 5).last_inbound_at == T0
    newer = ConversationState(last_inbound_at=T0 + 100)
    assert with_inbound(newer, msg, T0 + 200) is newer
    assert with_inbound(ConversationState(), _msg("0"), T0 + 5).last_inbound_at == T0 + 5


def test_an_expired_reply_is_acked_never_retried() -> None:
    """`reply_expired` settles as an ack on its first attempt: no retry reopens the window."""
    result = TaskResult(Outcome.REPLY_EXPIRED, reason="reply_expired")
    assert settle(result, 1, RetryPolicy(max_attempts=5)).action is Action.ACK


# --- through the pipeline ---------------------------------------------------------------------


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class SlowResponder:
    """The offline responder, during which time passes (an LLM that took long, a task that
    waited through an outage) and, optionally, something else happens."""

    clock: Clock
    takes_s: float = 0.0
    meanwhile: Any = None
    inner: OfflineResponder = field(default_factory=OfflineResponder)

    async def respond(self, request: ResponderRequest) -> Reply:
        self.clock.now += self.takes_s
        if self.meanwhile is not None:
            await self.meanwhile()
        return await self.inner.respond(request)


@dataclass
class Rig:
    clock: Clock
    sessions: MemorySessionStore
    deduper: MemoryDeduper
    statuses: MemoryStatusStore
    sender: RecordingSender
    responder: SlowResponder
    pipeline: Pipeline

    async def run(self, wamid: str = "wamid.W", at: float = T0) -> TaskResult:
        body = webhook([{**message(wamid, "oi"), "timestamp": str(int(at))}])
        (task,) = split_webhook(body, self.clock.now)
        return await self.pipeline.process(task)

    async def state(self) -> ConversationState:
        session = await self.sessions.load(KEY)
        assert session is not None
        return ConversationState.from_meta(session.meta)


def rig(now: float, *, template: ReengageTemplate | None = None, stale_s: float = DAY) -> Rig:
    clock = Clock(now)
    sessions, deduper = MemorySessionStore(clock=clock), MemoryDeduper(clock=clock)
    statuses, sender = MemoryStatusStore(), RecordingSender()
    responder = SlowResponder(clock)
    pipeline = Pipeline(
        sessions=sessions,
        deduper=deduper,
        responder=responder,
        sender=sender,
        statuses=statuses,
        config=PipelineConfig(window_rules=WindowRules(stale_s, template)),
        clock=clock,
    )
    return Rig(clock, sessions, deduper, statuses, sender, responder, pipeline)


async def test_a_fresh_message_is_answered_and_opens_the_window() -> None:
    """The rules change nothing for a message of a minute ago; its time is kept."""
    r = rig(T0 + 60)
    result = await r.run()
    assert result.outcome is Outcome.DONE
    assert len(r.sender.sent) == 1
    assert (await r.state()).last_inbound_at == T0


async def test_a_stale_message_is_stored_logged_and_not_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three days old: skipped as `message_stale`, nothing sent, the turn kept, and a
    redelivery is a duplicate."""
    caplog.set_level(logging.INFO, logger="pyloto")
    r = rig(T0 + 3 * DAY)
    result = await r.run()
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "message_stale")
    assert r.sender.sent == []
    session = await r.sessions.load(KEY)
    assert session is not None
    assert [(t.role, t.message_id) for t in session.turns] == [(Role.USER, "wamid.W")]
    assert any(getattr(rec, "msg", "") == "message_stale" for rec in caplog.records)
    assert (await r.run()).outcome is Outcome.SKIPPED
    assert r.sender.sent == []


async def test_the_stale_limit_is_a_setting() -> None:
    """A limit of ten minutes makes a message of an hour ago stale."""
    r = rig(T0 + 3600, stale_s=600)
    assert (await r.run()).reason == "message_stale"
    assert r.sender.sent == []


async def test_a_window_that_closed_while_the_task_ran_expires_the_reply() -> None:
    """23 h old when the task starts, over 24 h when the reply is ready: nothing is sent, the
    task ends `reply_expired`, the failed-deliveries list shows it, the user turn is kept."""
    r = rig(T0 + 23 * 3600)
    r.responder.takes_s = 2 * 3600
    result = await r.run()
    assert (result.outcome, result.reason) == (Outcome.REPLY_EXPIRED, "reply_expired")
    assert r.sender.sent == []
    [failed] = await r.statuses.failed()
    assert (failed.message_id, failed.error_code, failed.error_title) == (
        "wamid.W",
        131047,
        "reply_expired",
    )
    session = await r.sessions.load(KEY)
    assert session is not None
    assert [t.message_id for t in session.turns] == ["wamid.W"]
    assert (await r.run()).outcome is Outcome.SKIPPED  # done: a redelivery is not retried


async def test_a_closed_window_sends_the_template_once_per_window() -> None:
    """With a template configured, it goes instead of the reply, once: a second message of
    the same closed window ends `reply_expired`."""
    r = rig(T0 + 23 * 3600, template=TEMPLATE)
    r.responder.takes_s = 2 * 3600
    result = await r.run("wamid.A")
    assert result.outcome is Outcome.DONE
    [(_, body)] = r.sender.sent
    assert body["type"] == "template"
    assert body["template"] == {"name": "hello_again", "language": {"code": "pt_BR"}}
    assert body["to"] == "+15550001234"
    assert (await r.state()).reengaged_window == T0
    r.clock.now = T0 + 23 * 3600  # another message of that window, as slow to answer
    second = await r.run("wamid.B")
    assert second.outcome is Outcome.REPLY_EXPIRED
    assert len(r.sender.sent) == 1


async def test_no_template_to_a_user_who_stopped_marketing_messages() -> None:
    """A marketing opt-out blocks the template: `reply_expired`."""
    r = rig(T0 + 23 * 3600, template=TEMPLATE)
    await r.sessions.append(KEY, (), 50, {"marketing_opt_out": "true"})
    r.responder.takes_s = 2 * 3600
    assert (await r.run()).outcome is Outcome.REPLY_EXPIRED
    assert r.sender.sent == []


async def test_a_handoff_while_the_llm_ran_stops_the_send() -> None:
    """The mode is read again just before the send: taken over meanwhile, nothing goes."""
    r = rig(T0 + 60)

    async def operator_takes_over() -> None:
        meta = ConversationState().with_mode(Mode.HUMAN, "operator", r.clock.now).to_meta()
        await r.sessions.append(KEY, (), 50, meta)

    r.responder.meanwhile = operator_takes_over
    result = await r.run()
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "conversation is human")
    assert r.sender.sent == []
    assert (await r.state()).mode is Mode.HUMAN


@pytest.mark.parametrize("template", [None, TEMPLATE])
async def test_graphs_131047_takes_the_closed_window_path(
    template: ReengageTemplate | None,
) -> None:
    """Meta says the window has closed after all: the template, or `reply_expired`; never
    a dead letter."""
    r = rig(T0 + 60, template=template)
    outside = PermanentError("outside the window", code=131047)
    r.sender.fail_with = lambda n: outside if n == 1 else None
    result = await r.run()
    if template is None:
        assert result.outcome is Outcome.REPLY_EXPIRED
        assert r.sender.sent == []
    else:
        assert result.outcome is Outcome.DONE
        assert [body["type"] for _, body in r.sender.sent] == ["template"]


async def test_other_permanent_errors_still_dead_letter() -> None:
    """Only 131047 is a closed window: 131026 stays a dead letter."""
    r = rig(T0 + 60, template=TEMPLATE)
    r.sender.fail_with = lambda n: PermanentError("undeliverable", code=131026)
    assert (await r.run()).outcome is Outcome.DEAD
    assert r.sender.sent == []


# --- settings ---------------------------------------------------------------------------------


def test_the_settings_give_the_rules_and_refuse_what_cannot_work(
    make_settings: Callable[..., Settings],
) -> None:
    """The default limit is a day; more than a day is refused (no free-form reply could go
    anyway); a template needs its language and the reverse."""
    assert window_rules(make_settings()) == WindowRules(DAY, None)
    configured = make_settings(
        stale_after_seconds=600, reengage_template="hello_again", reengage_template_lang="pt_BR"
    )
    assert window_rules(configured) == WindowRules(600.0, TEMPLATE)
    with pytest.raises(ValidationError, match="less than or equal to 86400"):
        make_settings(stale_after_seconds=DAY + 1)
    for alone in ({"reengage_template": "hello_again"}, {"reengage_template_lang": "pt_BR"}):
        with pytest.raises(ValidationError, match="go together"):
            make_settings(**alone)
