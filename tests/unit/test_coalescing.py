"""Burst coalescing on memory adapters: one user's quick messages answered as one turn."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.adapters.queue.memory import MemoryMessageQueue
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.errors import PermanentError, TransientError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.session import Role, Session
from pyloto_cli.domain.task import JsonObject, Leased, Task
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.pipeline.process import Outcome, Pipeline
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import ClaimResult, Deduper
from pyloto_cli.settings import Settings
from tests.unit.pipeline_support import PNID, FlakyDeduper, RecordingSender, message, webhook

USER = "15550001234"
KEY = f"{PNID}:{USER}"
WINDOW_S = 1.5


class SignallingQueue(MemoryMessageQueue):
    """A memory queue that sets `leased` once it has handed out a task."""

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__(policy)
        self.leased = asyncio.Event()

    async def lease(self, max_items: int, lease_s: float) -> list[Leased]:
        leases = await super().lease(max_items, lease_s)
        if leases:
            self.leased.set()
        return leases


def reaction(wamid: str, to: str) -> JsonObject:
    return {
        "from": USER,
        "id": wamid,
        "timestamp": str(int(time.time())),  # a fresh message: inside its retry horizon
        "type": "reaction",
        "reaction": {"message_id": to, "emoji": "👍"},
    }


def tasks_of(item: JsonObject, received_at: float) -> list[Task]:
    """The tasks of a one-message webhook POST received at `received_at`."""
    return split_webhook(webhook([item]), received_at)


POLICY = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)


@dataclass
class Harness:
    queue: SignallingQueue
    sessions: MemorySessionStore
    deduper: Deduper
    sender: RecordingSender
    pipeline: Pipeline
    t0: float = field(default_factory=lambda: time.time() - 60)

    def worker(self, window_s: float = WINDOW_S, **options: Any) -> Worker:
        return Worker(
            self.queue,
            self.pipeline,
            policy=POLICY,
            poll_interval=0.001,
            coalesce_window_s=window_s,
            **options,
        )

    async def deliver(self, item: JsonObject, offset_s: float) -> None:
        await self.queue.enqueue(tasks_of(item, self.t0 + offset_s))

    async def deliver_texts(self, offsets: Sequence[float]) -> list[str]:
        """One POST per message, `offsets` seconds after t0; returns the wamids."""
        wamids = [f"wamid.C{i}" for i in range(len(offsets))]
        for i, (wamid, offset) in enumerate(zip(wamids, offsets, strict=True)):
            await self.deliver(message(wamid, f"part {i} of my question"), offset)
        return wamids

    async def session(self) -> Session:
        session = await self.sessions.load(KEY)
        assert session is not None
        return session


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
def deduper() -> MemoryDeduper:
    return MemoryDeduper()


@pytest.fixture
async def harness(sender: RecordingSender, deduper: MemoryDeduper) -> AsyncIterator[Harness]:
    async with (
        SignallingQueue(POLICY) as queue,
        MemorySessionStore() as sessions,
        MemoryStatusStore() as statuses,
        OfflineResponder() as responder,
    ):
        pipeline = Pipeline(
            sessions=sessions,
            deduper=deduper,
            responder=responder,
            sender=sender,
            statuses=statuses,
        )
        yield Harness(queue, sessions, deduper, sender, pipeline)


async def test_three_messages_within_the_window_get_one_reply(harness: Harness) -> None:
    """One send quoting all three texts, answering the last wamid, to the same user."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    stats = await harness.worker().drain()
    [(pnid, body)] = harness.sender.sent
    assert (pnid, body["to"], body["biz_opaque_callback_data"]) == (PNID, f"+{USER}", wamids[2])
    reply = body["text"]["body"]
    assert all(f"part {i} of my question" in reply for i in range(3))
    assert (stats.done, stats.retried) == (3, 0)
    assert (await harness.queue.stats()).depth == 0


async def test_the_session_gets_each_user_turn_and_one_reply(harness: Harness) -> None:
    """Three user turns with their own wamids, then one assistant turn for the last."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    await harness.worker().drain()
    session = await harness.session()
    assert [t.role for t in session.turns] == [Role.USER] * 3 + [Role.ASSISTANT]
    assert [t.message_id for t in session.turns[:3]] == wamids
    assert [t.text for t in session.turns[:3]] == [f"part {i} of my question" for i in range(3)]
    assert session.turns[3].reply_to == wamids[2]
    assert session.turns[3].message_id == "wamid.out.1"
    assert session.meta["user_turns"] == "1"


async def test_every_wamid_of_the_burst_is_done(harness: Harness) -> None:
    """A redelivery of the second message is skipped: no second reply."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    await harness.worker().drain()
    for wamid in wamids:
        assert await harness.deduper.claim(wamid, 60) is ClaimResult.DONE
    await harness.deliver(message(wamids[1], "part 1 of my question"), 0.5)
    stats = await harness.worker().drain()
    assert stats.skipped == 1
    assert len(harness.sender.sent) == 1


