"""PYLOTO_REDIS_PREFIX: every key pyloto writes to Redis starts with it, so two deployments
can share one Redis without seeing each other's queue, sessions or dedupe markers."""

from __future__ import annotations

import time
from collections.abc import Callable

import pydantic
import pytest
import redis.asyncio as aioredis

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.settings import Settings
from tests.conftest import stamped_fixture


def _redis_settings(make: Callable[..., Settings], url: str, prefix: str) -> Settings:
    return make(
        queue_backend="redis",
        session_store_backend="redis",
        dedupe_backend="redis",
        redis_url=url,
        redis_prefix=prefix,
    )


async def test_every_key_carries_the_prefix_and_deployments_do_not_mix(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    tag = f"t{time.monotonic_ns()}"
    a, b = f"{tag}-a:", f"{tag}-b:"
    client = aioredis.Redis.from_url(redis_url)
    try:
        before = {key async for key in client.scan_iter(count=1000)}
        (task,) = split_webhook(stamped_fixture("webhooks/text.json"), time.time())
        async with open_roles(_redis_settings(make_settings, redis_url, a)) as first:
            worker, intake = await first.worker(), await first.intake()
            await intake.sink.enqueue([task])
            stats = await worker.drain()
            assert stats.done == 1
            assert await intake.sessions.exists(task.conversation_key)
        async with open_roles(_redis_settings(make_settings, redis_url, b)) as second:
            intake = await second.intake()
            assert intake.admin is not None
            assert (await intake.admin.stats()).depth == 0
            assert not await intake.sessions.exists(task.conversation_key)
            await intake.sink.enqueue([task])  # not a duplicate here: b never saw it
            assert (await intake.admin.stats()).depth == 1
        written = {key async for key in client.scan_iter(count=1000)} - before
        assert written
        assert all(key.decode().startswith((a, b)) for key in written), written
        assert any(key.decode().startswith(a) for key in written)
        for key in written:
            await client.delete(key)
    finally:
        await client.aclose()


def test_a_prefix_that_would_break_hash_tags_is_refused(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"redis_prefix|PYLOTO_REDIS_PREFIX"):
        make_settings(redis_prefix="team {a}:")
