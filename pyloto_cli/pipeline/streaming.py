"""The worker of a streaming queue (Pub/Sub): messages arrive, each runs through the pipeline
and is acked once its side effects are done.

The decision after an attempt is the pull worker's (`settlement.settle`). A retry or a deferral
is waited out while the message is still held, and the next attempt runs on the same delivery:
the stream keeps extending its ack deadline, and the conversation's later messages stay behind
it. A nack would let the client hand out the conversation's next message at once, ahead of the
retried one. A message is nacked only when the worker stops with it unfinished; a worker that
dies leaves it to come back after the ack deadline.

Pub/Sub keeps no dead letters pyloto can list or requeue, so a task whose attempts are spent (or
that can never succeed) is recorded in a `DeadLetterStore`, as with Cloud Tasks, and then acked;
the subscription's own dead-letter topic stays the backstop for what pyloto never settled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import FailureKind
from pyloto_cli.logs import bind, get_logger, log_event
from pyloto_cli.pipeline.process import Outcome, Pipeline, TaskResult
from pyloto_cli.pipeline.settlement import Action, keep_dead_letter, settle
from pyloto_cli.pipeline.worker import wind_down
from pyloto_cli.ports import NO_METRICS, DeadLetterStore, Delivery, Metrics, TaskStream

_log = get_logger("worker")
MAX_STREAM_BACKOFF_S = 5.0


class Runner(Protocol):
    """What `serve` and `pyloto worker` run: the pull worker or this one."""

    def notify(self) -> None:
        """Work was enqueued in this process."""
        ...

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set."""
        ...


class StreamWorker:
    """Runs a `TaskStream`'s messages through the pipeline, `concurrency` at a time."""

    def __init__(
        self,
        stream: TaskStream,
        pipeline: Pipeline,
        dead_letters: DeadLetterStore,
        *,
        policy: RetryPolicy,
        concurrency: int = 64,
        grace_s: float = 10.0,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.stream = stream
        self.pipeline = pipeline
        self.dead_letters = dead_letters
        self.policy = policy
        self.concurrency = concurrency
        self.grace_s = grace_s
        self.metrics = metrics
        self._inflight: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    def notify(self) -> None:
        """Nothing to do: the stream delivers as soon as a message is published."""

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until `stop` is set, then wind down (grace period, then nack what is left).

        A stream that fails is logged and opened again after a backoff: the loop never ends on
        its own."""
        self._stop = stop
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self.stream.listen(self._deliver, self.concurrency, stop.wait)
                except Exception as exc:
                    failures += 1
                    delay = min(0.1 * 2**failures, MAX_STREAM_BACKOFF_S)
                    log_event(
                        _log,
                        "queue_stream_failed",
                        logging.WARNING,
                        error=f"{type(exc).__name__}: {exc}",
                        failures=failures,
                        retry_in_s=round(delay, 3),
                    )
                    await _wait(stop, delay)
                    continue
                failures = 0
        finally:
            await self._wind_down()

    def _deliver(self, delivery: Delivery) -> None:
        if self._stop.is_set():  # stopping: another worker (or the next start) takes it
            delivery.nack()
            return
        task = asyncio.create_task(self._handle(delivery), name=f"task:{delivery.task.task_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _wind_down(self) -> None:
        await wind_down(self._inflight, self.grace_s)

    async def _handle(self, delivery: Delivery) -> None:
        task = delivery.task
        if delivery.unreadable is not None:
            with bind(task_id=task.task_id, attempt=delivery.attempt):
                await asyncio.shield(self._bury(delivery, delivery.unreadable, delivery.attempt))
            return
        attempt, previous = delivery.attempt, None
        try:
            while True:
                with bind(task_id=task.task_id, attempt=attempt):
                    log_event(_log, "task_dequeued", logging.DEBUG, kind=task.kind.value)
                    delay, attempt, previous = await self._attempt(delivery, attempt, previous)
                if delay is None:
                    return
                if not await _wait(self._stop, delay):
                    delivery.nack()  # stopping mid-wait: it comes back at once
                    return
        except asyncio.CancelledError:
            delivery.nack()
            raise

    async def _attempt(
        self, delivery: Delivery, attempt: int, previous: FailureKind | None
    ) -> tuple[float | None, int, FailureKind | None]:
        """One attempt, settled: None when the message is done with, else how long to wait
        before the next attempt, its number and what this one failed with."""
        task = delivery.task
        started = time.perf_counter()
        try:
            result = await self.pipeline.process(task, attempt, previous)
        except Exception as exc:  # the one broad catch: any bug becomes a retry, not a stall
            _log.exception("task_failed")
            result = TaskResult(Outcome.RETRY, reason=f"{type(exc).__name__}: {exc}")
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        self.metrics.task_processed(result.outcome.value, duration_ms / 1000)
        decision = settle(result, attempt, self.policy)
        reason = decision.reason or ""
        if decision.action is Action.ACK:
            delivery.ack()
            log_event(_log, "task_processed", outcome=result.outcome.value, duration_ms=duration_ms)
            return None, attempt, previous
        if decision.action is Action.DEAD_LETTER:
            await asyncio.shield(self._bury(delivery, reason, attempt, duration_ms=duration_ms))
            return None, attempt, previous
        if decision.action is Action.DEFER:  # sending is paused: wait, spending no attempt
            log_event(_log, "task_deferred", reason=reason, delay_s=decision.delay_s)
            return decision.delay_s, attempt, previous
        self.metrics.task_retried()
        log_event(_log, "task_retried", reason=reason, delay_s=round(decision.delay_s, 3))
        return decision.delay_s, attempt + 1, decision.failure

    async def _bury(self, delivery: Delivery, reason: str, attempt: int, **fields: object) -> None:
        """Keep the dead letter, then ack: a letter that could not be kept is not lost, as
        the message is then nacked and comes back."""
        try:
            await keep_dead_letter(
                self.dead_letters, self.metrics, _log, delivery.task, reason, attempt, **fields
            )
        except Exception:
            _log.exception("dead_letter_not_recorded")
            delivery.nack()
            return
        delivery.ack()


async def _wait(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait `delay_s` seconds or until `stop` is set; True if the time passed without a stop."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay_s))
    except TimeoutError:
        return True
    return False
