"""`POST /tasks/process`: Cloud Tasks pushes one task; the same pipeline runs it.

Cloud Tasks retries anything but a 2xx, so the answer applies the decision the pull worker
makes too (`pipeline.settlement.settle`):
- done, a duplicate, or a permanent failure (dead letter recorded first): 200;
- a retryable failure: 503, so Cloud Tasks retries with its own backoff (a known transient
  one, Graph or the LLM down, until pyloto's retry horizon, whatever the attempt count: the
  queue's `max-attempts=-1` and `max-retry-duration` = the horizon, docs/deploy.md);
- a retryable failure with a delay Cloud Tasks would not honour (131056's 4^attempt s), or one
  whose next attempt must know how it failed (an ambiguous send): the task is re-created with a
  `schedule_time` (and `X-Pyloto-Previous-Failure`) and the answer is 200.
pyloto counts attempts itself (`X-Pyloto-Attempt` on re-created tasks plus Cloud Tasks'
`X-CloudTasks-TaskRetryCount`) and dead-letters once its policy is spent, which must happen
before the queue's own `max_attempts`, or a task would vanish with no dead letter.

A message runs only while its call holds the conversation's lease (`ConversationLease`): a call
whose conversation another call is running waits for it, up to PYLOTO_CONVERSATION_WAIT_SECONDS.
If it is still held then, the task is re-created due in `Retry-After` seconds with its attempt
unchanged (a 5xx would count as an attempt in Cloud Tasks' retry count) and the answer is 200.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from pyloto_cli.domain.errors import PayloadTooLarge, RequestTimeout
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import (
    ATTEMPT_HEADER,
    PREVIOUS_FAILURE_HEADER,
    FailureKind,
    Task,
    TaskKind,
    read_stored,
)
from pyloto_cli.logs import bind, get_logger, log_event
from pyloto_cli.pipeline.conversation_lease import ConversationLease
from pyloto_cli.pipeline.process import Pipeline, TaskResult
from pyloto_cli.pipeline.settlement import Action, keep_dead_letter, settle
from pyloto_cli.ports import DeadLetterStore, TaskRescheduler
from pyloto_cli.web.body import CLOSE, read_body
from pyloto_cli.web.tasks_auth import TaskAuthenticator, TaskAuthError

RESCHEDULE_AFTER_S = 10.0  # longer waits than this are scheduled, not left to Cloud Tasks
BUSY_RETRY_S = 5.0  # a task whose conversation stayed busy is tried again this much later
_log = get_logger("tasks")


@dataclass(frozen=True, slots=True)
class PushRole:
    """What `/tasks/process` needs: only a process on a push queue (Cloud Tasks) has one."""

    pipeline: Pipeline
    auth: TaskAuthenticator
    scheduler: TaskRescheduler
    dead_letters: DeadLetterStore
    policy: RetryPolicy
    lease: ConversationLease | None = None


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
        body = await read_body(request, request.app.state.settings.body_timeout_seconds)
    except RequestTimeout as exc:
        log_event(_log, "task_rejected", reason=str(exc))
        return PlainTextResponse("body timeout", status_code=exc.status_code, headers=CLOSE)
    except PayloadTooLarge as exc:
        log_event(_log, "task_rejected", reason=f"bad task body: {type(exc).__name__}")
        return PlainTextResponse("bad task body", status_code=400)
    attempt = pushed_attempt(request.headers)
    task, unreadable = read_stored(_pushed_name(request.headers, body), "", body)
    if unreadable is not None:
        # never processable: kept as a dead letter and answered 200, so Cloud Tasks does not
        # retry it until its own limit
        return await _dead_letter(push, task, unreadable, attempt, task_id=task.task_id)
    with bind(task_id=task.task_id, attempt=attempt):
        log_event(_log, "task_dequeued", kind=task.kind.value, queue="cloud_tasks")
        previous = FailureKind.parse(request.headers.get(PREVIOUS_FAILURE_HEADER.lower()))
        async with _conversation(push, task) as held:
            if not held:
                return await _busy(push, task, attempt, previous)
            started = time.perf_counter()
            result = await push.pipeline.process(task, attempt, previous)
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            response = await _settle(push, task, attempt, result, duration_ms)
        push.pipeline.metrics.task_processed(result.outcome.value, duration_ms / 1000)
        return response


def _conversation(push: PushRole, task: Task) -> contextlib.AbstractAsyncContextManager[bool]:
    """The conversation's lease for a message (statuses and events change no session)."""
    if push.lease is None or task.kind is not TaskKind.MESSAGE:
        return contextlib.nullcontext(True)
    return push.lease.hold(task.conversation_key)


