"""The queue contract on `RedisStreamsQueue` against a real redis-server, plus what only a shared
Redis queue shows: several adapters (as separate worker processes would be) on one queue."""

from __future__ import annotations

import asyncio
import sys
import time
from asyncio.subprocess import PIPE

import pytest
import redis.asyncio as aioredis

from pyloto_cli.adapters.queue.redis_streams import RedisStreamsQueue
from pyloto_cli.adapters.redis_db import text
from pyloto_cli.domain.errors import BackendUnavailable, StaleLeaseError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import FailureKind
from tests.contract.queue_contract import (
    LEASE_S,
    ContractQueue,
    DurableQueueContract,
    FakeClock,
    MakeQueue,
    MakeQueueOfGoneOwner,
    Spoil,
    ids,
    make_task,
)
from tests.waiting import wait_until

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

    @pytest.fixture
    def make_queue_of_gone_owner(self, make_queue: MakeQueue) -> MakeQueueOfGoneOwner:
        """Any consumer: closing it ends its heartbeat, as a kill does once the TTL lapses."""
        return make_queue

    @pytest.fixture
    def spoil(self, redis_url: str, redis_prefix: str) -> Spoil:
        async def overwrite(queue: ContractQueue, task_id: str) -> None:
            client = aioredis.Redis.from_url(redis_url)
            try:
                await client.hset(f"{redis_prefix}q:t:{task_id}", "payload", b"\xff{not a task")
            finally:
                await client.aclose()

        return overwrite


POLICY = RetryPolicy(base_s=10.0, cap_s=100.0, jitter=0.0, max_attempts=3)


async def test_workers_on_one_queue_take_each_task_once_in_conversation_order(
    redis_url: str, redis_prefix: str
) -> None:
    """Three consumers on their own connections: every task leased exactly once, never two
    leases of one conversation at a time, each conversation in enqueue order."""
    tasks = [make_task(f"m{i}", f"c{i % 5}") for i in range(40)]
    queues = [RedisStreamsQueue(redis_url, POLICY, prefix=redis_prefix) for _ in range(3)]
    busy: set[str] = set()
    done: list[str] = []

    async def worker(queue: RedisStreamsQueue) -> None:
        while len(done) < len(tasks):
            for lease in await queue.lease(4, LEASE_S):
                conversation = lease.task.conversation_key
                assert conversation not in busy
                busy.add(conversation)
                await asyncio.sleep(0)  # let the other workers lease meanwhile
                busy.discard(conversation)
                done.append(lease.task.task_id)
                await queue.ack(lease)
            await asyncio.sleep(0.001)  # an idle worker's poll pace (the whole run has a deadline)

    for queue in queues:
        await queue.__aenter__()
    try:
        await queues[0].enqueue(tasks)
        await asyncio.wait_for(asyncio.gather(*(worker(q) for q in queues)), timeout=20)
        stats = await queues[0].stats()
    finally:
        for queue in queues:
            await queue.__aexit__(None, None, None)
    assert sorted(done) == sorted(t.task_id for t in tasks)
    for c in range(5):
        mine = [t for t in done if int(t[1:]) % 5 == c]
        assert mine == [f"m{i}" for i in range(c, 40, 5)]
    assert stats.depth == 0


async def test_a_stalled_consumers_lease_is_reclaimed_after_the_lease_time(
    redis_url: str, redis_prefix: str
) -> None:
    """Real time, default min-idle: a consumer that is alive (its heartbeat goes on) but stops
    renewing a lease loses the task to XAUTOCLAIM once the lease has passed; its late ack is
    refused."""
    async with (
        RedisStreamsQueue(redis_url, POLICY, prefix=redis_prefix) as stalled,
        RedisStreamsQueue(redis_url, POLICY, prefix=redis_prefix) as survivor,
    ):
        await stalled.enqueue([make_task("m1", "c1")])
        [lost] = await stalled.lease(1, 0.3)
        assert await survivor.lease(1, 0.3) == []
        [lease] = await wait_until(
            lambda: survivor.lease(1, 0.3), within=5.0, what="the reclaim of the lost lease"
        )
        assert (lease.task.task_id, lease.attempt) == ("m1", 2)
        with pytest.raises(StaleLeaseError):
            await survivor.ack(lost)
        await survivor.ack(lease)
        assert (await survivor.stats()).depth == 0


