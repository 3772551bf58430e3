"""Never pay twice, send at most once, long replies in parts: the task memo in the pipeline."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.memos.memory import MemoryTaskMemos
from pyloto_cli.adapters.queue.memory import MemoryMessageQueue
from pyloto_cli.adapters.sender.limiter import SendLimiter
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.domain.errors import CircuitOpen, PermanentError, TransientError
from pyloto_cli.domain.llm import ChatRequest, LLMCallError
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.session import Role
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.domain.webhook import inbound_message, split_webhook
from pyloto_cli.logs import event_fields
from pyloto_cli.pipeline.delivery import Delivery, Memo
from pyloto_cli.pipeline.process import Outcome, Pipeline, PipelineConfig
from pyloto_cli.pipeline.responder import LLMResponder
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import ResponderRequest, SendResult
from pyloto_cli.settings import Settings
from tests.unit.pipeline_support import (
    PNID,
    CountingResponder,
    FlakyDeduper,
    RecordingSender,
    message,
    webhook,
)

KEY = f"{PNID}:15550001234"


class CountingMemos(MemoryTaskMemos):
    """In-memory memos that count the calls the pipeline makes."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = self.puts = self.forgets = 0

    async def get(self, key: str) -> dict[str, str]:
        self.gets += 1
        return await super().get(key)

    async def put(self, key: str, fields: Mapping[str, str], ttl_s: float) -> None:
        self.puts += 1
        await super().put(key, fields, ttl_s)

    async def forget(self, key: str) -> None:
        self.forgets += 1
        await super().forget(key)


POLICY = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)


class FailingMemos(MemoryTaskMemos):
    """A memo store whose disk is full: every write raises."""

    async def put(self, key: str, fields: Mapping[str, str], ttl_s: float) -> None:
        raise OSError(28, "No space left on device")


class FailOnceSessions(MemorySessionStore):
    """The session save after the send fails once (a full disk)."""

    failed = False

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise OSError(28, "No space left on device")
        return await super().append(*args, **kwargs)


@dataclass
class Rig:
    queue: MemoryMessageQueue
    pipeline: Pipeline
    sessions: MemorySessionStore
    worker: Worker

    async def deliver(self, *msgs: JsonObject) -> None:
        await self.queue.enqueue(split_webhook(webhook(list(msgs)), time.time()))


@contextlib.asynccontextmanager
async def rig(
    sender: Any,
    responder: Any,
    *,
    memos: Any = None,
    sessions: MemorySessionStore | None = None,
    deduper: MemoryDeduper | None = None,
    policy: RetryPolicy = POLICY,
) -> AsyncIterator[Rig]:
    store = MemorySessionStore() if sessions is None else sessions
    async with MemoryMessageQueue(policy) as queue:
        pipeline = Pipeline(
            sessions=store,
            deduper=MemoryDeduper() if deduper is None else deduper,
            responder=responder,
            sender=sender,
            statuses=MemoryStatusStore(),
            config=PipelineConfig(max_reply_parts=4),
            memos=memos,
        )
        worker = Worker(queue, pipeline, policy=policy, poll_interval=0.001)
        yield Rig(queue, pipeline, store, worker)


def long_answer() -> str:
    """About 9,000 characters in ten paragraphs."""
    return "\n\n".join((f"Paragraph {n}. " + "All good here. " * 63).strip() for n in range(10))


async def test_a_send_failing_once_costs_one_llm_call_and_one_reply() -> None:
    sender = RecordingSender(fail_with=lambda n: TransientError("graph 503") if n == 1 else None)
    responder = CountingResponder()
    memos = MemoryTaskMemos()
    async with rig(sender, responder, memos=memos) as r:
        await r.deliver(message("wamid.M1", "hi"))
        await r.worker.drain()
    assert responder.calls == 1
    assert sender.callbacks() == ["wamid.M1"]
    assert sender.calls == 2
    assert await memos.get("wamid.M1") == {}  # forgotten once done


