"""Payloads no attempt can process, on the SQLite queue with a running worker.

Each is dead-lettered on its first attempt with a reason that says what is wrong, is never
sent, and the same user's next message is answered right away. The retry delay here is 30 s:
a bad message retried instead would hold its conversation far past the test's deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import DeadLetter, JsonObject
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.pipeline.process import Pipeline
from pyloto_cli.pipeline.worker import Worker
from tests.unit.pipeline_support import PNID, RecordingSender, message, webhook
from tests.waiting import wait_until

POLICY = RetryPolicy(base_s=30.0, cap_s=30.0, jitter=0.0, max_attempts=5)
WITHIN_S = 5.0  # far below one retry delay


@dataclass
class Running:
    queue: SqliteMessageQueue
    sender: RecordingSender

    async def deliver(self, payload: JsonObject) -> None:
        """Through JSON text, as the webhook parses it (an integer of 400 digits included)."""
        await self.queue.enqueue(split_webhook(json.loads(json.dumps(payload)), 1767225600.0))

    async def dead(self, count: int) -> dict[str, DeadLetter]:
        async def enough() -> dict[str, DeadLetter]:
            letters = await self.queue.dead_letters()
            return {d.task.task_id: d for d in letters} if len(letters) >= count else {}

        return await wait_until(enough, within=WITHIN_S, what=f"{count} dead letters")

    async def answered(self, *wamids: str) -> None:
        await wait_until(
            lambda: set(wamids) <= set(self.sender.callbacks()),
            within=WITHIN_S,
            what=f"replies to {wamids}",
        )


@pytest.fixture
def coalesce_window_s() -> float:
    return 0.0


@pytest.fixture
async def running(tmp_path: Path, coalesce_window_s: float) -> AsyncIterator[Running]:
    """A worker running over a SQLite queue, memory stores and the offline responder."""
    sender = RecordingSender()
    async with (
        SqliteMessageQueue(tmp_path / "queue.db", POLICY) as queue,
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
        )
        worker = Worker(
            queue,
            pipeline,
            policy=POLICY,
            concurrency=4,
            poll_interval=0.01,
            coalesce_window_s=coalesce_window_s,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            yield Running(queue, sender)
        finally:
            stop.set()
            await task


def order(wamid: str, price: Any) -> JsonObject:
    item = message(wamid, "", type="order")
    del item["text"]
    product = {"product_retailer_id": "sku-1", "quantity": 1, "item_price": price}
    item["order"] = {"catalog_id": "1", "product_items": [{**product, "currency": "BRL"}]}
    return item


@pytest.mark.parametrize(
    ("bad", "pnid", "said"),
    [
        (order("wamid.BAD", 10**400), PNID, "OverflowError"),
        (message("wamid.BAD\x01", "hi"), PNID, "message id 'wamid.BAD\\x01'"),
        (message("wamid.BAD", "hi"), "../../../v21.0/X", "phone_number_id '../../../v21.0/X'"),
        (message("wamid.BAD", "hi"), "123?x=1#frag", "phone_number_id '123?x=1#frag'"),
    ],
    ids=["order-price-10^400", "control-char-in-wamid", "path-in-phone-number-id", "query"],
)
async def test_an_unprocessable_message_is_dead_at_once_and_the_next_one_answered(
    running: Running, bad: JsonObject, pnid: str, said: str
) -> None:
    """The bad message and the same user's next one (to a valid number: a conversation is
    per business number): the first is dead on attempt 1 with its reason and never sent; the
    second is answered without waiting for a retry."""
    following = message("wamid.NEXT", "still there?")
    if pnid == PNID:
        await running.deliver(webhook([bad, following]))
    else:
        await running.deliver(webhook([bad], pnid=pnid))
        await running.deliver(webhook([following]))

    [(task_id, letter)] = (await running.dead(1)).items()
    await running.answered("wamid.NEXT")

    assert task_id == bad["id"]
    assert letter.attempts == 1
    assert letter.error.startswith("InvalidTask: ")
    assert said in letter.error
    assert running.sender.callbacks() == ["wamid.NEXT"]
    assert {number for number, _ in running.sender.sent} == {PNID}


async def test_a_status_timestamp_out_of_range_is_dead_at_once(running: Running) -> None:
    """2^70 fits no store's integer: dead on attempt 1; a message behind it goes on."""
    status = {"id": "wamid.OUT", "status": "delivered", "timestamp": str(2**70)}
    await running.deliver(webhook(statuses=[status]))
    await running.deliver(webhook([message("wamid.NEXT", "hi")]))

    dead = await running.dead(1)
    await running.answered("wamid.NEXT")

    assert dead["wamid.OUT:delivered"].attempts == 1
    assert "status timestamp" in dead["wamid.OUT:delivered"].error


@pytest.mark.parametrize("coalesce_window_s", [0.01])
async def test_an_unprocessable_message_inside_a_burst_is_dead_alone(running: Running) -> None:
    """Burst coalescing: the bad follower is dead-lettered by itself on attempt 1; the burst's
    other messages get their one reply."""
    burst = [message("wamid.1", "oi"), order("wamid.BAD", 10**400), message("wamid.3", "?")]
    await running.deliver(webhook(burst))

    dead = await running.dead(1)
    await running.answered("wamid.3")

    assert list(dead) == ["wamid.BAD"]
    assert dead["wamid.BAD"].attempts == 1
    assert running.sender.callbacks() == ["wamid.3"]  # one reply, to the burst's last message