async def test_a_message_outside_the_window_gets_its_own_reply(harness: Harness) -> None:
    """Two within the window make one turn; one five seconds later is a turn of its own."""
    wamids = await harness.deliver_texts([0.0, 0.5, 5.0])
    await harness.worker().drain()
    assert harness.sender.callbacks() == [wamids[1], wamids[2]]
    assert "part 0" in harness.sender.sent[0][1]["text"]["body"]
    assert "part 2" not in harness.sender.sent[0][1]["text"]["body"]


async def test_coalescing_off_gives_one_reply_per_message(harness: Harness) -> None:
    """Window 0 (the default): three messages, three replies."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    await harness.worker(window_s=0.0).drain()
    assert harness.sender.callbacks() == wamids


async def test_at_most_coalesce_max_messages_make_one_turn(harness: Harness) -> None:
    """coalesce_max=2: the third message of the window gets a reply of its own."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    await harness.worker(coalesce_max=2).drain()
    assert harness.sender.callbacks() == [wamids[1], wamids[2]]


async def test_a_retry_is_not_coalesced(harness: Harness) -> None:
    """A head on its second attempt is answered alone; the messages behind it still can be."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    [head] = await harness.queue.lease(1, 30.0)
    await harness.queue.nack(head, "boom", delay_s=0)
    await harness.worker().drain()
    assert harness.sender.callbacks() == [wamids[0], wamids[2]]


async def test_a_failed_burst_is_retried_whole_with_its_reply_already_computed(
    harness: Harness, sender: RecordingSender
) -> None:
    """The send fails: every message is retried, and (a known transient failure spends no
    attempt) the burst forms again and sends the reply the first attempt computed, once."""
    sender.fail_with = lambda n: TransientError("graph 503") if n == 1 else None
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    stats = await harness.worker().drain()
    assert stats.retried == 3
    assert sender.callbacks() == [wamids[2]]
    [(_, body)] = sender.sent
    assert all(f"part {i} of my question" in body["text"]["body"] for i in (1, 2))
    for wamid in wamids:
        assert await harness.deduper.claim(wamid, 60) is ClaimResult.DONE


async def test_a_permanent_failure_dead_letters_the_whole_burst(
    harness: Harness, sender: RecordingSender
) -> None:
    """Same outcome for all: three dead letters, no session."""
    sender.fail_with = lambda n: PermanentError("outside the 24h window", code=131047)
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    await harness.worker().drain()
    dead = await harness.queue.dead_letters()
    assert sorted(d.task.task_id for d in dead) == wamids
    assert await harness.sessions.load(KEY) is None
    assert await harness.deduper.claim(wamids[1], 60) is ClaimResult.CLAIMED


async def test_an_already_done_message_is_left_out_of_the_burst(harness: Harness) -> None:
    """A wamid the deduper has done is skipped; the others make the turn."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    await harness.deduper.mark_done(wamids[1], 60)
    await harness.worker().drain()
    [(_, body)] = harness.sender.sent
    assert "part 1" not in body["text"]["body"]
    session = await harness.session()
    assert [t.message_id for t in session.turns] == [wamids[0], wamids[2], "wamid.out.1"]


async def test_a_reaction_in_the_burst_is_recorded_not_quoted(harness: Harness) -> None:
    """A reaction among the texts becomes a user turn but not part of the question."""
    await harness.deliver(message("wamid.A", "first"), 0.0)
    await harness.deliver(reaction("wamid.R", "wamid.out.0"), 0.3)
    await harness.deliver(message("wamid.B", "second"), 0.6)
    await harness.worker().drain()
    [(_, body)] = harness.sender.sent
    assert body["biz_opaque_callback_data"] == "wamid.B"
    assert "👍" not in body["text"]["body"]
    session = await harness.session()
    assert [t.message_id for t in session.turns] == ["wamid.A", "wamid.R", "wamid.B", "wamid.out.1"]


