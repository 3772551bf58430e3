"""The pipeline end to end on memory adapters: dedupe, order, retries, dead letters, routing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.adapters.queue.memory import MemoryMessageQueue
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.domain.errors import (
    AmbiguousSendError,
    BackendUnavailable,
    PermanentError,
    SendPaused,
    TransientError,
)
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.session import Role, Session, Turn
from pyloto_cli.domain.task import JsonObject, Leased
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.pipeline.process import Outcome, Pipeline, PipelineConfig
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import ClaimResult, SendResult
from tests.unit.pipeline_support import PNID, FlakyDeduper, RecordingSender, message, webhook
from tests.waiting import wait_until


@dataclass
class Harness:
    queue: MemoryMessageQueue
    sessions: MemorySessionStore
    deduper: MemoryDeduper
    statuses: MemoryStatusStore
    sender: RecordingSender
    worker: Worker

    async def deliver(self, payload: JsonObject) -> None:
        await self.queue.enqueue(split_webhook(json.loads(json.dumps(payload)), 1767225600.0))

    async def drain(self) -> None:
        await self.worker.drain()


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@contextlib.asynccontextmanager
async def worker_on(
    queue: MemoryMessageQueue, sender: RecordingSender, **options: Any
) -> AsyncIterator[Harness]:
    """A worker over `queue` with memory stores, the offline responder and `sender`."""
    async with (
        MemorySessionStore() as sessions,
        MemoryDeduper() as deduper,
        MemoryStatusStore() as statuses,
        OfflineResponder() as responder,
    ):
        pipeline = Pipeline(
            sessions=sessions,
            deduper=deduper,
            responder=responder,
            sender=sender,
            statuses=statuses,
            config=PipelineConfig(history_turns=50),
        )
        worker = Worker(queue, pipeline, **options)
        yield Harness(queue, sessions, deduper, statuses, sender, worker)


@pytest.fixture
async def harness(sender: RecordingSender) -> AsyncIterator[Harness]:
    policy = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)
    async with (
        MemoryMessageQueue(policy) as queue,
        worker_on(queue, sender, policy=policy, concurrency=8, poll_interval=0.001) as harness,
    ):
        yield harness


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    """The worker's loop in the background (retries that wait are taken when due)."""
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await loop


def callback_ids(sender: RecordingSender) -> list[str]:
    return [body["biz_opaque_callback_data"] for _, body in sender.sent]


async def test_redelivered_message_gets_one_reply(harness: Harness) -> None:
    """Meta redelivers a wamid after it was answered: the deduper skips it."""
    payload = webhook([message("wamid.R1", "hello")])
    await harness.deliver(payload)
    await harness.drain()
    await harness.deliver(payload)
    await harness.drain()
    assert callback_ids(harness.sender) == ["wamid.R1"]
    assert harness.worker.stats.skipped == 1
    assert (await harness.queue.stats()).depth == 0


async def test_burst_of_twelve_gets_twelve_replies_in_order(harness: Harness) -> None:
    """12 messages from one user: 12 replies in order, and a session of 24 turns in order."""
    wamids = [f"wamid.B{i:02d}" for i in range(12)]
    for i, wamid in enumerate(wamids):  # one POST each, as Meta usually sends them
        await harness.deliver(webhook([message(wamid, f"message number {i}")]))
    await harness.drain()
    assert callback_ids(harness.sender) == wamids
    session = await harness.sessions.load(f"{PNID}:15550001234")
    assert session is not None
    assert len(session.turns) == 24
    assert [t.role for t in session.turns] == [Role.USER, Role.ASSISTANT] * 12
    assert [t.message_id for t in session.turns[::2]] == wamids
    assert [t.reply_to for t in session.turns[1::2]] == wamids
    assert [t.text for t in session.turns[::2]] == [f"message number {i}" for i in range(12)]


