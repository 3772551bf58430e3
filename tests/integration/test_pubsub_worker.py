"""`StreamWorker` over the Pub/Sub emulator: the pipeline's decisions applied to a held message.

A retry is waited out while the message is held, so a conversation's later messages stay behind
it; a task that cannot succeed is kept in pyloto's dead-letter store and acked, and the admin's
requeue publishes it again.

The emulator does not forward a message to the subscription's dead-letter topic once
`max_delivery_attempts` is reached (checked with the SDK's emulator: it stops delivering and the
dead-letter subscription stays empty), so the backstop itself cannot be observed here: the
subscription's policy is read back in tests/contract/test_queue_pubsub.py, and pyloto's own
dead-lettering, which acts before that limit, is what these tests drive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.adapters.queue.cloud_tasks_admin import CloudTasksAdmin
from pyloto_cli.adapters.queue.pubsub import PubSubConfig, PubSubSink, PubSubStream, prepare
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.domain.errors import PermanentError, TransientError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import DeadLetter
from pyloto_cli.domain.webhook_split import split_webhook
from pyloto_cli.pipeline.process import Pipeline, PipelineConfig
from pyloto_cli.pipeline.streaming import StreamWorker
from pyloto_cli.settings import Settings
from tests.unit.pipeline_support import RecordingSender, message, webhook
from tests.waiting import wait_until

pytestmark = pytest.mark.pubsub

POLICY = RetryPolicy(base_s=0.05, cap_s=0.05, jitter=0.0, max_attempts=3)


@pytest.fixture
async def config(pubsub_emulator_host: str, pubsub_project: str) -> PubSubConfig:
    settings = Settings(
        _env_file=None, pubsub_project=pubsub_project, pubsub_emulator_host=pubsub_emulator_host
    )
    config = PubSubConfig.from_settings(settings.model_copy(update={"pubsub_create": True}))
    await asyncio.to_thread(prepare, config)
    return config


@dataclass
class Running:
    sink: PubSubSink
    sender: RecordingSender
    dead: MemoryDeadLetterStore
    worker: StreamWorker

    async def has_dead_letter(self) -> bool:
        return bool(await self.dead.list())

    async def letter(self, task_id: str) -> DeadLetter:
        found = await self.dead.get(task_id)
        assert found is not None, f"no dead letter {task_id}"
        return found

    async def publish(self, *wamids: str, user: str = "15550001234") -> None:
        messages = [message(w, f"text {w}", sender=user) for w in wamids]
        await self.sink.enqueue(split_webhook(webhook(messages), 0.0))


@contextlib.asynccontextmanager
async def running(
    config: PubSubConfig, fail_with: Callable[[int], Exception | None]
) -> AsyncIterator[Running]:
    sender = RecordingSender(fail_with=fail_with)
    async with (
        PubSubSink(config) as sink,
        PubSubStream(config) as stream,
        MemorySessionStore() as sessions,
        MemoryDeduper() as deduper,
        MemoryDeadLetterStore() as dead,
        OfflineResponder() as responder,
    ):
        pipeline = Pipeline(
            sessions=sessions,
            deduper=deduper,
            responder=responder,
            sender=sender,
            statuses=MemoryStatusStore(),
            config=PipelineConfig(exclusive_queue=False),
        )
        worker = StreamWorker(stream, pipeline, dead, policy=POLICY, concurrency=8, grace_s=5.0)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            yield Running(sink, sender, dead, worker)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20.0)


async def test_a_retried_message_keeps_its_conversations_order(config: PubSubConfig) -> None:
    def first_send_fails(call: int) -> Exception | None:
        return TransientError("graph 500") if call == 1 else None

    async with running(config, first_send_fails) as run:
        await run.publish("wamid.R1", "wamid.R2", "wamid.R3")
        await wait_until(lambda: len(run.sender.sent) == 3, within=20.0, what="three replies")
        assert run.sender.callbacks() == ["wamid.R1", "wamid.R2", "wamid.R3"]
        assert run.sender.calls == 4  # the first was tried twice, on one held delivery


async def test_a_permanent_failure_is_kept_as_a_dead_letter_and_requeued(
    config: PubSubConfig,
) -> None:
    failing = [True]

    def fails_while_set(call: int) -> Exception | None:
        return PermanentError("graph 131026: undeliverable", code=131026) if failing[0] else None

    async with running(config, fails_while_set) as run:
        await run.publish("wamid.P1")
        await wait_until(run.has_dead_letter, within=20.0, what="a dead letter")
        letter = await run.letter("wamid.P1")
        assert "131026" in letter.error
        assert letter.attempts == 1
        admin = CloudTasksAdmin(run.sink, run.dead)
        assert [d.task.task_id for d in await admin.dead_letters()] == ["wamid.P1"]
        failing[0] = False
        assert await admin.requeue_dead(["wamid.P1"]) == 1
        await wait_until(lambda: run.sender.sent, within=20.0, what="the requeued reply")
        assert run.sender.callbacks() == ["wamid.P1"]
        assert await admin.dead_letters() == []


async def test_spent_attempts_end_in_a_dead_letter_not_a_redelivery_loop(
    config: PubSubConfig,
) -> None:
    def always_unknown(call: int) -> Exception | None:
        # a failure of unknown kind: the attempts bound it (a known transient one has a horizon)
        return RuntimeError("unexpected")

    async with running(config, always_unknown) as run:
        await run.publish("wamid.T1")
        await wait_until(run.has_dead_letter, within=20.0, what="a dead letter")
        assert (await run.letter("wamid.T1")).attempts == POLICY.max_attempts
        assert run.sender.calls == POLICY.max_attempts


async def test_a_message_that_is_not_a_task_is_dead_lettered_at_once(
    config: PubSubConfig,
) -> None:
    from pyloto_cli.adapters.queue.pubsub import open_publisher

    async with running(config, lambda call: None) as run:
        publisher = open_publisher(config)
        try:
            await asyncio.wrap_future(publisher.publish(config.topic_path, b"\xff", task_id="x1"))
        finally:
            await asyncio.to_thread(publisher.stop)
        await wait_until(run.has_dead_letter, within=20.0, what="a dead letter")
        assert "cannot be read" in (await run.letter("x1")).error
        assert run.sender.calls == 0
