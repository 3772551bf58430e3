"""What to do with a task after an attempt: written once, for the pull worker and for
`POST /tasks/process`.

An attempt's `TaskResult` plus its attempt number and the retry policy give one `Settlement`:
ack it, defer it (sending is paused: the attempt is given back), retry it after a delay
(carrying the failure kind the next attempt must know), or dead-letter it with the reason.
The caller only applies it: the worker through its queue, the endpoint through its HTTP
answer and Cloud Tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import FailureKind
from pyloto_cli.pipeline.process import Outcome, TaskResult

# a pause with no length of its own (no Retry-After on the token error) waits this long
DEFAULT_DEFER_S = 60.0
_UNKNOWN = "unknown error"


class Action(StrEnum):
    """What becomes of the task."""

    ACK = "ack"
    DEFER = "defer"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Settlement:
    """The decision for one attempt. `delay_s` is set for DEFER and RETRY; `failure` only for
    a RETRY whose next attempt must know how this one failed."""

    action: Action
    reason: str | None = None
    delay_s: float = 0.0
    failure: FailureKind | None = None


def settle(result: TaskResult, attempt: int, policy: RetryPolicy) -> Settlement:
    """The decision for attempt number `attempt` (1-based) that ended with `result`.

    A retryable failure is dead-lettered once `policy` has no attempt left; its delay is the
    failure's own (e.g. Graph's Retry-After) or else the policy's backoff.
    """
    if result.outcome in (Outcome.DONE, Outcome.SKIPPED, Outcome.REPLY_EXPIRED):
        return Settlement(Action.ACK)  # an expired reply: no retry can reopen the window
    reason = result.reason or _UNKNOWN
    if result.outcome is Outcome.DEFER:
        delay = DEFAULT_DEFER_S if result.delay_s is None else result.delay_s
        return Settlement(Action.DEFER, reason, delay)
    if result.outcome is Outcome.DEAD or policy.exhausted(attempt):
        return Settlement(Action.DEAD_LETTER, reason)
    delay = policy.delay(attempt) if result.delay_s is None else result.delay_s
    return Settlement(Action.RETRY, reason, delay, result.failure)