async def test_send_failure_is_retried_until_the_horizon_then_dead_lettered_with_reason(
    sender: RecordingSender,
) -> None:
    """A Graph failure that never clears: retried past max attempts (a known transient failure
    spends none) until the retry horizon from the message's timestamp, then a dead letter."""
    sender.fail_with = lambda n: TransientError("graph 503", code=131016)
    stamp = int(time.time())
    horizon = time.time() - stamp + 0.4  # the horizon ends 0.4 s from now
    policy = RetryPolicy(base_s=0.02, cap_s=0.05, jitter=0.0, max_attempts=3, horizon_s=horizon)
    async with (
        MemoryMessageQueue(policy) as queue,
        worker_on(queue, sender, policy=policy, concurrency=8, poll_interval=0.001) as harness,
    ):
        await harness.deliver(webhook([message("wamid.F1", "hi", timestamp=str(stamp))]))
        async with running(harness.worker):
            await wait_until(harness.queue.dead_letters, within=5.0, what="a dead letter")
        dead = await harness.queue.dead_letters()
        assert [d.task.task_id for d in dead] == ["wamid.F1"]
        assert dead[0].attempts == 1
        assert "131016" in dead[0].error
        assert "retry horizon" in dead[0].error
        assert sender.calls > policy.max_attempts
        assert time.time() >= stamp + horizon
        assert await harness.sessions.load(f"{PNID}:15550001234") is None


async def test_transient_failure_then_success_sends_once(
    harness: Harness, sender: RecordingSender
) -> None:
    """One failed send, then success: one reply, nothing dead."""
    sender.fail_with = lambda n: TransientError("timeout") if n == 1 else None
    await harness.deliver(webhook([message("wamid.T1", "hi")]))
    await harness.drain()
    assert callback_ids(sender) == ["wamid.T1"]
    assert await harness.queue.dead_letters() == []


async def test_permanent_failure_is_dead_lettered_at_once(
    harness: Harness, sender: RecordingSender
) -> None:
    """131047 (outside the 24 h window) is never retried."""
    sender.fail_with = lambda n: PermanentError("outside the 24h window", code=131047)
    await harness.deliver(webhook([message("wamid.P1", "hi")]))
    await harness.drain()
    dead = await harness.queue.dead_letters()
    assert len(dead) == 1
    assert dead[0].attempts == 1
    assert "131047" in dead[0].error
    assert sender.calls == 1


async def test_later_messages_wait_for_a_retrying_one(
    harness: Harness, sender: RecordingSender
) -> None:
    """Order holds through a retry: the second message is answered after the first."""
    sender.fail_with = lambda n: TransientError("blip") if n == 1 else None
    await harness.deliver(webhook([message("wamid.O1", "first"), message("wamid.O2", "second")]))
    await harness.drain()
    assert callback_ids(sender) == ["wamid.O1", "wamid.O2"]


async def test_multi_number_webhook_replies_from_the_receiving_number(harness: Harness) -> None:
    """Two business numbers in one POST: each reply leaves from the number that received it."""
    first = webhook([message("wamid.M1", "to number one")], pnid="111")
    second = webhook([message("wamid.M2", "to number two")], pnid="222")
    first["entry"].append(second["entry"][0])
    await harness.deliver(first)
    await harness.drain()
    routed = {body["biz_opaque_callback_data"]: pnid for pnid, body in harness.sender.sent}
    assert routed == {"wamid.M1": "111", "wamid.M2": "222"}


async def test_status_only_webhook_is_recorded_without_reply(harness: Harness) -> None:
    """Delivery receipts are recorded against the sent message; nobody is messaged."""
    status = {
        "id": "wamid.out.77",
        "status": "failed",
        "timestamp": "1767225700",
        "recipient_id": "15550001234",
        "errors": [{"code": 131026, "title": "Message undeliverable"}],
    }
    await harness.deliver(webhook(statuses=[status]))
    await harness.drain()
    assert harness.sender.sent == []
    recorded = await harness.statuses.get("wamid.out.77")
    assert [(s.status, s.error_code) for s in recorded] == [("failed", 131026)]
    assert (await harness.queue.stats()).depth == 0


async def test_bsuid_only_message_is_answered_to_recipient(harness: Harness) -> None:
    """No phone number (username adopted): the reply goes to the BSUID `recipient`."""
    bsuid = "US.13491208655302741918"
    msg = {
        "from": "",
        "from_user_id": bsuid,
        "id": "wamid.U1",
        "timestamp": "1767225600",
        "type": "text",
        "text": {"body": "hello"},
    }
    contacts = [{"profile": {"name": "Sam"}, "wa_id": "", "user_id": bsuid}]
    await harness.deliver(webhook([msg], contacts=contacts))
    await harness.drain()
    [(_, body)] = harness.sender.sent
    assert body["recipient"] == bsuid
    assert "to" not in body
    assert await harness.sessions.exists(f"{PNID}:{bsuid}")


