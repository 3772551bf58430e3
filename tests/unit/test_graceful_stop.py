"""Stopping a worker: what finishes within the grace is settled; what does not is handed back to
the queue at once (leasable now, its attempt given back), not left to its lease time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pyloto_cli.adapters.queue.memory import MemoryMessageQueue
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import JsonObject, Leased
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.ports import SendResult
from tests.unit.pipeline_support import RecordingSender, message, webhook
from tests.unit.test_pipeline import worker_on
from tests.waiting import wait_until

POLICY = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)


@dataclass
class StuckSender(RecordingSender):
    """Sends answer at once, but the reply to `stuck` never comes back."""

    stuck: str = "wamid.stuck"
    waiting: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        if body.get("biz_opaque_callback_data") == self.stuck:
            self.waiting.set()
            await asyncio.Event().wait()
        return await super().send(phone_number_id, body)


async def test_stop_settles_what_finished_and_releases_what_did_not() -> None:
    sender = StuckSender()
    async with (
        MemoryMessageQueue(POLICY) as queue,
        worker_on(queue, sender, policy=POLICY, poll_interval=0.01, grace_s=0.2) as harness,
    ):
        payload = webhook(
            [message("wamid.stuck", "oi", sender="15550000001"), message("wamid.quick", "oi")]
        )
        await queue.enqueue(split_webhook(payload, 1767225600.0))
        stop = asyncio.Event()
        running = asyncio.create_task(harness.worker.run(stop))
        await wait_until(lambda: sender.waiting.is_set() and bool(sender.sent), what="both sends")
        stop.set()
        await asyncio.wait_for(running, 5.0)  # the grace (0.2 s), then the release
        assert sender.callbacks() == ["wamid.quick"]
        assert (harness.worker.stats.done, harness.worker.stats.released) == (1, 1)
        [again] = await queue.lease(10, 30.0)  # leasable now, the lease time (30 s) not waited
        assert (again.task.task_id, again.attempt) == ("wamid.stuck", 1)
        stats = await queue.stats()
        assert (stats.dead, stats.depth) == (0, 1)


class SlowRenewQueue(MemoryMessageQueue):
    """A queue whose lease renewal takes until `release` is set, noting if it was cancelled."""

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__(policy)
        self.renewing = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def renew(self, lease: Leased, lease_s: float) -> Leased:
        self.renewing.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return await super().renew(lease, lease_s)


@dataclass
class WaitingSender(RecordingSender):
    """Holds each send until the queue is in the middle of a renewal."""

    queue: SlowRenewQueue | None = None

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        assert self.queue is not None
        await self.queue.renewing.wait()
        return await super().send(phone_number_id, body)


async def test_a_renewal_in_flight_when_the_task_ends_is_let_finish_not_cancelled() -> None:
    """A queue call cut off mid-way can leave its client waiting for a reply it no longer
    reads; the renewal is told to stop instead, and the task is settled once it returns."""
    async with SlowRenewQueue(POLICY) as queue:
        sender = WaitingSender(queue=queue)
        async with worker_on(queue, sender, policy=POLICY, poll_interval=0.01, lease_s=0.03) as h:
            await queue.enqueue(split_webhook(webhook([message("wamid.R1", "oi")]), 1767225600.0))
            stop = asyncio.Event()
            running = asyncio.create_task(h.worker.run(stop))
            await wait_until(lambda: bool(sender.sent), what="the reply sent")
            queue.release.set()
            await wait_until(lambda: h.worker.stats.done == 1, what="the task settled")
            stop.set()
            await asyncio.wait_for(running, 5.0)
        assert not queue.cancelled
        assert sender.callbacks() == ["wamid.R1"]
