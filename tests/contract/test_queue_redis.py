"""The queue contract on `RedisStreamsQueue` against a real redis-server, plus what only a shared
Redis queue shows: several adapters (as separate worker processes would be) on one queue."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from pyloto_cli.adapters.queue.redis_streams import RedisStreamsQueue
from pyloto_cli.domain.errors import BackendUnavailable, StaleLeaseError
from pyloto_cli.pipeline.retry import RetryPolicy
from tests.contract.queue_contract import (
    LEASE_S,
    ContractQueue,
    DurableQueueContract,
    FakeClock,
    MakeQueue,
    ids,
    make_task,
)

pytestmark = pytest.mark.redis


class TestRedisStreamsQueue(DurableQueueContract):
    """Each `make_queue()` is a new consumer on the same keys; the fake clock decides expiry
    (`reclaim_idle_s=0`: every pending entry is checked against it)."""

    @pytest.fixture
    def make_queue(
        self, policy: RetryPolicy, clock: FakeClock, redis_url: str, redis_prefix: str
    ) -> MakeQueue:
        def make() -> ContractQueue:
            return RedisStreamsQueue(
                redis_url, policy, prefix=redis_prefix, clock=clock, reclaim_idle_s=0
            )

        return make
