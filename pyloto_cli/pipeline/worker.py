"""The worker loop: lease, process with bounded concurrency, renew leases, ack/nack, stop cleanly.

Leases are renewed every third of their length while a task runs, so a slow LLM does not let
another worker take the task. The ack (or nack) after the side effects is shielded from
cancellation (arq): a stop in the middle of bookkeeping must not turn a sent reply into a
retry. On stop the loop takes no new work, waits `grace_s` for the tasks in flight, then cancels
them and releases their leases (`defer` by 0, the attempt given back): the next process takes
them at once instead of after the lease time, and nothing is lost.

Burst coalescing (off unless `coalesce_window_s` > 0): a leased MESSAGE task that needs a reply,
on its first attempt, waits until `coalesce_window_s` after it was received (never longer than
the window), then leases the conversation's messages received within that window
(`lease_followers`, at most `coalesce_max` messages in all) and the pipeline answers them as one
turn. The burst is settled together: every lease acked, or every one nacked or deferred alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyloto_cli.domain.errors import InvalidTask, StaleLeaseError
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import Leased, NackOutcome, TaskKind
from pyloto_cli.domain.webhook import inbound_message, needs_reply
from pyloto_cli.logs import bind, get_logger, log_event
from pyloto_cli.pipeline.process import Outcome, Pipeline, TaskResult
from pyloto_cli.pipeline.settlement import Action, Settlement, settle
from pyloto_cli.ports import NO_METRICS, MessageQueue, Metrics

_log = get_logger("worker")
MAX_LEASE_BACKOFF_S = 5.0
RELEASED = "released unfinished at shutdown"


@dataclass(slots=True)
class WorkerStats:
    """Counts since the worker started (drain's summary)."""

    done: int = 0
    skipped: int = 0
    retried: int = 0
    deferred: int = 0
    dead: int = 0
    lease_lost: int = 0
    released: int = 0
    outcomes: list[TaskResult] = field(default_factory=list)

    @property
    def handled(self) -> int:
        """Every settled attempt."""
        return self.done + self.skipped + self.retried + self.dead


class Worker:
    """Pulls tasks from a `MessageQueue` and runs them through the pipeline.

    `policy` decides retries and dead letters (`settlement.settle`); give it the one the queue
    was given, which the queue applies only as a backstop.
    """

    def __init__(
        self,
        queue: MessageQueue,
        pipeline: Pipeline,
        *,
        policy: RetryPolicy,
        concurrency: int = 64,
        lease_s: float = 30.0,
        poll_interval: float = 0.05,
        grace_s: float = 10.0,
        keep_outcomes: bool = False,
        coalesce_window_s: float = 0.0,
        coalesce_max: int = 10,
        clock: Callable[[], float] = time.time,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.pipeline = pipeline
        self.policy = policy
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_interval = poll_interval
        self.grace_s = grace_s
        self.coalesce_window_s = coalesce_window_s
        self.coalesce_max = coalesce_max
        self.stats = WorkerStats()
        self._clock = clock
        self._keep_outcomes = keep_outcomes
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New work was enqueued in this process: look now instead of at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then wind down (grace period, then cancel).

        A lease that fails (the queue's backend is down) is logged and tried again after a
        backoff, up to `MAX_LEASE_BACKOFF_S`: the loop never ends on its own.
        """
        failures = 0
        stopping = asyncio.create_task(self._wake_on(stop))
        try:
            while not stop.is_set():
                self._wake.clear()  # before the lease: a wake during it is not lost
                try:
                    more = await self._lease_some()
                except Exception as exc:
                    failures += 1
                    await self._back_off(stop, exc, failures)
                    continue
                if failures:
                    log_event(_log, "queue_lease_recovered", failures=failures)
                    failures = 0
                if not more:
                    await self._idle(stop, self.poll_interval)
        finally:
            stopping.cancel()
            await self._wind_down()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        """Wake the idle loop when `stop` is set (`_idle` then waits on one event only)."""
        await stop.wait()
        self._wake.set()

    async def _back_off(self, stop: asyncio.Event, exc: Exception, failures: int) -> None:
        delay = min(self.poll_interval * 2**failures, MAX_LEASE_BACKOFF_S)
        log_event(
            _log,
            "queue_lease_failed",
            logging.WARNING,
            error=f"{type(exc).__name__}: {exc}",
            failures=failures,
            retry_in_s=round(delay, 3),
        )
        await self._idle(stop, delay)

    async def drain(self, max_idle_polls: int = 2) -> WorkerStats:
        """Burst mode: process until the queue has nothing leasable, then return the counts."""
        idle = 0
        while idle < max_idle_polls:
            if await self._lease_some():
                idle = 0
                continue
            if self._inflight:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            idle += 1
            await asyncio.sleep(self.poll_interval)
        return self.stats

    async def _lease_some(self) -> bool:
        """Lease up to the free slots (first waiting for one if there are none); True when
        more may be leasable now: the lease filled every free slot, or a slot was waited for.

        A lease that found fewer tasks than it asked for has emptied what is leasable: leasing
        again at once would find nothing (one empty round trip per message at a steady
        trickle), so the caller waits for a wake or the next poll instead.
        """
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            return True
        leased = await self.queue.lease(free, self.lease_s)
        for lease in leased:
            task = asyncio.create_task(self._handle(lease), name=f"task:{lease.task.task_id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(leased) == free

    async def _idle(self, stop: asyncio.Event, timeout_s: float) -> None:
        """Wait for a wake (new work, or `stop` through `_wake_on`) or `timeout_s`: one wait on
        one event, where a wait on both would make two tasks per idle spell, one per message."""
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    async def _wind_down(self) -> None:
        await wind_down(self._inflight, self.grace_s)

    async def _handle(self, lease: Leased) -> None:
        task = lease.task
        with bind(task_id=task.task_id, attempt=lease.attempt):
            log_event(_log, "task_dequeued", logging.DEBUG, kind=task.kind.value)
            started = time.perf_counter()
            holder = [lease]
            finished = asyncio.Event()
            renewer = asyncio.create_task(self._renew(holder, finished))
            try:
                result = await self._process(holder)
            except asyncio.CancelledError:  # the stop's grace is over: hand the task back
                await asyncio.shield(self._release(holder))
                raise
            except Exception as exc:  # the one broad catch: any bug becomes a retry, not a stall
                _log.exception("task_failed")
                result = TaskResult(Outcome.RETRY, reason=f"{type(exc).__name__}: {exc}")
            finally:
                # told, not cancelled: a renewal cancelled in the middle of its queue call can
                # leave the client waiting for a reply it no longer reads (seen with Redis)
                finished.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            await asyncio.shield(self._settle_all(holder, result, duration_ms))

    async def _process(self, holder: list[Leased]) -> TaskResult:
        """Run the head lease's task, or the burst it heads (`holder` gets the followers)."""
        lease = holder[0]
        if self._coalescible(lease):
            holder.extend(await self._followers(lease))
        if len(holder) == 1:
            return await self.pipeline.process(lease.task, lease.attempt, lease.previous_failure)
        log_event(_log, "task_coalesced", count=len(holder))
        tasks = [held.task for held in holder]
        return await self.pipeline.process_batch(tasks, lease.attempt, lease.previous_failure)

    def _coalescible(self, lease: Leased) -> bool:
        """A first attempt of a valid message that needs a reply, with coalescing on (an
        invalid one goes alone to the pipeline, which dead-letters it)."""
        if self.coalesce_window_s <= 0 or self.coalesce_max < 2 or lease.attempt != 1:
            return False
        return lease.task.kind is TaskKind.MESSAGE and _replyable(lease)

    async def _followers(self, lease: Leased) -> list[Leased]:
        """Wait out the rest of the window, then lease the burst's later messages; a follower
        that no attempt can process is dead-lettered alone, and the burst goes on without it."""
        window = self.coalesce_window_s
        wait = min(window, lease.task.received_at + window - self._clock())
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            followers = await self.queue.lease_followers(
                lease, window, self.coalesce_max - 1, self.lease_s
            )
        except StaleLeaseError:
            log_event(_log, "task_lease_lost", stage="coalesce")
            return []
        valid: list[Leased] = []
        for index, follower in enumerate(followers):
            if follower.task.kind is not TaskKind.MESSAGE:  # an echo: the burst ends before it
                await self._hand_back(followers[index:])
                break
            try:
                inbound_message(follower.task)
            except InvalidTask as exc:
                dead = TaskResult(Outcome.DEAD, reason=f"{type(exc).__name__}: {exc.reason}")
                with bind(task_id=follower.task.task_id, attempt=follower.attempt):
                    await self._settle(follower, dead, 0.0)
                continue
            valid.append(follower)
        return valid

    async def _hand_back(self, leases: list[Leased]) -> None:
        """Return followers unprocessed, in place and without spending an attempt, so the
        conversation's order holds: they are leased again once the burst is settled."""
        for lease in leases:
            try:
                await self.queue.defer(lease, 0.0, "not part of the burst")
            except StaleLeaseError:
                log_event(_log, "task_lease_lost", stage="coalesce", task_id=lease.task.task_id)

    async def _renew(self, holder: list[Leased], finished: asyncio.Event) -> None:
        """Renew every lease of `holder` each third of the lease time until `finished`."""
        lost: set[int] = set()
        while True:
            try:
                async with asyncio.timeout(self.lease_s / 3):
                    await finished.wait()
                return
            except TimeoutError:
                pass
            for i, lease in enumerate(holder):
                if i in lost:
                    continue
                try:
                    holder[i] = await self.queue.renew(lease, self.lease_s)
                except StaleLeaseError:
                    lost.add(i)
                    log_event(_log, "task_lease_lost", stage="renew", task_id=lease.task.task_id)

    async def _release(self, holder: list[Leased]) -> None:
        """Put a cancelled task (and its burst) back, leasable now, with the attempt given back."""
        for lease in reversed(holder):
            try:
                await self.queue.defer(lease, 0.0, RELEASED)
            except StaleLeaseError:
                continue  # another worker has it already
            except Exception as exc:  # the queue is down: the lease expires instead
                log_event(_log, "task_release_failed", logging.WARNING, error=type(exc).__name__)
                continue
            self.stats.released += 1
            log_event(_log, "task_released", task_id=lease.task.task_id, attempt=lease.attempt)

    async def _settle_all(self, holder: list[Leased], result: TaskResult, ms: float) -> None:
        """Settle a burst's followers (last first), then its head, all with `result`."""
        for lease in reversed(holder[1:]):
            with bind(task_id=lease.task.task_id, attempt=lease.attempt):
                await self._settle(lease, result, ms)
        await self._settle(holder[0], result, ms)

    async def _settle(self, lease: Leased, result: TaskResult, duration_ms: float) -> None:
        if self._keep_outcomes:
            self.stats.outcomes.append(result)
        try:
            await self._apply(lease, result, duration_ms)
            # counted once settled: a scrape that sees it done sees the queue without it
            self.metrics.task_processed(result.outcome.value, duration_ms / 1000)
        except StaleLeaseError:
            self.stats.lease_lost += 1
            log_event(_log, "task_lease_lost", stage="settle", outcome=result.outcome.value)

    async def _apply(self, lease: Leased, result: TaskResult, duration_ms: float) -> None:
        decision = settle(result, lease.attempt, self.policy, self._clock())
        if decision.action is Action.ACK:
            await self.queue.ack(lease)
            if result.outcome is Outcome.DONE:
                self.stats.done += 1
            else:
                self.stats.skipped += 1
            log_event(_log, "task_processed", outcome=result.outcome.value, duration_ms=duration_ms)
            return
        reason = decision.reason or ""
        if decision.action is Action.DEFER:
            await self.queue.defer(lease, decision.delay_s, reason)
            self.stats.deferred += 1
            log_event(_log, "task_deferred", reason=reason, delay_s=decision.delay_s)
            return
        outcome = await self._retry_or_bury(lease, decision)
        if outcome is NackOutcome.DEAD:
            self.stats.dead += 1
            self.metrics.task_dead_lettered()
            log_event(
                _log, "task_dead_lettered", logging.WARNING, reason=reason, duration_ms=duration_ms
            )
        else:
            self.stats.retried += 1
            self.metrics.task_retried()
            log_event(_log, "task_retried", reason=reason, delay_s=round(decision.delay_s, 3))

    async def _retry_or_bury(self, lease: Leased, decision: Settlement) -> NackOutcome:
        reason = decision.reason or ""
        if decision.action is Action.DEAD_LETTER:
            await self.queue.dead_letter(lease, reason)
            return NackOutcome.DEAD
        if not decision.counted:  # bounded by the deadline, not the attempts: give it back
            await self.queue.defer(lease, decision.delay_s, reason)
            return NackOutcome.RETRY
        return await self.queue.nack(lease, reason, decision.delay_s, decision.failure)


def _replyable(lease: Leased) -> bool:
    try:
        return needs_reply(inbound_message(lease.task))
    except InvalidTask:
        return False


async def wind_down(inflight: set[asyncio.Task[None]], grace_s: float) -> None:
    """Let the tasks in flight finish within `grace_s`, then cancel the rest (each hands its
    task back to the queue) and wait for them; shared by the pull and the streaming worker."""
    if not inflight:
        return
    _, pending = await asyncio.wait(inflight, timeout=grace_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
        log_event(_log, "worker_cancelled_tasks", count=len(pending))
