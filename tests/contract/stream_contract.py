"""The streaming-queue contract: what a `TaskSink` + `TaskStream` pair (Pub/Sub) must show.

The lease contract (queue_contract.py) does not apply: a streaming queue has no lease to take,
renew or expire by a fake clock; it hands messages to a connected worker and holds the rest of a
conversation until the one before is settled. `StreamContract` is a base class, not collected by
itself; a backend's module subclasses it and provides `make_pair` (an unopened sink and stream
over one fresh topic and subscription) and `publish_raw` (a message not written by pyloto).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest

from pyloto_cli.ports import Delivery, TaskSink, TaskStream
from tests.contract.queue_contract import make_task

WAIT_S = 20.0


class OpenPair(Protocol):
    """An opened sink and stream over the same queue."""

    sink: TaskSink
    stream: TaskStream


MakePair = Callable[[], contextlib.AbstractAsyncContextManager[Any]]
PublishRaw = Callable[[bytes, dict[str, str]], Awaitable[None]]


class Listener:
    """Runs `stream.listen` in the background and collects what it delivers."""

    def __init__(self, stream: TaskStream, max_outstanding: int = 10) -> None:
        self.received: asyncio.Queue[Delivery] = asyncio.Queue()
        self.by_id: dict[str, Delivery] = {}
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(stream.listen(self._deliver, max_outstanding, self._until))

    def _deliver(self, delivery: Delivery) -> None:
        self.by_id[delivery.task.task_id] = delivery
        self.received.put_nowait(delivery)

    async def _until(self) -> None:
        await self._stop.wait()

    async def next(self) -> Delivery:
        """The next delivery (or fail after WAIT_S)."""
        return await asyncio.wait_for(self.received.get(), WAIT_S)

    async def close(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, WAIT_S)


@contextlib.asynccontextmanager
async def listening(stream: TaskStream, max_outstanding: int = 10) -> AsyncIterator[Listener]:
    listener = Listener(stream, max_outstanding)
    try:
        yield listener
    finally:
        await listener.close()


class StreamContract:
    """Behaviour every streaming queue adapter must show (against its real server)."""

    @pytest.fixture
    async def pair(self, make_pair: MakePair) -> AsyncIterator[Any]:
        async with make_pair() as opened:
            yield opened

    async def test_published_task_arrives_whole_as_attempt_one(self, pair: OpenPair) -> None:
        task = make_task("wamid.S1", text="Olá 😊 \u00e9")
        result = await pair.sink.enqueue([task])
        assert result.enqueued == ("wamid.S1",)
        async with listening(pair.stream) as listener:
            delivery = await listener.next()
            assert delivery.task == task
            assert delivery.attempt == 1
            assert delivery.unreadable is None
            delivery.ack()

    async def test_a_task_repeated_in_one_batch_is_published_once(self, pair: OpenPair) -> None:
        task = make_task("wamid.S2")
        result = await pair.sink.enqueue([task, task])
        assert result.enqueued == ("wamid.S2",)
        assert result.duplicates == ("wamid.S2",)

    async def test_a_conversation_is_delivered_in_order_one_at_a_time(self, pair: OpenPair) -> None:
        await pair.sink.enqueue([make_task(f"wamid.A{i}", "conv-a") for i in range(3)])
        await pair.sink.enqueue([make_task("wamid.B0", "conv-b")])
        async with listening(pair.stream) as listener:
            firsts = {(await listener.next()).task.task_id for _ in range(2)}
            # conv-b's message, published after all of conv-a's, arrived while conv-a's first
            # is unsettled: conv-a's second was held back, not delivered beside it
            assert firsts == {"wamid.A0", "wamid.B0"}
            for settled, expected in (("wamid.A0", "wamid.A1"), ("wamid.A1", "wamid.A2")):
                assert listener.received.empty()
                listener.by_id[settled].ack()
                assert (await listener.next()).task.task_id == expected
            listener.by_id["wamid.A2"].ack()
            listener.by_id["wamid.B0"].ack()

    async def test_a_nacked_task_comes_back_as_the_next_attempt(self, pair: OpenPair) -> None:
        await pair.sink.enqueue([make_task("wamid.N1")])
        async with listening(pair.stream) as listener:
            first = await listener.next()
            first.nack()
            again = await listener.next()
            assert again.task.task_id == "wamid.N1"
            assert again.attempt == 2
            again.ack()

    async def test_a_message_that_is_not_a_task_is_flagged_unreadable(
        self, pair: OpenPair, publish_raw: PublishRaw
    ) -> None:
        await publish_raw(b"{not json", {"task_id": "foreign-1"})
        async with listening(pair.stream) as listener:
            delivery = await listener.next()
            assert delivery.task.task_id == "foreign-1"
            assert delivery.unreadable is not None
            assert "cannot be read" in delivery.unreadable
            delivery.ack()
