"""`StreamWorker` over a scripted stream: what it asks of the stream and how it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.domain.errors import TransientError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import Task
from pyloto_cli.domain.webhook_split import split_webhook
from pyloto_cli.pipeline.process import Pipeline, PipelineConfig
from pyloto_cli.pipeline.streaming import StreamWorker
from pyloto_cli.ports import Delivery
from tests.unit.pipeline_support import RecordingSender, message, webhook
from tests.waiting import wait_until


@dataclass
class FakeDelivery:
    task: Task
    attempt: int = 1
    unreadable: str | None = None
    settled: list[str] = field(default_factory=list)

    def ack(self) -> None:
        self.settled.append("ack")

    def nack(self) -> None:
        self.settled.append("nack")


class FakeStream:
    """Delivers the scripted messages once `listen` starts; records what it was asked."""

    def __init__(self, deliveries: list[FakeDelivery], late: tuple[FakeDelivery, ...] = ()) -> None:
        self.deliveries = deliveries
        self.late = list(late)  # handed over while the stream stops, as a real one may
        self.max_outstanding: list[int] = []

    async def listen(
        self,
        deliver: Callable[[Delivery], None],
        max_outstanding: int,
        until: Callable[[], Awaitable[object]],
    ) -> None:
        self.max_outstanding.append(max_outstanding)
        for delivery in self.deliveries:
            deliver(delivery)
        await until()
        for delivery in self.late:
            deliver(delivery)


def a_task(wamid: str) -> Task:
    (task,) = split_webhook(webhook([message(wamid, "hi")]), 0.0)
    return task


def pipeline(sender: RecordingSender) -> Pipeline:
    return Pipeline(
        sessions=MemorySessionStore(),
        deduper=MemoryDeduper(),
        responder=OfflineResponder(),
        sender=sender,
        statuses=MemoryStatusStore(),
        config=PipelineConfig(exclusive_queue=False),
    )


async def test_flow_control_is_the_workers_concurrency_and_done_tasks_are_acked() -> None:
    delivery = FakeDelivery(a_task("wamid.U1"))
    stream = FakeStream([delivery])
    sender = RecordingSender()
    policy = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)
    worker = StreamWorker(
        stream, pipeline(sender), MemoryDeadLetterStore(), policy=policy, concurrency=7
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await wait_until(lambda: delivery.settled == ["ack"], within=5.0, what="acked")
    stop.set()
    await running
    assert stream.max_outstanding == [7]
    assert sender.callbacks() == ["wamid.U1"]


async def test_a_stop_during_a_retry_wait_nacks_the_message_at_once() -> None:
    delivery = FakeDelivery(a_task("wamid.U2"))
    sender = RecordingSender(fail_with=lambda n: TransientError("graph 500", retry_after=600.0))
    policy = RetryPolicy(base_s=1.0, cap_s=1.0, jitter=0.0, max_attempts=3)
    worker = StreamWorker(
        FakeStream([delivery]),
        pipeline(sender),
        MemoryDeadLetterStore(),
        policy=policy,
        grace_s=30.0,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await wait_until(lambda: sender.calls == 1, within=5.0, what="the first attempt")
    stop.set()
    await asyncio.wait_for(running, 5.0)  # not the 600 s retry wait, nor the 30 s grace
    assert delivery.settled == ["nack"]


async def test_a_message_delivered_while_stopping_is_nacked_untouched() -> None:
    late = FakeDelivery(a_task("wamid.U3"))
    sender = RecordingSender()
    policy = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0, max_attempts=3)
    stream = FakeStream([], late=(late,))
    worker = StreamWorker(stream, pipeline(sender), MemoryDeadLetterStore(), policy=policy)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await wait_until(lambda: stream.max_outstanding, within=5.0, what="listening")
    stop.set()
    await asyncio.wait_for(running, 5.0)
    assert late.settled == ["nack"]
    assert sender.calls == 0