async def _busy(push: PushRole, task: Task, attempt: int, previous: FailureKind | None) -> Response:
    """Another call kept the conversation for the whole wait: run this task later, as the same
    attempt (it has not run)."""
    salt = f"busy:{time.time_ns()}"  # same attempt, so a name of its own (per call)
    await push.scheduler.reschedule(task, BUSY_RETRY_S, attempt, salt, previous)
    log_event(_log, "task_conversation_busy", delay_s=BUSY_RETRY_S)
    return PlainTextResponse("conversation busy", headers={"Retry-After": str(round(BUSY_RETRY_S))})


def _pushed_name(headers: Mapping[str, str], body: bytes) -> str:
    """The id a task body that cannot be read is dead-lettered under: Cloud Tasks' name for
    the task, else a hash of the body (the same body, the same letter)."""
    name = headers.get("x-cloudtasks-taskname")
    return name or f"unreadable-{hashlib.sha256(body).hexdigest()[:16]}"


async def _dead_letter(
    push: PushRole, task: Task, reason: str, attempt: int, **fields: object
) -> Response:
    """Keep the letter, count it, warn; 200, so Cloud Tasks lets the task go."""
    metrics = push.pipeline.metrics
    await keep_dead_letter(push.dead_letters, metrics, _log, task, reason, attempt, **fields)
    return PlainTextResponse("dead-lettered")


async def _settle(
    push: PushRole, task: Task, attempt: int, result: TaskResult, duration_ms: float
) -> Response:
    """Apply the shared decision (`settlement.settle`) the way Cloud Tasks understands it."""
    decision = settle(result, attempt, push.policy, time.time())
    reason, delay = decision.reason or "", decision.delay_s
    if decision.action is Action.ACK:
        log_event(_log, "task_processed", outcome=result.outcome.value, duration_ms=duration_ms)
        return PlainTextResponse("ok")
    if decision.action is Action.DEFER:  # sending paused: wait, without spending an attempt
        salt = f"defer:{time.time_ns()}"  # same attempt, so a name of its own (per call)
        await push.scheduler.reschedule(task, delay, attempt, salt)
        log_event(_log, "task_deferred", reason=reason, delay_s=delay)
        return PlainTextResponse("deferred")
    if decision.action is Action.DEAD_LETTER:
        return await _dead_letter(push, task, reason, attempt, duration_ms=duration_ms)
    push.pipeline.metrics.task_retried()
    # a retry: Cloud Tasks' own retry carries nothing, so one that must know how this attempt
    # failed, or must wait longer than Cloud Tasks would, is created again by pyloto
    if delay > RESCHEDULE_AFTER_S or decision.failure is not None:
        await push.scheduler.reschedule(task, delay, attempt + 1, previous_failure=decision.failure)
        log_event(_log, "task_retried", reason=reason, delay_s=delay, rescheduled=True)
        return PlainTextResponse("rescheduled")
    log_event(_log, "task_retried", reason=reason, delay_s=delay)
    headers = {"Retry-After": str(max(1, round(delay)))}
    return PlainTextResponse("retry", status_code=503, headers=headers)
