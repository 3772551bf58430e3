"""The Pub/Sub adapters against the real emulator: the streaming contract, plus what only Pub/Sub
has (creating the topics and subscriptions, a failed ordered publish, no depth to report).

Each test gets a project of its own on one emulator (`pubsub_project`), so nothing is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import pytest

from pyloto_cli.adapters.queue.pubsub import (
    PubSubConfig,
    PubSubSink,
    PubSubStream,
    open_publisher,
    open_subscriber,
    ordering_key,
    prepare,
)
from pyloto_cli.domain.errors import BackendUnavailable, TransientError
from pyloto_cli.settings import Settings
from pyloto_cli.tools.queue_ops import stats_json
from tests.contract.queue_contract import make_task
from tests.contract.stream_contract import MakePair, PublishRaw, StreamContract, listening

pytestmark = pytest.mark.pubsub


def config_for(host: str, project: str, *, create: bool = True) -> PubSubConfig:
    settings = Settings(
        _env_file=None,
        pubsub_project=project,
        pubsub_emulator_host=host,
        pubsub_create=create,
        pubsub_max_delivery_attempts=5,
        lease_seconds=10,
    )
    return PubSubConfig.from_settings(settings)


@pytest.fixture
def config(pubsub_emulator_host: str, pubsub_project: str) -> PubSubConfig:
    return config_for(pubsub_emulator_host, pubsub_project)


@dataclass
class Pair:
    sink: PubSubSink
    stream: PubSubStream


@pytest.fixture
def make_pair(config: PubSubConfig) -> MakePair:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Pair]:
        await asyncio.to_thread(prepare, config)
        async with PubSubSink(config) as sink, PubSubStream(config) as stream:
            yield Pair(sink, stream)

    return opened


@pytest.fixture
def publish_raw(config: PubSubConfig) -> PublishRaw:
    """Publish bytes pyloto did not write, straight through the client library."""

    async def publish(data: bytes, attributes: dict[str, str]) -> None:
        publisher = open_publisher(config)
        try:
            future = publisher.publish(config.topic_path, data, **attributes)
            await asyncio.wrap_future(future)
        finally:
            await asyncio.to_thread(publisher.stop)

    return publish


class TestPubSubStream(StreamContract):
    """The streaming contract on the emulator."""


def read_subscription(config: PubSubConfig, name: str) -> object:
    subscriber = open_subscriber(config)
    try:
        path = f"projects/{config.project}/subscriptions/{name}"
        return subscriber.get_subscription(subscription=path, timeout=10)
    finally:
        subscriber.close()


async def test_create_makes_an_ordered_subscription_with_a_dead_letter_policy(
    config: PubSubConfig,
) -> None:
    await asyncio.to_thread(prepare, config)
    await asyncio.to_thread(prepare, config)  # a second start finds them: nothing to create
    sub = read_subscription(config, config.subscription)
    assert sub.enable_message_ordering is True  # type: ignore[attr-defined]
    assert sub.ack_deadline_seconds == 10  # type: ignore[attr-defined]
    policy = sub.dead_letter_policy  # type: ignore[attr-defined]
    assert policy.dead_letter_topic == config.dead_letter_topic_path
    assert policy.max_delivery_attempts == 5
    # the dead-letter topic has a subscription: a topic without one drops what it is sent
    dead = read_subscription(config, "whatsapp-inbound-dead-sub")
    assert dead.topic == config.dead_letter_topic_path  # type: ignore[attr-defined]


async def test_without_create_a_missing_topic_is_one_clear_error(
    pubsub_emulator_host: str, pubsub_project: str
) -> None:
    config = config_for(pubsub_emulator_host, pubsub_project, create=False)
    with pytest.raises(BackendUnavailable, match="PYLOTO_PUBSUB_CREATE=true") as caught:
        await asyncio.to_thread(prepare, config)
    assert config.topic_path in str(caught.value)


async def test_a_failed_publish_is_transient_and_its_conversation_publishes_again(
    config: PubSubConfig,
) -> None:
    """An ordered publish that fails pauses its key in the client; the sink resumes it, so the
    conversation's next webhook (Meta's redelivery) is published rather than refused."""
    async with PubSubSink(config) as sink:
        with pytest.raises(TransientError, match="confirmed 0 of 1"):
            await sink.enqueue([make_task("wamid.F1", "conv-f")])  # the topic does not exist
        await asyncio.to_thread(prepare, config)
        result = await sink.enqueue([make_task("wamid.F1", "conv-f")])
        assert result.enqueued == ("wamid.F1",)
    async with PubSubStream(config) as stream, listening(stream) as listener:
        delivery = await listener.next()
        assert delivery.task.task_id == "wamid.F1"
        delivery.ack()


async def test_the_ordering_key_and_attributes_carry_no_phone_number(
    config: PubSubConfig,
) -> None:
    await asyncio.to_thread(prepare, config)
    conversation = "100000000000001:15550001111"
    async with PubSubSink(config) as sink:
        await sink.enqueue([make_task("wamid.K1", conversation)])
    subscriber = open_subscriber(config)
    try:
        pulled = await asyncio.to_thread(
            subscriber.pull, subscription=config.subscription_path, max_messages=1, timeout=10
        )
    finally:
        subscriber.close()
    message = pulled.received_messages[0].message
    assert message.ordering_key == ordering_key(conversation)
    assert dict(message.attributes) == {"task_id": "wamid.K1"}
    assert "15550001111" not in message.ordering_key


async def test_stats_say_pubsub_reports_no_depth(config: PubSubConfig) -> None:
    await asyncio.to_thread(prepare, config)
    async with PubSubSink(config) as sink:
        await sink.enqueue([make_task("wamid.D1")])
        stats = await sink.stats()
    data = stats_json(stats)
    assert data["depth"] is None
    assert data["ready"] is None
    assert "reports no depth" in data["note"]


def test_a_project_is_required(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(queue_backend="pubsub")
    with pytest.raises(BackendUnavailable, match="PUBSUB_PROJECT"):
        PubSubConfig.from_settings(settings)
    fallback = PubSubConfig.from_settings(make_settings(google_cloud_project="proj-1"))
    assert fallback.project == "proj-1"
    assert replace(fallback, project="p").subscription_path == (
        "projects/p/subscriptions/whatsapp-inbound-worker"
    )


async def test_doctor_checks_the_topic_and_subscription_and_never_creates_them(
    pubsub_emulator_host: str, pubsub_project: str
) -> None:
    from pyloto_cli.tools.doctor import Problem, check_pubsub

    settings = Settings(
        _env_file=None,
        pubsub_project=pubsub_project,
        pubsub_emulator_host=pubsub_emulator_host,
        pubsub_create=True,  # doctor ignores it
    )
    with pytest.raises(Problem, match="does not exist"):
        await check_pubsub(settings)
    await asyncio.to_thread(prepare, PubSubConfig.from_settings(settings))
    assert "exist" in await check_pubsub(settings)


async def test_without_a_dead_letter_policy_the_stream_counts_deliveries_itself(
    config: PubSubConfig,
) -> None:
    """Pub/Sub counts `delivery_attempt` only on a subscription with a dead-letter policy."""
    await asyncio.to_thread(prepare, config)
    plain = replace(config, subscription="whatsapp-inbound-plain")
    subscriber = open_subscriber(config)
    try:
        subscriber.create_subscription(
            request={"name": plain.subscription_path, "topic": config.topic_path}, timeout=10
        )
    finally:
        subscriber.close()
    async with PubSubSink(config) as sink:
        await sink.enqueue([make_task("wamid.C1")])
    async with PubSubStream(plain) as stream, listening(stream) as listener:
        first = await listener.next()
        assert first.attempt == 1
        first.nack()
        again = await listener.next()
        assert again.attempt == 2
        again.ack()


async def test_drain_says_a_streaming_queue_has_nothing_to_drain(
    pubsub_emulator_host: str, pubsub_project: str, make_settings: Callable[..., Settings]
) -> None:
    from pyloto_cli.bootstrap import open_roles
    from pyloto_cli.tools import ToolUsageError
    from pyloto_cli.tools.queue_ops import run_drain

    settings = make_settings(
        queue_backend="pubsub",
        pubsub_project=pubsub_project,
        pubsub_emulator_host=pubsub_emulator_host,
        pubsub_create=True,
    )
    with pytest.raises(ToolUsageError, match="streams its tasks"):
        await run_drain(settings, open_roles)
