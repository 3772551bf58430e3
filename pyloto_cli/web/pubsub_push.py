"""`POST /pubsub/push`: a Pub/Sub push subscription delivers one task (Cloud Run without a
background worker); the same pipeline runs it.

Pub/Sub treats 102, 200, 201, 202 and 204 as an ack and anything else as a nack, so the answer
is 200 only once the task is done, a duplicate, or kept as a dead letter (a permanent failure,
spent attempts, a message that is not a task). A retry or a deferral short enough is waited out
within the request and tried again, as the stream worker does, so the conversation's later
messages stay behind it; a longer one is answered 503 with `Retry-After` and Pub/Sub redelivers
it after its own backoff. Attempts are Pub/Sub's `deliveryAttempt`, which it counts only on a
subscription with a dead-letter policy (the docs create it with one).

Authenticated like `/tasks/process` (web/tasks_auth.py): the push subscription's OIDC token, or
`PYLOTO_TASKS_TOKEN` locally, as the `X-Pyloto-Task-Token` header or, since a push subscription
sends no custom header, a `token` query parameter of the push endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from pyloto_cli.domain.errors import PayloadTooLarge, RequestTimeout
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import FailureKind, Task, read_stored
from pyloto_cli.logs import bind, get_logger, log_event
from pyloto_cli.pipeline.process import Outcome, Pipeline, TaskResult
from pyloto_cli.pipeline.settlement import Action, keep_dead_letter, settle
from pyloto_cli.ports import DeadLetterStore
from pyloto_cli.web.body import CLOSE, read_body
from pyloto_cli.web.tasks_auth import TASK_TOKEN_HEADER, TaskAuthenticator, TaskAuthError

IN_REQUEST_WAIT_S = 10.0  # retries waited out within one push request, at most this long
_log = get_logger("pubsub_push")


@dataclass(frozen=True, slots=True)
class PubSubPushRole:
    """What `/pubsub/push` needs: only a process on Pub/Sub with push authentication has one."""

    pipeline: Pipeline
    auth: TaskAuthenticator
    dead_letters: DeadLetterStore
    policy: RetryPolicy
    wait_budget_s: float = IN_REQUEST_WAIT_S


@dataclass(frozen=True, slots=True)
class PushedMessage:
    """The parts of a push request's envelope pyloto reads."""

    task: Task
    unreadable: str | None
    attempt: int


def read_envelope(body: bytes) -> PushedMessage:
    """The task a push request carries; ValueError when the body is not a push envelope."""
    try:
        envelope = json.loads(body)
        message = envelope["message"]
        data = base64.b64decode(message.get("data", ""), validate=True)
        attributes: dict[str, Any] = message.get("attributes") or {}
        message_id = str(message.get("messageId") or message.get("message_id") or "")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise ValueError(f"not a Pub/Sub push envelope: {type(exc).__name__}") from exc
    task_id = str(attributes.get("task_id") or f"pubsub-{message_id}")
    task, unreadable = read_stored(task_id, str(message.get("orderingKey", "")), data)
    attempt = envelope.get("deliveryAttempt")
    return PushedMessage(task, unreadable, attempt if isinstance(attempt, int) else 1)


async def process_pubsub_push(request: Request) -> Response:
    """Authenticate, run the task, answer with the retry decision."""
    role: PubSubPushRole | None = request.app.state.pubsub_push
    if role is None:
        return PlainTextResponse("no Pub/Sub push subscription here", status_code=404)
    credentials = dict(request.headers)
    if "token" in request.query_params:  # a push subscription cannot add a header
        credentials.setdefault(TASK_TOKEN_HEADER.lower(), request.query_params["token"])
    try:
        await role.auth.authenticate(credentials)
    except TaskAuthError as exc:
        log_event(_log, "task_rejected", reason=str(exc), status=exc.status_code)
        return PlainTextResponse("unauthorized", status_code=exc.status_code)
    try:
        body = await read_body(request, request.app.state.settings.body_timeout_seconds)
        pushed = read_envelope(body)
    except RequestTimeout as exc:
        log_event(_log, "task_rejected", reason=str(exc))
        return PlainTextResponse("body timeout", status_code=exc.status_code, headers=CLOSE)
    except (PayloadTooLarge, ValueError) as exc:
        log_event(_log, "task_rejected", reason=f"bad push body: {exc}")
        return PlainTextResponse("bad push body", status_code=400)
    task = pushed.task
    with bind(task_id=task.task_id, attempt=pushed.attempt):
        if pushed.unreadable is not None:
            return await _bury(role, task, pushed.unreadable, pushed.attempt)
        log_event(_log, "task_dequeued", kind=task.kind.value, queue="pubsub_push")
        return await _run(role, task, pushed.attempt)


async def _run(role: PubSubPushRole, task: Task, attempt: int) -> Response:
    """Attempts on this request until one settles, or the next wait exceeds the budget."""
    previous: FailureKind | None = None
    waited = 0.0
    while True:
        started = time.perf_counter()
        result = await _attempt(role.pipeline, task, attempt, previous)
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        role.pipeline.metrics.task_processed(result.outcome.value, duration_ms / 1000)
        decision = settle(result, attempt, role.policy)
        reason, delay = decision.reason or "", decision.delay_s
        if decision.action is Action.ACK:
            log_event(_log, "task_processed", outcome=result.outcome.value, duration_ms=duration_ms)
            return PlainTextResponse("ok")
        if decision.action is Action.DEAD_LETTER:
            return await _bury(role, task, reason, attempt, duration_ms=duration_ms)
        if decision.action is Action.RETRY:
            role.pipeline.metrics.task_retried()
            attempt, previous = attempt + 1, decision.failure
        event = "task_deferred" if decision.action is Action.DEFER else "task_retried"
        if waited + delay > role.wait_budget_s:  # Pub/Sub redelivers it after its backoff
            log_event(_log, event, reason=reason, delay_s=round(delay, 3), answered=503)
            headers = {"Retry-After": str(max(1, round(delay)))}
            return PlainTextResponse("retry", status_code=503, headers=headers)
        log_event(_log, event, reason=reason, delay_s=round(delay, 3))
        await asyncio.sleep(delay)  # the retry's backoff, within this request
        waited += delay


async def _attempt(
    pipeline: Pipeline, task: Task, attempt: int, previous: FailureKind | None
) -> TaskResult:
    with bind(attempt=attempt):
        try:
            return await pipeline.process(task, attempt, previous)
        except Exception as exc:  # any bug becomes a retry, not a stuck request
            _log.exception("task_failed")
            return TaskResult(Outcome.RETRY, reason=f"{type(exc).__name__}: {exc}")


async def _bury(
    role: PubSubPushRole, task: Task, reason: str, attempt: int, **fields: object
) -> Response:
    """Keep the letter, count it, warn; 200, so Pub/Sub lets the message go."""
    metrics = role.pipeline.metrics
    await keep_dead_letter(role.dead_letters, metrics, _log, task, reason, attempt, **fields)
    return PlainTextResponse("dead-lettered")