_HOLD_AND_HANG = """
import asyncio, sys
from pyloto_cli.adapters.queue.redis_streams import RedisStreamsQueue
from pyloto_cli.domain.retry import RetryPolicy
from tests.contract.queue_contract import make_task

async def main() -> None:
    queue = RedisStreamsQueue(sys.argv[1], RetryPolicy(), prefix=sys.argv[2], owner_ttl_s=0.4)
    async with queue:
        await queue.enqueue([make_task("m1", "c1"), make_task("x1", "c2")])
        held = await queue.lease(10, 30.0)
        print(len(held), flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_consumers_leases_are_taken_back_once_its_heartbeat_lapses(
    redis_url: str, redis_prefix: str
) -> None:
    """A process holding leases is killed with SIGKILL: its heartbeat lapses (TTL 0.4 s here,
    renewed while it ran) and the next lease takes its tasks, with their lease time (30 s) far
    off."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_AND_HANG, redis_url, redis_prefix, stdout=PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"2\n"
        async with RedisStreamsQueue(redis_url, POLICY, prefix=redis_prefix) as survivor:
            assert await survivor.lease(10, LEASE_S) == []  # alive: its leases hold
            holder.kill()
            await holder.wait()
            killed_at = time.monotonic()
            retaken = await wait_until(
                lambda: survivor.lease(10, LEASE_S), within=5.0, what="the killed one's leases"
            )
            assert time.monotonic() - killed_at < 2.0
            assert sorted((r.task.task_id, r.attempt) for r in retaken) == [("m1", 2), ("x1", 2)]
            for lease in retaken:
                await survivor.ack(lease)
            assert (await survivor.stats()).depth == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_renew_keeps_the_task_past_its_first_lease_time(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """Renewal resets the entry's idle time, so XAUTOCLAIM leaves it with its worker."""
    stream = f"{redis_prefix}q:stream"
    async with (
        RedisStreamsQueue(redis_client, POLICY, prefix=redis_prefix) as holder,
        RedisStreamsQueue(redis_client, POLICY, prefix=redis_prefix) as other,
    ):
        await holder.enqueue([make_task("m1", "c1")])
        [lease] = await holder.lease(1, 0.3)
        await asyncio.sleep(0.2)  # real time passing is what this tests (XAUTOCLAIM's min-idle)
        renewed = await holder.renew(lease, 0.3)
        await asyncio.sleep(0.2)  # past the first lease time, within the renewed one
        assert await other.lease(1, 0.3) == []
        [entry] = await redis_client.xpending_range(stream, "workers", "-", "+", 10)
        consumer = entry["consumer"]
        assert isinstance(consumer, bytes | str)
        assert text(consumer) == holder.consumer
        await holder.ack(renewed)


async def test_acked_and_dead_tasks_leave_no_stream_entries(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """XACK + XDEL: after ack and dead-letter the stream and its pending list are empty."""
    stream = f"{redis_prefix}q:stream"
    async with RedisStreamsQueue(redis_client, POLICY, prefix=redis_prefix) as queue:
        await queue.enqueue([make_task("a", "c1"), make_task("b", "c1"), make_task("x", "c2")])
        assert await redis_client.xlen(stream) == 2  # heads only: a and x
        first, other = await queue.lease(10, LEASE_S)
        await queue.ack(first)
        await queue.dead_letter(other, "bad")
        [second] = await queue.lease(10, LEASE_S)
        await queue.ack(second)
        assert await redis_client.xlen(stream) == 0
        pending = await redis_client.xpending(stream, "workers")
        assert pending["pending"] == 0
        assert [d.task.task_id for d in await queue.dead_letters()] == ["x"]
    assert await redis_client.ping()  # a borrowed client stays open


async def test_closing_retires_an_idle_consumer_but_keeps_one_holding_work(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """A consumer with nothing pending leaves the group; one with a pending entry stays, so its
    entry can still be reclaimed."""
    stream = f"{redis_prefix}q:stream"
    async with RedisStreamsQueue(redis_client, POLICY, prefix=redis_prefix) as idle:
        await idle.enqueue([make_task("m1", "c1")])
        assert await idle.lease(0, LEASE_S) == []
    async with RedisStreamsQueue(redis_client, POLICY, prefix=redis_prefix) as holder:
        await holder.lease(1, LEASE_S)
    names = {text(c["name"]) for c in await redis_client.xinfo_consumers(stream, "workers")}
    assert names == {holder.consumer}


async def test_racing_enqueues_of_one_id_store_it_once(redis_url: str, redis_prefix: str) -> None:
    """Two webhook processes storing the same redelivered wamid: one stores, one is told dup."""
    async with (
        RedisStreamsQueue(redis_url, POLICY, prefix=redis_prefix) as first,
        RedisStreamsQueue(redis_url, POLICY, prefix=redis_prefix) as second,
    ):
        results = await asyncio.gather(
            *(q.enqueue([make_task("wamid.same", "c1")]) for q in (first, second) * 5)
        )
        assert sum(len(r.enqueued) for r in results) == 1
        assert ids(await first.lease(10, LEASE_S)) == ["wamid.same"]


async def test_an_unreachable_server_is_backend_unavailable() -> None:
    """A URL nobody answers on fails on enter, naming the address."""
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1/0"):
        async with RedisStreamsQueue("redis://127.0.0.1:1/0", POLICY):
            pass


async def test_a_borrowed_client_that_decodes_responses_works_too(
    redis_url: str, redis_prefix: str
) -> None:
    """The composition root may share a `decode_responses=True` client; replies are str then."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with RedisStreamsQueue(client, POLICY, prefix=redis_prefix) as queue:
            task = make_task("m1", "c1", text="olá 👋")
            await queue.enqueue([task, make_task("m2", "c1")])
            [lease] = await queue.lease(10, LEASE_S)
            await queue.nack(lease, "boom", delay_s=0, failure=FailureKind.AMBIGUOUS_SEND)
            [lease] = await queue.lease(10, LEASE_S)
            expected = (task, 2, FailureKind.AMBIGUOUS_SEND)
            assert (lease.task, lease.attempt, lease.previous_failure) == expected
            await queue.dead_letter(lease, "bad")
            [dead] = await queue.dead_letters()
            assert (dead.task, dead.error, dead.attempts) == (task, "bad", 2)
            stats = await queue.stats()
            assert (stats.ready, stats.dead, stats.backend) == (1, 1, "redis")
    finally:
        await client.aclose()


async def test_followers_never_enter_the_stream_and_leave_no_entries(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """Leased followers wait in their list, not the stream; acked head-first, each follower
    enters the stream as head and leaves it on its ack: nothing is left pending."""
    stream = f"{redis_prefix}q:stream"
    async with (
        RedisStreamsQueue(redis_client, POLICY, prefix=redis_prefix) as holder,
        RedisStreamsQueue(redis_client, POLICY, prefix=redis_prefix) as other,
    ):
        await holder.enqueue([make_task(f"m{i}", "c1") for i in range(3)])
        [head] = await holder.lease(10, LEASE_S)
        followers = await holder.lease_followers(head, 1.0, 10, LEASE_S)
        assert ids(followers) == ["m1", "m2"]
        assert await redis_client.xlen(stream) == 1
        await holder.ack(head)
        assert await other.lease(10, LEASE_S) == []  # m1 is in the stream now, but held
        for lease in followers:
            await holder.ack(lease)
        assert await redis_client.xlen(stream) == 0
        assert (await redis_client.xpending(stream, "workers"))["pending"] == 0
        assert (await holder.stats()).depth == 0