async def test_phone_known_reply_goes_to_phone_with_plus(harness: Harness) -> None:
    """With a phone number known, the reply goes `to` it in E.164 form."""
    await harness.deliver(webhook([message("wamid.PH", "hello")]))
    await harness.drain()
    [(_, body)] = harness.sender.sent
    assert body["to"] == "+15550001234"


async def test_reaction_is_recorded_without_reply(harness: Harness) -> None:
    """Reactions get no reply but are kept in the session."""
    reaction = {
        "from": "15550001234",
        "id": "wamid.RX",
        "timestamp": "1767225600",
        "type": "reaction",
        "reaction": {"message_id": "wamid.out.1", "emoji": "👍"},
    }
    await harness.deliver(webhook([reaction]))
    await harness.drain()
    assert harness.sender.sent == []
    session = await harness.sessions.load(f"{PNID}:15550001234")
    assert session is not None
    assert [t.message_id for t in session.turns] == ["wamid.RX"]


async def test_unknown_message_type_is_kept_and_answered_politely(harness: Harness) -> None:
    """A type pyloto does not know yet neither crashes nor stalls the queue."""
    odd = {
        "from": "15550001234",
        "id": "wamid.X1",
        "timestamp": "1767225600",
        "type": "hologram",
        "hologram": {"beam": 3},
    }
    await harness.deliver(webhook([odd]))
    await harness.drain()
    assert (await harness.queue.stats()).depth == 0
    assert await harness.queue.dead_letters() == []


class FlakySessions(MemorySessionStore):
    """Fails the first append: a crash between the send and the session save."""

    failed = False

    async def append(
        self,
        key: str,
        turns: Sequence[Turn],
        max_turns: int,
        meta: dict[str, str] | None = None,
    ) -> Session:
        if not self.failed:
            self.failed = True
            raise RuntimeError("crash after send, before save")
        return await super().append(key, turns, max_turns, meta)


async def run_with(sessions: MemorySessionStore, deduper: MemoryDeduper) -> RecordingSender:
    sender = RecordingSender()
    policy = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)
    async with MemoryMessageQueue(policy) as queue, OfflineResponder() as responder:
        pipeline = Pipeline(
            sessions=sessions,
            deduper=deduper,
            responder=responder,
            sender=sender,
            statuses=MemoryStatusStore(),
        )
        await queue.enqueue(split_webhook(webhook([message("wamid.K1", "hi")]), 0.0))
        await Worker(queue, pipeline, policy=policy, poll_interval=0.001).drain()
        assert (await queue.stats()).depth == 0
    return sender


async def test_a_session_save_failing_after_the_send_does_not_resend() -> None:
    """The done marker is written beside the failed save: the retry skips, no second reply
    (the exchange is missing from the history instead)."""
    sessions = FlakySessions()
    deduper = MemoryDeduper()
    sender = await run_with(sessions, deduper)
    assert callback_ids(sender) == ["wamid.K1"]
    assert await deduper.claim("wamid.K1", 60) is ClaimResult.DONE
    assert await sessions.load(f"{PNID}:15550001234") is None


async def test_save_and_done_both_failing_after_the_send_do_not_resend() -> None:
    """Neither record written after the send: the task memo holds the accepted send, so the
    retry saves the session and marks the wamid done without sending again; the session
    then holds the exchange once."""
    sessions = FlakySessions()
    sender = await run_with(sessions, FlakyDeduper())
    assert callback_ids(sender) == ["wamid.K1"]
    session = await sessions.load(f"{PNID}:15550001234")
    assert session is not None
    assert len(session.turns) == 2


async def test_crash_between_save_and_done_does_not_resend() -> None:
    """The session already records the sent reply: the retry only marks it done."""
    sessions = MemorySessionStore()
    sender = await run_with(sessions, FlakyDeduper())
    assert callback_ids(sender) == ["wamid.K1"]


class _ClaimWaitsForLoad(MemoryDeduper):
    """A claim that returns only once the session load has started."""

    def __init__(self) -> None:
        super().__init__()
        self.load_started = asyncio.Event()

    async def claim(self, key: str, ttl_s: float) -> ClaimResult:
        await self.load_started.wait()
        return await super().claim(key, ttl_s)


class _LoadSignals(MemorySessionStore):
    def __init__(self, started: asyncio.Event, fail_once: bool = False) -> None:
        super().__init__()
        self.started, self.fail_once = started, fail_once

    async def load(self, key: str) -> Session | None:
        self.started.set()
        if self.fail_once:
            self.fail_once = False
            raise ConnectionError("session store down")
        return await super().load(key)