async def test_a_failed_session_save_retries_the_save_not_the_send_even_with_no_memo_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The memo store refuses writes and the session save fails after the send: the accepted
    send is held in process memory, so the retry saves the session and sends nothing."""
    caplog.set_level(logging.WARNING, logger="pyloto")
    sender, responder, sessions = RecordingSender(), CountingResponder(), FailOnceSessions()
    deduper = FlakyDeduper()  # the done marker fails too: only the memo knows it was sent
    async with rig(
        sender, responder, memos=FailingMemos(), sessions=sessions, deduper=deduper
    ) as r:
        await r.deliver(message("wamid.S1", "hi"))
        await r.worker.drain()
    assert sender.callbacks() == ["wamid.S1"]
    assert responder.calls == 1
    session = await sessions.load(KEY)
    assert session is not None
    assert [t.role for t in session.turns] == [Role.USER, Role.ASSISTANT]
    failures = [r for r in caplog.records if r.getMessage() == "memo_write_failed"]
    assert failures
    assert "No space left" in event_fields(failures[0])["error"]


async def test_after_a_crash_a_task_recorded_as_sent_is_completed_without_sending() -> None:
    """A durable memo says the reply was accepted (the process died before the session save):
    a new process completes the task (session saved, wamid done) and sends nothing."""
    memos = MemoryTaskMemos()  # stands in for a durable store shared by both processes
    sessions, deduper = MemorySessionStore(), MemoryDeduper()
    first = RecordingSender()
    crashed = Pipeline(
        sessions=FailOnceSessions(),
        deduper=FlakyDeduper(),
        responder=CountingResponder(),
        sender=first,
        statuses=MemoryStatusStore(),
        memos=memos,
    )
    (task,) = split_webhook(webhook([message("wamid.C1", "hi")]), time.time())
    with pytest.raises(OSError, match="No space left"):  # the process dies here
        await crashed.process(task)
    assert first.callbacks() == ["wamid.C1"]

    second, responder = RecordingSender(), CountingResponder()
    restarted = Pipeline(
        sessions=sessions,
        deduper=deduper,
        responder=responder,
        sender=second,
        statuses=MemoryStatusStore(),
        memos=memos,
    )
    result = await restarted.process(task, attempt=2)
    assert result.outcome is Outcome.DONE
    assert result.sent_ids == ("wamid.out.1",)
    assert second.sent == []
    assert responder.calls == 0
    session = await sessions.load(KEY)
    assert session is not None
    assert session.turns[-1].message_id == "wamid.out.1"
    assert await memos.get("wamid.C1") == {}


async def test_a_9000_character_answer_goes_as_three_ordered_parts_recorded_once() -> None:
    sender, text = RecordingSender(), long_answer()
    async with rig(sender, CountingResponder(text=text), memos=MemoryTaskMemos()) as r:
        await r.deliver(message("wamid.L1", "tell me everything"))
        await r.worker.drain()
        session = await r.sessions.load(KEY)
    bodies = [body for _, body in sender.sent]
    assert [b["type"] for b in bodies] == ["text"] * 3
    assert "\n\n".join(b["text"]["body"] for b in bodies) == text
    assert sender.callbacks() == ["wamid.L1"] * 3
    assert session is not None
    replies = [t for t in session.turns if t.role is Role.ASSISTANT]
    assert [(t.text, t.message_id) for t in replies] == [(text, "wamid.out.1")]


async def test_a_retry_after_part_one_was_accepted_sends_only_parts_two_and_three() -> None:
    sender = RecordingSender(fail_with=lambda n: TransientError("graph 503") if n == 2 else None)
    responder = CountingResponder(text=long_answer())
    async with rig(sender, responder, memos=MemoryTaskMemos()) as r:
        await r.deliver(message("wamid.P1", "tell me everything"))
        await r.worker.drain()
    texts = [body["text"]["body"] for _, body in sender.sent]
    assert len(texts) == 3
    assert len(set(texts)) == 3  # part one was not sent again
    assert texts[0].startswith("Paragraph 0.")
    assert responder.calls == 1


async def test_a_task_that_can_never_succeed_is_dead_lettered_at_once_and_the_line_moves_on() -> (
    None
):
    """A message with a phone_number_id that cannot go into a Graph request: dead on its first
    attempt with the reason; the conversation's next message is answered."""
    sender = RecordingSender()
    async with rig(sender, CountingResponder()) as r:
        bad = split_webhook(webhook([message("wamid.X1", "hi")], pnid="not-a-number"), time.time())
        await r.queue.enqueue(bad)
        await r.deliver(message("wamid.X2", "hello"))
        await r.worker.drain()
        dead = await r.queue.dead_letters()
    assert [(d.task.task_id, d.attempts) for d in dead] == [("wamid.X1", 1)]
    assert "InvalidTask" in dead[0].error
    assert "not a Graph id" in dead[0].error
    assert sender.callbacks() == ["wamid.X2"]


@dataclass
class PacedSender(RecordingSender):
    """A sender behind pyloto's own limiter: one send per number per 50 ms, no waiting."""

    limiter: SendLimiter = field(
        default_factory=lambda: SendLimiter(20.0, number_burst=1, max_wait_s=0.0)
    )

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        await self.limiter.acquire(phone_number_id)
        return await super().send(phone_number_id, body)