@pytest.mark.parametrize("deduper", [FlakyDeduper()])  # the harness is built on it
async def test_a_crash_before_the_done_markers_sends_no_second_reply(harness: Harness) -> None:
    """Saved but not marked done: the retried messages are found in the session, skipped."""
    wamids = await harness.deliver_texts([0.0, 0.5, 1.0])
    stats = await harness.worker().drain()
    assert (stats.retried, stats.skipped) == (3, 3)
    assert harness.sender.callbacks() == [wamids[2]]
    assert len((await harness.session()).turns) == 4


async def test_the_worker_waits_for_the_rest_of_the_window(harness: Harness) -> None:
    """A message arriving while the first one waits out its window joins its turn."""
    harness.t0 = time.time()
    await harness.deliver(message("wamid.W1", "first"), 0.0)
    drain = asyncio.create_task(harness.worker(window_s=0.5).drain())
    await asyncio.wait_for(harness.queue.leased.wait(), timeout=5)
    await harness.deliver(message("wamid.W2", "second"), 0.1)
    await drain
    [(_, body)] = harness.sender.sent
    assert body["biz_opaque_callback_data"] == "wamid.W2"
    assert "first" in body["text"]["body"]
    assert "second" in body["text"]["body"]


async def test_process_batch_of_one_task_is_process(harness: Harness) -> None:
    """A burst of one is the single-task path."""
    [task] = tasks_of(message("wamid.S", "alone"), harness.t0)
    result = await harness.pipeline.process_batch([task])
    assert (result.outcome, harness.sender.callbacks()) == (Outcome.DONE, ["wamid.S"])


async def test_settings_reach_the_worker(make_settings: Callable[..., Settings]) -> None:
    """PYLOTO_COALESCE_WINDOW_SECONDS and PYLOTO_COALESCE_MAX configure the worker; off by
    default."""
    assert make_settings().coalesce_window_seconds == 0.0
    settings = make_settings(
        queue_backend="memory",
        session_store_backend="memory",
        dedupe_backend="memory",
        PYLOTO_COALESCE_WINDOW_SECONDS="1.5",
        PYLOTO_COALESCE_MAX="4",
    )
    async with open_roles(settings) as roles:
        worker = await roles.worker()
        assert (worker.coalesce_window_s, worker.coalesce_max) == (1.5, 4)


async def test_a_burst_deferred_by_another_workers_claim_leaves_that_claim(
    harness: Harness,
) -> None:
    """On a push queue, a live claim elsewhere defers the burst; the other claim stays held."""
    first = tasks_of(message("wamid.C1", "one"), harness.t0)[0]
    second = tasks_of(message("wamid.C2", "two"), harness.t0)[0]
    assert await harness.deduper.claim("wamid.C2", 60) is ClaimResult.CLAIMED  # elsewhere
    pipeline = dataclasses.replace(harness.pipeline.config, exclusive_queue=False)
    harness.pipeline.config = pipeline
    result = await harness.pipeline.process_batch([first, second])
    assert result.outcome is Outcome.DEFER
    assert harness.sender.callbacks() == []
    assert await harness.deduper.claim("wamid.C2", 60) is ClaimResult.IN_PROGRESS
    assert await harness.deduper.claim("wamid.C1", 60) is ClaimResult.CLAIMED  # ours released


async def test_a_burst_ends_before_a_staff_echo_and_keeps_the_order(harness: Harness) -> None:
    """An echo behind a message is not coalesced into its burst: the message is answered, the
    echo hands the conversation to a person, and the message after it gets no reply."""
    await harness.deliver(message("wamid.C0", "first"), 0.0)
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PNID},
        "message_echoes": [
            {"from": "15550000000", "to": USER, "id": "wamid.E0", "timestamp": "1767225600"}
            | {"type": "text", "text": {"body": "Carla here"}}
        ],
    }
    echo = {"field": "smb_message_echoes", "value": value}
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [echo]}]}
    await harness.queue.enqueue(split_webhook(body, harness.t0 + 0.5))
    await harness.deliver(message("wamid.C1", "second"), 1.0)
    stats = await harness.worker().drain()
    assert harness.sender.callbacks() == ["wamid.C0"]
    session = await harness.session()
    assert [t.message_id for t in session.turns] == [
        "wamid.C0",
        "wamid.out.1",
        "wamid.E0",
        "wamid.C1",
    ]
    assert session.meta["mode"] == "human"
    assert (stats.retried, stats.dead) == (0, 0)
    assert (await harness.queue.stats()).depth == 0