async def test_session_loads_while_the_claim_is_made() -> None:
    """One round trip for both: a claim that waits for the load would hang if run in turn."""
    deduper = _ClaimWaitsForLoad()
    sender = await asyncio.wait_for(run_with(_LoadSignals(deduper.load_started), deduper), 10)
    assert callback_ids(sender) == ["wamid.K1"]


async def test_a_failing_session_load_releases_the_claim_and_retries() -> None:
    """The retry is not blocked by the first attempt's claim, and is answered once."""
    deduper = MemoryDeduper()
    sessions = _LoadSignals(asyncio.Event(), fail_once=True)
    config = PipelineConfig(exclusive_queue=False)
    sender = RecordingSender()
    pipeline = Pipeline(
        sessions=sessions,
        deduper=deduper,
        responder=OfflineResponder(),
        sender=sender,
        statuses=MemoryStatusStore(),
        config=config,
    )
    task = split_webhook(webhook([message("wamid.L1", "hi")]), 0.0)[0]
    with pytest.raises(ConnectionError):  # the worker makes it a retry
        await pipeline.process(task)
    assert sender.sent == []
    second = await pipeline.process(task, attempt=2)  # a leftover claim would defer it
    assert second.outcome is Outcome.DONE
    assert callback_ids(sender) == ["wamid.L1"]


async def test_claim_left_by_a_killed_worker_does_not_block_the_retry(harness: Harness) -> None:
    """A pull queue re-leases only once the holder stops renewing: its old claim is taken over."""
    await harness.deduper.claim("wamid.Z1", 3600)  # the dead worker's claim, still live
    await harness.deliver(webhook([message("wamid.Z1", "hi")]))
    await harness.drain()
    assert callback_ids(harness.sender) == ["wamid.Z1"]


async def test_ambiguous_send_is_retried_once_then_dead_lettered(
    harness: Harness, sender: RecordingSender
) -> None:
    """A read timeout after the body went out may have delivered: one retry, never two."""
    sender.fail_with = lambda n: AmbiguousSendError("read timeout after send")
    await harness.deliver(webhook([message("wamid.AM", "hi")]))
    await harness.drain()
    assert sender.calls == 2
    dead = await harness.queue.dead_letters()
    assert [d.task.task_id for d in dead] == ["wamid.AM"]
    assert "not retried twice" in dead[0].error


async def test_paused_sending_defers_without_spending_attempts(
    harness: Harness, sender: RecordingSender
) -> None:
    """Token rejected (190): tasks wait for the pause, they do not end in dead letters."""
    sender.fail_with = lambda n: SendPaused("token rejected", retry_after=0.0) if n <= 6 else None
    await harness.deliver(webhook([message("wamid.PA", "hi")]))
    await harness.drain()
    assert callback_ids(sender) == ["wamid.PA"]
    assert sender.calls == 7  # six pauses, more than max_attempts=3, and still answered
    assert await harness.queue.dead_letters() == []
    assert harness.worker.stats.deferred == 6


async def test_one_failing_message_of_three_never_resends_the_other_two(
    harness: Harness, sender: RecordingSender
) -> None:
    """Three messages in one POST, the second keeps failing (of unknown kind, which spends
    attempts): the others are sent exactly once."""
    failing = {"calls": 0}

    def fail_second(n: int) -> Exception | None:
        body = pending_bodies[n - 1] if n - 1 < len(pending_bodies) else None
        if body == "wamid.W2":
            failing["calls"] += 1
            return RuntimeError("a bug in the send path")
        return None

    pending_bodies: list[str] = []
    original_send = sender.send

    async def tracking_send(phone_number_id: str, body: JsonObject) -> SendResult:
        pending_bodies.append(body["biz_opaque_callback_data"])
        return await original_send(phone_number_id, body)

    sender.fail_with = fail_second
    sender.send = tracking_send  # type: ignore[method-assign]
    users = ("15550001111", "15550002222", "15550003333")
    msgs = [message(f"wamid.W{i}", "hi", sender=u) for i, u in enumerate(users, start=1)]
    contacts = [{"profile": {"name": "U"}, "wa_id": u} for u in users]
    await harness.deliver(webhook(msgs, contacts=contacts))
    await harness.drain()
    assert sorted(callback_ids(sender)) == ["wamid.W1", "wamid.W3"]
    assert failing["calls"] == 3  # retried up to max_attempts, alone
    assert [d.task.task_id for d in await harness.queue.dead_letters()] == ["wamid.W2"]