async def test_waiting_for_pyloto_own_rate_limit_spends_no_attempt() -> None:
    """Four queued messages on one number, paced to one send per 50 ms, with one attempt
    allowed: every wait is a deferral, nothing is dead-lettered, each is answered once."""
    sender = PacedSender()
    responder = CountingResponder()
    one_try = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=1)
    users = [f"1555000100{i}" for i in range(4)]
    async with rig(sender, responder, policy=one_try) as r:
        for i, user in enumerate(users):
            await r.deliver(message(f"wamid.R{i}", "hi", sender=user))
        give_up = time.monotonic() + 5.0
        while len(sender.sent) < 4 and time.monotonic() < give_up:
            await r.worker.drain()  # a deferred task is leasable again after its wait
        assert sorted(sender.callbacks()) == [f"wamid.R{i}" for i in range(4)]
        assert await r.queue.dead_letters() == []
    assert r.worker.stats.deferred >= 3
    assert r.worker.stats.dead == 0
    assert responder.calls == 4  # a deferred retry reuses the reply it computed


async def test_a_transient_llm_failure_sends_nothing_then_the_real_answer() -> None:
    """The LLM is down on the first attempt: no safe reply, no promise; the retry answers."""
    sender = RecordingSender()
    responder = CountingResponder(fail_first=1)
    async with rig(sender, responder) as r:
        await r.deliver(message("wamid.T1", "what are your hours?"))
        await r.worker.drain()
    assert responder.calls == 2
    [(_, body)] = sender.sent
    assert "what are your hours?" in body["text"]["body"]
    assert r.worker.stats.retried == 1


async def test_an_open_llm_breaker_defers_the_task() -> None:
    class Open:
        async def respond(self, request: ResponderRequest) -> Reply:
            raise CircuitOpen("llm_circuit_open", retry_after=12.0)

    pipeline = Pipeline(
        sessions=MemorySessionStore(),
        deduper=MemoryDeduper(),
        responder=Open(),
        sender=RecordingSender(),
        statuses=MemoryStatusStore(),
    )
    (task,) = split_webhook(webhook([message("wamid.B1", "hi")]), time.time())
    result = await pipeline.process(task)
    assert (result.outcome, result.delay_s) == (Outcome.DEFER, 12.0)


async def test_a_permanent_send_failure_keeps_what_was_paid_for() -> None:
    """Dead-lettered on a permanent Graph error; the memo stays (an operator's requeue after a
    fix sends the same reply without a new LLM call) until it expires."""
    memos = MemoryTaskMemos()
    sender = RecordingSender(fail_with=lambda n: PermanentError("bad", code=131026))
    async with rig(sender, CountingResponder(), memos=memos) as r:
        await r.deliver(message("wamid.D1", "hi"))
        await r.worker.drain()
    stored = await memos.get("wamid.D1")
    assert "said" in json.loads(stored["reply"])["text"]


class EmptyAnswerModel:
    """A chat model that answers, but with nothing usable for the reply text."""

    async def complete(self, request: ChatRequest) -> str:
        if request.stage == "response":
            return "   "
        raise LLMCallError("bad_output", service=False)


async def test_only_an_unusable_answer_gets_the_safe_reply_which_promises_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    """The LLM answered but its reply text is unusable: pyloto gives up on it and sends the
    safe reply, whose default asks the user to rephrase and promises no follow-up."""
    settings = make_settings()
    (task,) = split_webhook(webhook([message("wamid.E1", "hi")]), time.time())
    request = ResponderRequest(inbound_message(task), None, 1)
    reply = await LLMResponder(EmptyAnswerModel(), settings).respond(request)
    assert reply.text == settings.safe_reply
    assert "get back" not in settings.safe_reply.lower()


async def test_what_is_held_in_memory_expires_with_the_memo_ttl() -> None:
    """Without a memo store the process holds the memos a failure persisted; one never
    forgotten (a dead letter) goes once the TTL has passed, so memory stays bounded."""
    now = [0.0]
    delivery = Delivery(None, ttl_s=10.0, clock=lambda: now[0])

    async def failed_after_compose(key: str, text: str) -> None:
        memo = Memo()
        await delivery.remember_reply(key, memo, Reply(text=text), [{"type": "text"}])
        await delivery.persist(key, memo)

    await failed_after_compose("wamid.A", "a")
    now[0] = 5.0
    await failed_after_compose("wamid.B", "b")
    assert (await delivery.recall("wamid.A")).reply == Reply(text="a")
    now[0] = 11.0
    await failed_after_compose("wamid.C", "c")
    assert (await delivery.recall("wamid.A")).reply is None
    assert (await delivery.recall("wamid.B")).reply == Reply(text="b")


async def test_a_one_part_reply_sent_and_saved_writes_no_memo() -> None:
    """The session save records the sent wamid itself: a reply that goes and is saved at the
    first try costs the memo store nothing, not even a delete."""
    memos = CountingMemos()
    async with rig(RecordingSender(), CountingResponder(), memos=memos) as r:
        await r.deliver(message("wamid.Q1", "hi"))
        await r.worker.drain()
    assert (memos.puts, memos.forgets) == (0, 0)
    assert memos.gets == 1
