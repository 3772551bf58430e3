"""`POST /tasks/process`: Cloud Tasks pushes one task; the same pipeline runs it.

Cloud Tasks retries anything but a 2xx, so the answer is the retry decision:
- done, a duplicate, or a permanent failure (dead letter recorded first): 200;
- a retryable failure: 503, so Cloud Tasks retries with its own backoff;
- a retryable failure with a delay Cloud Tasks would not honour (131056's 4^attempt s): the task
  is re-created with a `schedule_time` and the answer is 200.
pyloto counts attempts itself (`X-Pyloto-Attempt` on re-created tasks plus Cloud Tasks'
`X-CloudTasks-TaskRetryCount`) and dead-letters once its policy is spent, which must happen
before the queue's own `max_attempts`, or a task would vanish with no dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from pyloto_cli.domain.errors import AmbiguousSendError, PayloadTooLarge
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import ATTEMPT_HEADER, LAST_ERROR_HEADER, DeadLetter, Task
from pyloto_cli.logs import bind, get_logger, log_event
from pyloto_cli.pipeline.process import Outcome, Pipeline, TaskResult
from pyloto_cli.ports import DeadLetterStore, TaskRescheduler
from pyloto_cli.web.body import read_body
from pyloto_cli.web.tasks_auth import TaskAuthenticator, TaskAuthError

RESCHEDULE_AFTER_S = 10.0  # longer waits than this are scheduled, not left to Cloud Tasks
_log = get_logger("tasks")


@dataclass(frozen=True, slots=True)
class PushRole:
    """What `/tasks/process` needs: only a process on a push queue (Cloud Tasks) has one."""

    pipeline: Pipeline
    auth: TaskAuthenticator
    scheduler: TaskRescheduler
    dead_letters: DeadLetterStore
    policy: RetryPolicy


def pushed_attempt(headers: Mapping[str, str]) -> int:
    """1-based attempt: pyloto's base (re-created tasks) plus Cloud Tasks' retry count."""
    base = headers.get(ATTEMPT_HEADER.lower(), "1")
    retries = headers.get("x-cloudtasks-taskretrycount", "0")
    return (int(base) if base.isdigit() else 1) + (int(retries) if retries.isdigit() else 0)


async def process_pushed(request: Request) -> Response:
    """Authenticate, run the task, answer with the retry decision."""
    push: PushRole | None = request.app.state.push
    if push is None:
        return PlainTextResponse("not a push queue", status_code=404)
    try:
        await push.auth.authenticate(request.headers)
    except TaskAuthError as exc:
        log_event(_log, "task_rejected", reason=str(exc), status=exc.status_code)
        return PlainTextResponse("unauthorized", status_code=exc.status_code)
    try:
        task = Task.from_json(await read_body(request))
    except (ValueError, KeyError, TypeError, PayloadTooLarge) as exc:
        log_event(_log, "task_rejected", reason=f"bad task body: {type(exc).__name__}")
        return PlainTextResponse("bad task body", status_code=400)
    attempt = pushed_attempt(request.headers)
    with bind(task_id=task.task_id, attempt=attempt):
        log_event(_log, "task_dequeued", kind=task.kind.value, queue="cloud_tasks")
        started = time.perf_counter()
        last_error = request.headers.get(LAST_ERROR_HEADER.lower())
        result = await push.pipeline.process(task, attempt, last_error)
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        return await _settle(push, task, attempt, result, duration_ms)


async def _settle(
    push: PushRole, task: Task, attempt: int, result: TaskResult, duration_ms: float
) -> Response:
    if result.outcome in (Outcome.DONE, Outcome.SKIPPED):
        log_event(_log, "task_processed", outcome=result.outcome.value, duration_ms=duration_ms)
        return PlainTextResponse("ok")
    reason = result.reason or "unknown error"
    policy = push.policy
    if result.outcome is Outcome.DEFER:  # sending paused: wait, without spending an attempt
        pause = result.delay_s or RESCHEDULE_AFTER_S
        salt = f"defer:{time.time_ns()}"  # same attempt, so a name of its own (per call)
        await push.scheduler.reschedule(task, pause, attempt, salt)
        log_event(_log, "task_deferred", reason=reason, delay_s=pause)
        return PlainTextResponse("deferred")
    if result.outcome is Outcome.DEAD or policy.exhausted(attempt):
        await push.dead_letters.record(DeadLetter(task, reason, attempt, time.time()))
        log_event(_log, "task_dead_lettered", reason=reason, duration_ms=duration_ms)
        return PlainTextResponse("dead-lettered")
    delay = result.delay_s if result.delay_s is not None else policy.delay(attempt)
    ambiguous = reason.startswith(AmbiguousSendError.__name__)  # the next try must know
    if delay > RESCHEDULE_AFTER_S or ambiguous:
        last = reason if ambiguous else None
        await push.scheduler.reschedule(task, delay, attempt + 1, last_error=last)
        log_event(_log, "task_retried", reason=reason, delay_s=delay, rescheduled=True)
        return PlainTextResponse("rescheduled")
    log_event(_log, "task_retried", reason=reason, delay_s=delay)
    headers = {"Retry-After": str(max(1, round(delay)))}
    return PlainTextResponse("retry", status_code=503, headers=headers)