class _WakeDuringLease(MemoryMessageQueue):
    """Finds nothing on the first lease, and an enqueue (with its wake) lands meanwhile."""

    def __init__(self, policy: RetryPolicy, on_first_lease: Callable[[], Any]) -> None:
        super().__init__(policy)
        self._on_first_lease: Callable[[], Any] | None = on_first_lease

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        if self._on_first_lease is not None:
            hook, self._on_first_lease = self._on_first_lease, None
            found = await super().lease(max_items, lease_s)
            await hook()
            return found
        return await super().lease(max_items, lease_s)


async def _wait_for(done: Callable[[], bool], within_s: float) -> None:
    await wait_until(done, within=within_s, what="the worker's sends")


def _sent_at_least(sender: RecordingSender, count: int) -> bool:
    return len(sender.sent) >= count


async def _run_until(worker: Worker, done: Callable[[], bool], within_s: float) -> None:
    async with running(worker):
        await _wait_for(done, within_s)


async def test_a_wake_during_an_empty_lease_is_not_lost(sender: RecordingSender) -> None:
    """An enqueue (and its notify) that lands while a lease finds nothing is taken at once,
    not at the next poll (30 s here)."""
    policy = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)
    payload = webhook([message("wamid.wake", "oi")])
    worker_box: list[Worker] = []

    async def enqueue_and_wake() -> None:
        await queue.enqueue(split_webhook(payload, 1767225600.0))
        worker_box[0].notify()

    async with (
        _WakeDuringLease(policy, enqueue_and_wake) as queue,
        worker_on(queue, sender, policy=policy, poll_interval=30.0, grace_s=1.0) as harness,
    ):
        worker_box.append(harness.worker)
        await _run_until(harness.worker, lambda: bool(sender.sent), within_s=2.0)
    assert callback_ids(sender) == ["wamid.wake"]


class _CountingLeases(MemoryMessageQueue):
    """Counts leases, and those that found nothing."""

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__(policy)
        self.leases = 0
        self.empty = 0
        self.leased = asyncio.Event()

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        found = await super().lease(max_items, lease_s)
        self.leases += 1
        self.empty += not found
        self.leased.set()
        return found


async def test_a_trickle_costs_one_lease_per_message(sender: RecordingSender) -> None:
    """A lease that found fewer tasks than free slots is not followed at once by an empty
    one: each woken message costs one lease (plus the start's empty one)."""
    policy = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)
    async with (
        _CountingLeases(policy) as queue,
        worker_on(queue, sender, policy=policy, poll_interval=30.0, grace_s=1.0) as harness,
        running(harness.worker),
    ):
        await queue.leased.wait()  # the start's lease, on an empty queue
        for n in range(1, 6):
            payload = webhook([message(f"wamid.trickle.{n}", "oi", sender=f"1555000000{n}")])
            await queue.enqueue(split_webhook(payload, 1767225600.0))
            harness.worker.notify()
            await _wait_for(functools.partial(_sent_at_least, sender, n), within_s=2.0)
    assert callback_ids(sender) == [f"wamid.trickle.{n}" for n in range(1, 6)]
    assert (queue.leases, queue.empty) == (6, 1)


class _DownThenUp(MemoryMessageQueue):
    """Its backend is unreachable for the first `failures` leases."""

    def __init__(self, policy: RetryPolicy, failures: int) -> None:
        super().__init__(policy)
        self.failures = failures

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        if self.failures > 0:
            self.failures -= 1
            raise BackendUnavailable("queue: connection refused (127.0.0.1:1)")
        return await super().lease(max_items, lease_s)


async def test_a_failing_lease_backs_off_and_the_worker_goes_on(
    sender: RecordingSender, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)
    async with (
        _DownThenUp(policy, failures=3) as queue,
        worker_on(queue, sender, policy=policy, poll_interval=0.01, grace_s=1.0) as harness,
    ):
        await queue.enqueue(split_webhook(webhook([message("wamid.down", "oi")]), 1767225600.0))
        with caplog.at_level("INFO"):
            await _run_until(harness.worker, lambda: bool(sender.sent), within_s=5.0)
    assert callback_ids(sender) == ["wamid.down"]
    assert queue.failures == 0
    events = [record.getMessage() for record in caplog.records]
    assert events.count("queue_lease_failed") == 3
    assert "queue_lease_recovered" in events
