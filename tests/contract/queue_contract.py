"""The queue contract: behaviour every `MessageQueue` + `QueueAdmin` adapter must show.

`QueueContract` is a base class, not collected by itself; each adapter's test module
subclasses it and provides a `make_queue` fixture: a factory of unopened adapters built with
this suite's `clock` and `policy` (the same backing store each call, for durable adapters).
`DurableQueueContract` adds what only a durable queue promises: data survives a reopen.
Time is a fake clock, moved by hand: nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Protocol, Self

import pytest

from pyloto_cli.domain.errors import BackendUnavailable, StaleLeaseError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import FailureKind, Leased, NackOutcome, Task, TaskKind
from pyloto_cli.ports import MessageQueue, QueueAdmin

LEASE_S = 30.0
START = 1_700_000_000.0


class ContractQueue(MessageQueue, QueueAdmin, Protocol):
    """What the suite drives: both ports, as an async context manager."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


MakeQueue = Callable[[], ContractQueue]
# An adapter on the same store whose leases belong to an owner that is gone once the adapter
# is closed without settling them (a killed process: its heartbeat stops, or its pid ended).
MakeQueueOfGoneOwner = Callable[[], ContractQueue]
# Overwrite the stored payload of a task id with text that is not a task, behind the adapter.
Spoil = Callable[[ContractQueue, str], Awaitable[None]]


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_task(
    task_id: str, conversation: str = "conv-a", text: str = "hi", *, received_at: float = START - 5
) -> Task:
    """A message task of `conversation` (text may hold non-ASCII, to check the payload)."""
    item = {"from": "15550001111", "id": task_id, "type": "text", "text": {"body": text}}
    return Task(
        task_id=task_id,
        kind=TaskKind.MESSAGE,
        conversation_key=conversation,
        phone_number_id="100000000000001",
        received_at=received_at,
        item=item,
        value={"messaging_product": "whatsapp", "messages": [item]},
    )


def burst(task_id: str, offset_s: float) -> Task:
    """A message of conversation `burst`, received `offset_s` after the burst's first."""
    return make_task(task_id, "burst", received_at=START - 60 + offset_s)


def ids(leases: list[Leased]) -> list[str]:
    """The task ids of `leases`, in order."""
    return [lease.task.task_id for lease in leases]


