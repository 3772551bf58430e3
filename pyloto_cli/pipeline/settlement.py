"""What to do with a task after an attempt: written once, for the pull worker and for
`POST /tasks/process`.

An attempt's `TaskResult` plus its attempt number and the retry policy give one `Settlement`:
ack it, defer it (pyloto's own wait: its pacing, a pause, an open breaker; the attempt is given
back), retry it after a delay (carrying the failure kind the next attempt must know), or
dead-letter it with the reason. A retry of a known transient failure (the result carries the
message's timestamp, `since`) is not counted: it is bounded by the policy's deadline (the retry
horizon or the 24-hour window) instead of `max_attempts`, which bounds failures of unknown kind.
The caller only applies it: the worker through its queue, the endpoint through its HTTP
answer and Cloud Tasks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum

from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import DeadLetter, FailureKind, Task
from pyloto_cli.logs import log_event
from pyloto_cli.pipeline.process import Outcome, TaskResult
from pyloto_cli.ports import DeadLetterStore, Metrics

# a pause with no length of its own (no Retry-After on the token error) waits this long
DEFAULT_DEFER_S = 60.0
_UNKNOWN = "unknown error"
_GAVE_UP = "gave up: past the retry horizon or the 24-hour reply window"


class Action(StrEnum):
    """What becomes of the task."""

    ACK = "ack"
    DEFER = "defer"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Settlement:
    """The decision for one attempt. `delay_s` is set for DEFER and RETRY; `failure` only for
    a RETRY whose next attempt must know how this one failed; `counted` is False for a RETRY
    that gives its attempt back (a known transient failure, bounded by time instead)."""

    action: Action
    reason: str | None = None
    delay_s: float = 0.0
    failure: FailureKind | None = None
    counted: bool = True


def settle(
    result: TaskResult, attempt: int, policy: RetryPolicy, now: float | None = None
) -> Settlement:
    """The decision for attempt number `attempt` (1-based) that ended with `result`, at `now`
    (epoch seconds; the wall clock when None).

    A failure of unknown kind is dead-lettered once `policy` has no attempt left; a known
    transient one, or a wait, once the policy's deadline for the message has passed. The
    delay is the failure's own (e.g. Graph's Retry-After) or else the policy's backoff; the
    last retry is made at the deadline.
    """
    if result.outcome in (Outcome.DONE, Outcome.SKIPPED, Outcome.REPLY_EXPIRED):
        return Settlement(Action.ACK)  # an expired reply: no retry can reopen the window
    reason = result.reason or _UNKNOWN
    clock = time.time() if now is None else now
    deadline = None if result.since is None else policy.deadline(result.since)
    if deadline is not None and clock >= deadline and result.outcome is not Outcome.DEAD:
        return Settlement(Action.DEAD_LETTER, f"{reason}; {_GAVE_UP}")
    if result.outcome is Outcome.DEFER:
        wait = DEFAULT_DEFER_S if result.delay_s is None else result.delay_s
        return Settlement(Action.DEFER, reason, _until(wait, clock, deadline))
    if result.outcome is Outcome.DEAD:
        return Settlement(Action.DEAD_LETTER, reason)
    if deadline is not None and result.since is not None and result.failure is None:
        backoff = result.delay_s
        if backoff is None:
            backoff = policy.delay_since(clock - result.since)
        return Settlement(Action.RETRY, reason, _until(backoff, clock, deadline), counted=False)
    if policy.exhausted(attempt):
        return Settlement(Action.DEAD_LETTER, reason)
    delay = policy.delay(attempt) if result.delay_s is None else result.delay_s
    return Settlement(Action.RETRY, reason, delay, result.failure)


def _until(delay: float, now: float, deadline: float | None) -> float:
    """`delay`, shortened so the next try is no later than `deadline`."""
    return delay if deadline is None else max(0.0, min(delay, deadline - now))


async def keep_dead_letter(
    dead_letters: DeadLetterStore,
    metrics: Metrics,
    log: logging.Logger,
    task: Task,
    reason: str,
    attempt: int,
    **fields: object,
) -> None:
    """Keep the dead letter, count it and warn (`task_dead_lettered`): what a push endpoint
    does before it answers 200, and the stream worker before it acks, so the queue lets the
    task go."""
    await dead_letters.record(DeadLetter(task, reason, attempt, time.time()))
    metrics.task_dead_lettered()
    log_event(log, "task_dead_lettered", logging.WARNING, reason=reason, **fields)