class QueueContract:
    """Behaviour shared by every queue adapter."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def policy(self) -> RetryPolicy:
        return RetryPolicy(base_s=10.0, cap_s=100.0, jitter=0.0, max_attempts=3)

    @pytest.fixture
    async def queue(self, make_queue: MakeQueue) -> AsyncIterator[ContractQueue]:
        async with make_queue() as queue:
            yield queue

    # --- enqueue -----------------------------------------------------------------------------

    async def test_lease_on_empty_queue_returns_nothing(self, queue: ContractQueue) -> None:
        """Nothing queued, nothing leased."""
        assert await queue.lease(10, LEASE_S) == []

    async def test_task_round_trips_with_its_payload(self, queue: ContractQueue) -> None:
        """The leased task equals the enqueued one, non-ASCII text included."""
        task = make_task("wamid.1", text="olá, ção 👋")
        assert (await queue.enqueue([task])).enqueued == ("wamid.1",)
        [lease] = await queue.lease(1, LEASE_S)
        assert lease.task == task

    async def test_unencodable_text_in_any_field_is_stored_beside_its_batch(
        self, queue: ContractQueue
    ) -> None:
        """Lone surrogates (JSON "\\ud800" escapes) in the id, the conversation, a key and the
        text: the task is stored with U+FFFD in their place, and so is the good task of the
        same batch."""
        item = {"id": "wamid.\ud800", "type": "text", "text": {"body": "a\ud800b"}, "\udc00": 1}
        bad = Task(
            task_id="wamid.\ud800",
            kind=TaskKind.MESSAGE,
            conversation_key="conv-\udfff",
            phone_number_id="100000000000001",
            received_at=START - 5,
            item=item,
            value={"messages": [item], "contacts": [{"profile": {"name": "Z\udbff"}}]},
        )
        result = await queue.enqueue([bad, make_task("wamid.good", "c2")])
        assert result.enqueued == ("wamid.\ufffd", "wamid.good")
        leased = {lease.task.task_id: lease.task for lease in await queue.lease(10, LEASE_S)}
        stored = leased["wamid.\ufffd"]
        assert stored == bad
        assert stored.conversation_key == "conv-\ufffd"
        assert stored.item == {
            "id": "wamid.\ufffd",
            "type": "text",
            "text": {"body": "a\ufffdb"},
            "\ufffd": 1,
        }
        assert stored.value["contacts"][0]["profile"]["name"] == "Z\ufffd"
        assert leased["wamid.good"] == make_task("wamid.good", "c2")

    async def test_batch_enqueue_reports_duplicates(self, queue: ContractQueue) -> None:
        """Ids already live (or repeated in the batch) are duplicates and stored once."""
        await queue.enqueue([make_task("a", "c1"), make_task("b", "c2")])
        result = await queue.enqueue([make_task("a", "c1"), make_task("c", "c3"), make_task("c")])
        assert result.enqueued == ("c",)
        assert result.duplicates == ("a", "c")
        assert sorted(ids(await queue.lease(10, LEASE_S))) == ["a", "b", "c"]

    async def test_leased_retrying_and_dead_ids_are_duplicates(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A task id is refused while leased, waiting for a retry, or dead."""
        await queue.enqueue([make_task("leased", "c1"), make_task("retry", "c2")])
        await queue.enqueue([make_task("dead", "c3")])
        by_id = {lease.task.task_id: lease for lease in await queue.lease(10, LEASE_S)}
        await queue.nack(by_id["retry"], "boom", delay_s=60)
        await queue.dead_letter(by_id["dead"], "bad")
        again = [make_task("leased", "c1"), make_task("retry", "c2"), make_task("dead", "c3")]
        result = await queue.enqueue(again)
        assert result.enqueued == ()
        assert result.duplicates == ("leased", "retry", "dead")
        assert (await queue.stats()).depth == 2

    # --- order -------------------------------------------------------------------------------

    async def test_tasks_are_leased_in_fifo_order(self, queue: ContractQueue) -> None:
        """Oldest first, up to max_items."""
        await queue.enqueue([make_task(f"t{i}", f"c{i}") for i in range(5)])
        assert ids(await queue.lease(2, LEASE_S)) == ["t0", "t1"]
        assert ids(await queue.lease(10, LEASE_S)) == ["t2", "t3", "t4"]
        assert await queue.lease(10, LEASE_S) == []

    async def test_later_message_waits_until_the_first_is_acked(self, queue: ContractQueue) -> None:
        """A conversation's second task is not leased while its first is leased."""
        await queue.enqueue([make_task("m1", "c1"), make_task("m2", "c1")])
        [first] = await queue.lease(10, LEASE_S)
        assert first.task.task_id == "m1"
        assert await queue.lease(10, LEASE_S) == []
        await queue.ack(first)
        assert ids(await queue.lease(10, LEASE_S)) == ["m2"]

    async def test_different_conversations_are_leased_together(self, queue: ContractQueue) -> None:
        """One task per conversation at a time, conversations side by side."""
        await queue.enqueue(
            [make_task("a1", "a"), make_task("a2", "a"), make_task("b1", "b"), make_task("c1", "c")]
        )
        assert ids(await queue.lease(10, LEASE_S)) == ["a1", "b1", "c1"]

    async def test_dead_lettered_head_releases_its_conversation(self, queue: ContractQueue) -> None:
        """After a dead letter, the conversation's next task is leasable."""
        await queue.enqueue([make_task("m1", "c1"), make_task("m2", "c1")])
        [first] = await queue.lease(10, LEASE_S)
        await queue.dead_letter(first, "unsupported")
        assert ids(await queue.lease(10, LEASE_S)) == ["m2"]

    # --- leases ------------------------------------------------------------------------------

    async def test_first_lease_is_attempt_one_with_a_fresh_token(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """attempt=1, expiry = now + lease_s, distinct tokens, no failure yet."""
        await queue.enqueue([make_task("a", "c1"), make_task("b", "c2")])
        first, second = await queue.lease(10, LEASE_S)
        expected = (1, clock.now + LEASE_S, None)
        assert (first.attempt, first.expires_at, first.previous_failure) == expected
        assert first.token != second.token

    async def test_expired_lease_is_taken_again_and_old_token_refused(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A worker that died: the task comes back as attempt 2, the old ack is refused."""
        await queue.enqueue([make_task("m1", "c1"), make_task("m2", "c1")])
        [old] = await queue.lease(10, LEASE_S)
        clock.advance(LEASE_S - 1)
        assert await queue.lease(10, LEASE_S) == []
        clock.advance(2)
        [new] = await queue.lease(10, LEASE_S)
        assert (new.task.task_id, new.attempt) == ("m1", 2)
        assert new.token != old.token
        with pytest.raises(StaleLeaseError):
            await queue.ack(old)
        with pytest.raises(StaleLeaseError):
            await queue.renew(old, LEASE_S)
        await queue.ack(new)
        assert ids(await queue.lease(10, LEASE_S)) == ["m2"]

    async def test_renewed_lease_is_not_taken_again(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """Renewal moves the expiry from now; the task stays with its worker."""
        await queue.enqueue([make_task("m1", "c1")])
        [lease] = await queue.lease(1, LEASE_S)
        clock.advance(LEASE_S - 5)
        renewed = await queue.renew(lease, LEASE_S)
        assert renewed.expires_at == clock.now + LEASE_S
        assert (renewed.token, renewed.attempt) == (lease.token, lease.attempt)
        clock.advance(10)
        assert await queue.lease(1, LEASE_S) == []
        await queue.ack(renewed)
        assert (await queue.stats()).depth == 0

    async def test_ack_twice_is_refused(self, queue: ContractQueue) -> None:
        """An acked lease is stale: ack, nack, renew and dead_letter refuse it."""
        await queue.enqueue([make_task("m1", "c1")])
        [lease] = await queue.lease(1, LEASE_S)
        await queue.ack(lease)
        with pytest.raises(StaleLeaseError):
            await queue.ack(lease)
        with pytest.raises(StaleLeaseError):
            await queue.nack(lease, "late")
        with pytest.raises(StaleLeaseError):
            await queue.renew(lease, LEASE_S)
        with pytest.raises(StaleLeaseError):
            await queue.dead_letter(lease, "late")

    async def test_expired_lease_nobody_took_can_still_be_acked(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """Expiry only makes a task leasable: a late ack with the current token succeeds."""
        await queue.enqueue([make_task("m1", "c1")])
        [lease] = await queue.lease(1, LEASE_S)
        clock.advance(LEASE_S * 2)
        await queue.ack(lease)
        assert await queue.lease(1, LEASE_S) == []

    # --- retries and dead letters ------------------------------------------------------------

    async def test_nack_delay_hides_task_until_it_passes(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A nacked task comes back after delay_s, as the next attempt, with its failure kind;
        a nack without one clears it."""
        await queue.enqueue([make_task("m1", "c1")])
        [lease] = await queue.lease(1, LEASE_S)
        nacked = await queue.nack(
            lease, "read timeout", delay_s=60, failure=FailureKind.AMBIGUOUS_SEND
        )
        assert nacked is NackOutcome.RETRY
        clock.advance(59)
        assert await queue.lease(1, LEASE_S) == []
        clock.advance(1)
        [again] = await queue.lease(1, LEASE_S)
        assert (again.attempt, again.previous_failure) == (2, FailureKind.AMBIGUOUS_SEND)
        assert await queue.nack(again, "llm timeout", delay_s=0) is NackOutcome.RETRY
        [third] = await queue.lease(1, LEASE_S)
        assert (third.attempt, third.previous_failure) == (3, None)

    async def test_nack_without_delay_uses_the_policy(
        self, queue: ContractQueue, clock: FakeClock, policy: RetryPolicy
    ) -> None:
        """No delay given: the policy's backoff for that attempt."""
        await queue.enqueue([make_task("m1", "c1")])
        [lease] = await queue.lease(1, LEASE_S)
        await queue.nack(lease, "429")
        clock.advance(policy.delay(1) - 0.5)
        assert await queue.lease(1, LEASE_S) == []
        clock.advance(0.5)
        assert ids(await queue.lease(1, LEASE_S)) == ["m1"]

    async def test_nacked_task_keeps_blocking_its_conversation(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """Waiting for a retry, the head still holds back later messages; others run."""
        await queue.enqueue([make_task("m1", "c1"), make_task("m2", "c1"), make_task("x1", "c2")])
        first, other = await queue.lease(10, LEASE_S)
        await queue.nack(first, "boom", delay_s=60)
        await queue.ack(other)
        assert await queue.lease(10, LEASE_S) == []
        clock.advance(60)
        [retry] = await queue.lease(10, LEASE_S)
        assert retry.task.task_id == "m1"
        await queue.ack(retry)
        assert ids(await queue.lease(10, LEASE_S)) == ["m2"]

    async def test_nack_after_max_attempts_dead_letters(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """The policy's last attempt ends in a dead letter with the error and attempt count."""
        task = make_task("m1", "c1")
        await queue.enqueue([task, make_task("m2", "c1")])
        outcomes = []
        for _ in range(3):
            [lease] = await queue.lease(1, LEASE_S)
            assert lease.task.task_id == "m1"
            outcomes.append(await queue.nack(lease, f"fail {lease.attempt}", delay_s=0))
        assert outcomes == [NackOutcome.RETRY, NackOutcome.RETRY, NackOutcome.DEAD]
        [dead] = await queue.dead_letters()
        assert (dead.task, dead.error, dead.attempts, dead.dead_at) == (
            task,
            "fail 3",
            3,
            clock.now,
        )
        assert ids(await queue.lease(1, LEASE_S)) == ["m2"]

    async def test_defer_gives_the_attempt_back_and_never_dead_letters(
        self, queue: ContractQueue
    ) -> None:
        """Deferring many times spends no attempts: the policy's retries are all still there."""
        task = make_task("m1", "c1")
        await queue.enqueue([task])
        for _ in range(5):
            [lease] = await queue.lease(1, LEASE_S)
            await queue.defer(lease, 0, "graph token rejected")
        assert await queue.dead_letters() == []
        [lease] = await queue.lease(1, LEASE_S)
        assert (lease.attempt, lease.previous_failure) == (1, None)
        assert await queue.nack(lease, "fail 1", delay_s=0) is NackOutcome.RETRY
        [lease] = await queue.lease(1, LEASE_S)
        await queue.defer(lease, 0, "graph token rejected")
        [lease] = await queue.lease(1, LEASE_S)
        assert lease.attempt == 2  # the failed attempt stays counted, the deferred one not
        assert await queue.nack(lease, "fail 2", delay_s=0) is NackOutcome.RETRY
        [lease] = await queue.lease(1, LEASE_S)
        assert await queue.nack(lease, "fail 3", delay_s=0) is NackOutcome.DEAD
        [dead] = await queue.dead_letters()
        assert (dead.task, dead.attempts) == (task, 3)

    async def test_defer_hides_task_until_the_delay_passes(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A deferred task comes back after delay_s with the reason as its last error."""
        await queue.enqueue([make_task("m1", "c1")])
        [lease] = await queue.lease(1, LEASE_S)
        await queue.defer(lease, 120, "graph token rejected")
        clock.advance(119)
        assert await queue.lease(1, LEASE_S) == []
        clock.advance(1)
        [again] = await queue.lease(1, LEASE_S)
        assert (again.task.task_id, again.attempt) == ("m1", 1)
        assert again.previous_failure is None

    async def test_defer_keeps_the_failure_kind_for_the_next_attempt(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A pause between an ambiguous send and its retry must not make it retryable twice."""
        await queue.enqueue([make_task("m1", "c1")])
        [lease] = await queue.lease(1, LEASE_S)
        await queue.nack(lease, "read timeout", delay_s=0, failure=FailureKind.AMBIGUOUS_SEND)
        [lease] = await queue.lease(1, LEASE_S)
        await queue.defer(lease, 0, "graph token rejected")
        [again] = await queue.lease(1, LEASE_S)
        assert (again.attempt, again.previous_failure) == (2, FailureKind.AMBIGUOUS_SEND)

    async def test_defer_with_a_stale_lease_is_refused(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A lease taken over or acked cannot defer; the current holder's lease is untouched."""
        await queue.enqueue([make_task("m1", "c1")])
        [old] = await queue.lease(1, LEASE_S)
        clock.advance(LEASE_S)
        [new] = await queue.lease(1, LEASE_S)
        with pytest.raises(StaleLeaseError):
            await queue.defer(old, 60, "late")
        assert await queue.lease(1, LEASE_S) == []
        await queue.ack(new)
        with pytest.raises(StaleLeaseError):
            await queue.defer(new, 60, "late")
        assert (await queue.stats()).depth == 0

    async def test_deferred_task_keeps_its_place_in_its_conversation(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """Deferred, the head still holds back later messages of its conversation; others run."""
        await queue.enqueue([make_task("m1", "c1"), make_task("m2", "c1"), make_task("x1", "c2")])
        first, other = await queue.lease(10, LEASE_S)
        await queue.defer(first, 60, "graph token rejected")
        await queue.ack(other)
        assert await queue.lease(10, LEASE_S) == []
        clock.advance(60)
        [again] = await queue.lease(10, LEASE_S)
        assert again.task.task_id == "m1"
        await queue.ack(again)
        assert ids(await queue.lease(10, LEASE_S)) == ["m2"]

    async def test_dead_letter_now_keeps_payload_error_and_attempts(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A permanent failure dead-letters at once."""
        task = make_task("m1", "c1", text="ünïcode")
        await queue.enqueue([task])
        [lease] = await queue.lease(1, LEASE_S)
        await queue.nack(lease, "first", delay_s=0)
        [lease] = await queue.lease(1, LEASE_S)
        await queue.dead_letter(lease, "graph 131047")
        [dead] = await queue.dead_letters()
        assert (dead.task, dead.error, dead.attempts) == (task, "graph 131047", 2)
        assert (await queue.stats()).depth == 0

    async def test_dead_letters_are_listed_oldest_first_up_to_limit(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """`dead_letters(limit)` returns the oldest ones."""
        await queue.enqueue([make_task(f"t{i}", f"c{i}") for i in range(3)])
        for lease in reversed(await queue.lease(10, LEASE_S)):
            await queue.dead_letter(lease, "bad")
            clock.advance(1)
        assert [d.task.task_id for d in await queue.dead_letters(2)] == ["t2", "t1"]

    async def test_requeue_dead_by_id_resets_attempts(self, queue: ContractQueue) -> None:
        """Requeued dead letters come back as attempt 1, behind their conversation's tasks."""
        await queue.enqueue([make_task("m1", "c1"), make_task("x1", "c2")])
        for lease in await queue.lease(10, LEASE_S):
            await queue.dead_letter(lease, "bad")
        await queue.enqueue([make_task("m2", "c1")])
        assert await queue.requeue_dead(["m1", "missing"]) == 1
        assert [d.task.task_id for d in await queue.dead_letters()] == ["x1"]
        [lease] = await queue.lease(10, LEASE_S)
        assert lease.task.task_id == "m2"
        await queue.ack(lease)
        [requeued] = await queue.lease(10, LEASE_S)
        assert (requeued.task.task_id, requeued.attempt) == ("m1", 1)

    async def test_requeue_all_and_purge_dead(self, queue: ContractQueue) -> None:
        """None requeues every dead letter; purge deletes the rest."""
        await queue.enqueue([make_task(f"t{i}", f"c{i}") for i in range(3)])
        for lease in await queue.lease(10, LEASE_S):
            await queue.dead_letter(lease, "bad")
        assert await queue.requeue_dead() == 3
        assert (await queue.stats()).dead == 0
        for lease in await queue.lease(10, LEASE_S):
            await queue.dead_letter(lease, "bad again")
        assert await queue.purge_dead() == 3
        assert await queue.dead_letters() == []
        assert await queue.purge_dead() == 0
        assert (await queue.enqueue([make_task("t0", "c0")])).enqueued == ("t0",)

    # --- followers (burst coalescing) --------------------------------------------------------

    async def test_followers_within_the_window_are_leased_in_order(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """Tasks right behind the head, received within the window, are leased with it."""
        await queue.enqueue([burst("m1", 0.0), make_task("x1", "c2"), burst("m2", 0.5)])
        await queue.enqueue([burst("m3", 1.5), burst("m4", 1.6), make_task("x2", "c2")])
        head, other = await queue.lease(10, LEASE_S)
        followers = await queue.lease_followers(head, 1.5, 10, LEASE_S)
        assert ids(followers) == ["m2", "m3"]
        assert [(f.attempt, f.expires_at, f.previous_failure) for f in followers] == [
            (1, clock.now + LEASE_S, None)
        ] * 2
        assert len({head.token, *(f.token for f in followers)}) == 3
        assert followers[0].task == burst("m2", 0.5)
        assert await queue.lease(10, LEASE_S) == []
        assert (await queue.stats()).leased == 4
        await queue.ack(other)
        assert ids(await queue.lease(10, LEASE_S)) == ["x2"]

    async def test_followers_stop_at_max_items_and_at_a_leased_task(
        self, queue: ContractQueue
    ) -> None:
        """At most `max_items`; the run is contiguous, so a leased follower ends the next one."""
        await queue.enqueue([burst(f"m{i}", i * 0.1) for i in range(4)])
        [head] = await queue.lease(10, LEASE_S)
        assert await queue.lease_followers(head, 1.0, 0, LEASE_S) == []
        assert ids(await queue.lease_followers(head, 1.0, 2, LEASE_S)) == ["m1", "m2"]
        assert await queue.lease_followers(head, 1.0, 10, LEASE_S) == []

    async def test_followers_of_a_stale_lease_are_refused(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """A head lease taken over or acked cannot lease followers."""
        await queue.enqueue([burst("m1", 0.0), burst("m2", 0.1), burst("m3", 0.2)])
        [old] = await queue.lease(1, LEASE_S)
        clock.advance(LEASE_S)
        [new] = await queue.lease(1, LEASE_S)
        with pytest.raises(StaleLeaseError):
            await queue.lease_followers(old, 1.0, 10, LEASE_S)
        await queue.ack(new)
        with pytest.raises(StaleLeaseError):
            await queue.lease_followers(new, 1.0, 10, LEASE_S)
        assert ids(await queue.lease(10, LEASE_S)) == ["m2"]

    async def test_acked_head_and_followers_release_the_conversation(
        self, queue: ContractQueue
    ) -> None:
        """Whatever the order of the acks, the followers stay held until acked; then the
        conversation's next task is leasable."""
        await queue.enqueue([burst("m1", 0.0), burst("m2", 0.1), burst("m3", 0.2)])
        await queue.enqueue([burst("m4", 5.0)])
        [head] = await queue.lease(10, LEASE_S)
        first, second = await queue.lease_followers(head, 1.0, 10, LEASE_S)
        await queue.ack(head)
        assert await queue.lease(10, LEASE_S) == []
        await queue.ack(second)
        assert await queue.lease(10, LEASE_S) == []
        await queue.ack(first)
        [nxt] = await queue.lease(10, LEASE_S)
        assert (nxt.task.task_id, nxt.attempt) == ("m4", 1)
        with pytest.raises(StaleLeaseError):
            await queue.ack(first)

    async def test_nacked_head_and_followers_come_back_one_by_one(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """All nacked together: the head returns after its delay as attempt 2; each follower
        keeps its place and is leased after the task before it, with its attempt and error."""
        await queue.enqueue([burst("m1", 0.0), burst("m2", 0.1), burst("m3", 0.2)])
        [head] = await queue.lease(10, LEASE_S)
        followers = await queue.lease_followers(head, 1.0, 10, LEASE_S)
        for lease in [*reversed(followers), head]:
            nacked = await queue.nack(lease, "boom", delay_s=60, failure=FailureKind.AMBIGUOUS_SEND)
            assert nacked is NackOutcome.RETRY
        clock.advance(59)
        assert await queue.lease(10, LEASE_S) == []
        clock.advance(1)
        for task_id in ("m1", "m2", "m3"):
            [again] = await queue.lease(10, LEASE_S)
            expected = (task_id, 2, FailureKind.AMBIGUOUS_SEND)
            assert (again.task.task_id, again.attempt, again.previous_failure) == expected
            assert await queue.lease(10, LEASE_S) == []
            await queue.ack(again)
        assert (await queue.stats()).depth == 0

    async def test_deferred_head_and_followers_are_leased_together_again(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """All deferred together: attempts given back, the same burst can be leased again."""
        await queue.enqueue([burst("m1", 0.0), burst("m2", 0.1), burst("m3", 0.2)])
        [head] = await queue.lease(10, LEASE_S)
        followers = await queue.lease_followers(head, 1.0, 10, LEASE_S)
        for lease in [*reversed(followers), head]:
            await queue.defer(lease, 30, "graph token rejected")
        clock.advance(30)
        [head] = await queue.lease(10, LEASE_S)
        again = await queue.lease_followers(head, 1.0, 10, LEASE_S)
        assert [(f.task.task_id, f.attempt) for f in [head, *again]] == [
            ("m1", 1),
            ("m2", 1),
            ("m3", 1),
        ]
        assert again[0].previous_failure is None

    async def test_a_follower_still_waiting_for_its_retry_ends_the_run(
        self, queue: ContractQueue, clock: FakeClock
    ) -> None:
        """Followers are contiguous: one not yet due stops the lease at it."""
        await queue.enqueue([burst("m1", 0.0), burst("m2", 0.1), burst("m3", 0.2)])
        [head] = await queue.lease(10, LEASE_S)
        first, second = await queue.lease_followers(head, 1.0, 10, LEASE_S)
        await queue.nack(second, "boom", delay_s=10)
        await queue.nack(first, "boom", delay_s=100)
        await queue.nack(head, "boom", delay_s=10)
        clock.advance(10)
        [head] = await queue.lease(10, LEASE_S)
        assert await queue.lease_followers(head, 1.0, 10, LEASE_S) == []

    async def test_dead_lettered_head_leaves_its_followers_held(self, queue: ContractQueue) -> None:
        """A dead-lettered head does not free its leased followers for another worker."""
        await queue.enqueue([burst("m1", 0.0), burst("m2", 0.1), burst("m3", 5.0)])
        [head] = await queue.lease(10, LEASE_S)
        [follower] = await queue.lease_followers(head, 1.0, 10, LEASE_S)
        await queue.dead_letter(follower, "bad")
        await queue.dead_letter(head, "bad")
        assert [d.task.task_id for d in await queue.dead_letters()] == ["m2", "m1"]
        assert ids(await queue.lease(10, LEASE_S)) == ["m3"]

    # --- admin and lifecycle -----------------------------------------------------------------

    async def test_stats_count_each_state(self, queue: ContractQueue, clock: FakeClock) -> None:
        """ready, leased, retrying (tried before or delayed), dead, and the oldest age."""
        assert (await queue.stats()).depth == 0
        assert (await queue.stats()).oldest_age_s is None
        await queue.enqueue([make_task(f"t{i}", f"c{i}") for i in range(4)])
        clock.advance(7)
        await queue.enqueue([make_task("t4", "c0")])
        leased = await queue.lease(3, LEASE_S)
        await queue.nack(leased[1], "later", delay_s=60)
        await queue.dead_letter(leased[2], "bad")
        stats = await queue.stats()
        assert (stats.ready, stats.leased, stats.retrying, stats.dead) == (2, 1, 1, 1)
        assert stats.oldest_age_s == pytest.approx(7.0)
        clock.advance(LEASE_S)
        stats = await queue.stats()
        assert (stats.ready, stats.leased, stats.retrying) == (2, 0, 2)

    async def test_use_after_close_fails_loudly(self, make_queue: MakeQueue) -> None:
        """A closed queue raises instead of silently dropping work."""
        async with make_queue() as queue:
            pass
        with pytest.raises(BackendUnavailable):
            await queue.enqueue([make_task("m1")])
        with pytest.raises(BackendUnavailable):
            await queue.lease(1, LEASE_S)


class DurableQueueContract(QueueContract):
    """What a durable queue adds: tasks, leases and dead letters survive close and reopen."""

    async def test_a_stored_task_that_cannot_be_read_is_dead_at_once(
        self, queue: ContractQueue, spoil: Spoil
    ) -> None:
        """A payload that holds no task (written by another program, damaged): the lease
        dead-letters it on its first attempt, saying why, and hands out the tasks around it;
        its conversation's next task is leasable at once."""
        await queue.enqueue([make_task("bad", "c1"), make_task("next", "c1")])
        await queue.enqueue([make_task("other", "c2")])
        await spoil(queue, "bad")
        leased = ids(await queue.lease(10, LEASE_S)) + ids(await queue.lease(10, LEASE_S))
        assert sorted(leased) == ["next", "other"]
        [dead] = await queue.dead_letters()
        assert (dead.task.task_id, dead.attempts) == ("bad", 1)
        assert dead.error.startswith("InvalidTask: stored task cannot be read")
        assert (await queue.stats()).dead == 1

    async def test_tasks_and_dead_letters_survive_reopen(
        self, make_queue: MakeQueue, clock: FakeClock
    ) -> None:
        """Ready, retrying and dead tasks are all there after a restart."""
        async with make_queue() as queue:
            await queue.enqueue([make_task("m1", "c1"), make_task("m2", "c1")])
            await queue.enqueue([make_task("x1", "c2")])
            first, other = await queue.lease(10, LEASE_S)
            await queue.nack(first, "boom", delay_s=5, failure=FailureKind.AMBIGUOUS_SEND)
            await queue.dead_letter(other, "bad")
        clock.advance(5)
        async with make_queue() as queue:
            stats = await queue.stats()
            assert (stats.ready, stats.retrying, stats.dead) == (1, 1, 1)
            [dead] = await queue.dead_letters()
            assert (dead.task, dead.error) == (make_task("x1", "c2"), "bad")
            [lease] = await queue.lease(10, LEASE_S)
            assert (lease.task, lease.attempt, lease.previous_failure) == (
                make_task("m1", "c1"),
                2,
                FailureKind.AMBIGUOUS_SEND,
            )

    async def test_lease_of_a_stalled_worker_expires_after_reopen(
        self, make_queue: MakeQueue, clock: FakeClock
    ) -> None:
        """A lease whose owner is alive but stopped renewing (stalled) blocks until it expires,
        then the task returns to a queue opened later."""
        async with make_queue() as stalled:
            await stalled.enqueue([make_task("m1", "c1")])
            [lost] = await stalled.lease(1, LEASE_S)
            async with make_queue() as queue:
                assert await queue.lease(1, LEASE_S) == []
            clock.advance(LEASE_S)
            async with make_queue() as queue:
                [lease] = await queue.lease(1, LEASE_S)
                assert (lease.task.task_id, lease.attempt) == ("m1", 2)
                with pytest.raises(StaleLeaseError):
                    await queue.ack(lost)

    async def test_a_lease_whose_owner_is_gone_is_taken_back_at_once(
        self, make_queue: MakeQueue, make_queue_of_gone_owner: MakeQueueOfGoneOwner
    ) -> None:
        """A killed worker's leases (its followers included) are leasable again at once, long
        before their lease time, attempt counted; the dead holder's tokens are refused."""
        async with make_queue_of_gone_owner() as holder:
            await holder.enqueue([make_task("m1", "c1"), make_task("m2", "c1")])
            await holder.enqueue([make_task("x1", "c2")])
            [head, other] = await holder.lease(10, LEASE_S)
            [follower] = await holder.lease_followers(head, 60.0, 5, LEASE_S)
            assert ids([head, other, follower]) == ["m1", "x1", "m2"]
        async with make_queue() as queue:
            # the fake clock has not moved: only the owner being gone frees them
            retaken = await queue.lease(10, LEASE_S)
            assert sorted((r.task.task_id, r.attempt) for r in retaken) == [("m1", 2), ("x1", 2)]
            with pytest.raises(StaleLeaseError):
                await queue.ack(head)
            [m1] = [r for r in retaken if r.task.task_id == "m1"]
            assert ids(await queue.lease_followers(m1, 60.0, 5, LEASE_S)) == ["m2"]

    async def test_a_live_owners_lease_is_not_taken(
        self, make_queue: MakeQueue, clock: FakeClock
    ) -> None:
        """Another worker never takes a lease whose owner is alive and renewing it."""
        async with make_queue() as holder, make_queue() as other:
            await holder.enqueue([make_task("m1", "c1")])
            [lease] = await holder.lease(1, LEASE_S)
            for _ in range(3):
                assert await other.lease(10, LEASE_S) == []
                clock.advance(LEASE_S / 2)
                lease = await holder.renew(lease, LEASE_S)
            assert await other.lease(10, LEASE_S) == []
            await holder.ack(lease)
            assert (await other.stats()).depth == 0
