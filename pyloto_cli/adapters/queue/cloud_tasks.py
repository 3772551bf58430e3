"""`TaskSink` on Google Cloud Tasks: one HTTP task per item, pushed to pyloto's `/tasks/process`.

Cloud Tasks pushes; it does not lease. So this adapter implements only `TaskSink` (plus
`reschedule` and `stats`); retries, the dispatch deadline and the delivery itself belong to Cloud
Tasks, and the handler answers 2xx once the task is done (or dead-lettered in a
`DeadLetterStore`), anything else to have it retried.

Task names are `sha256(task_id)` in hex: Cloud Tasks refuses a second task with the same name
for about an hour (ALREADY_EXISTS), which absorbs Meta's redeliveries cheaply; the Deduper covers
the rest of Meta's 7-day horizon. The emulator does not de-duplicate names.

`enqueue` returns only when every `create_task` answered OK or ALREADY_EXISTS; anything else is a
`TransientError`, so the webhook answers 503 and Meta redelivers the whole POST later.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NoReturn, Self

import grpc
from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcAsyncIOTransport

from pyloto_cli.adapters.queue.google_batch import once_each, raise_batch_failure
from pyloto_cli.domain.errors import BackendUnavailable, TransientError
from pyloto_cli.domain.task import (
    ATTEMPT_HEADER,
    PREVIOUS_FAILURE_HEADER,
    EnqueueResult,
    FailureKind,
    QueueStats,
    Task,
)
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.settings import Settings

TOKEN_HEADER = "X-Pyloto-Task-Token"  # noqa: S105 - a header name, not a secret
MIN_DISPATCH_DEADLINE_S = 15.0  # Cloud Tasks' floor for HTTP targets
MAX_DISPATCH_DEADLINE_S = 1800.0  # and its ceiling
DEADLINE_MARGIN_S = 10.0  # sending and saving after the LLM stages
_GOOGLE_ADDRESS = "cloudtasks.googleapis.com"
_CALL_TIMEOUT_S = 10.0
_STATS_CAP = 1000  # ListTasks is paged and slow; count this many at most
_MAX_IN_FLIGHT = 100  # a 1000-item POST: creates share one channel, 100 at a time

_log = get_logger("queue.cloud_tasks")


def cloud_task_id(key: str) -> str:
    """A Cloud Tasks task id for any key: its sha256 in hex (letters and digits only)."""
    return hashlib.sha256(key.encode()).hexdigest()


def dispatch_deadline_for(llm_deadline_s: float) -> float:
    """How long Cloud Tasks waits for the handler: the pipeline's deadline plus a margin."""
    wanted = llm_deadline_s + DEADLINE_MARGIN_S
    return min(MAX_DISPATCH_DEADLINE_S, max(MIN_DISPATCH_DEADLINE_S, wanted))


@dataclass(frozen=True, slots=True)
class CloudTasksConfig:
    """Where tasks go and how they authenticate to the handler."""

    project: str
    location: str
    queue: str
    handler_url: str
    service_account: str | None = None
    tasks_token: str | None = None
    dispatch_deadline_s: float = 30.0
    emulator_host: str | None = None

    @property
    def queue_path(self) -> str:
        """`projects/P/locations/L/queues/Q`."""
        return f"projects/{self.project}/locations/{self.location}/queues/{self.queue}"

    @property
    def address(self) -> str:
        """The emulator's host:port, or Google's endpoint."""
        return self.emulator_host or _GOOGLE_ADDRESS

    @classmethod
    def from_settings(cls, settings: Settings) -> CloudTasksConfig:
        """The config from settings; raises BackendUnavailable naming what is missing."""
        missing = [
            name
            for name, value in (
                ("CLOUDTASKS_PROJECT (or GOOGLE_CLOUD_PROJECT)", settings.cloudtasks_project_id),
                ("CLOUDTASKS_HANDLER_URL", settings.cloudtasks_handler_url),
            )
            if not value
        ]
        if missing:
            raise BackendUnavailable(f"Cloud Tasks queue backend needs {' and '.join(missing)}")
        token = settings.tasks_token.get_secret_value() if settings.tasks_token else None
        return cls(
            project=str(settings.cloudtasks_project_id),
            location=settings.cloudtasks_location,
            queue=settings.cloudtasks_queue_name,
            handler_url=str(settings.cloudtasks_handler_url),
            service_account=settings.cloudtasks_service_account,
            tasks_token=token,
            # a call may first wait for its conversation's lease, then run the pipeline
            dispatch_deadline_s=dispatch_deadline_for(
                settings.llm_deadline + settings.conversation_wait_seconds
            ),
            emulator_host=settings.cloud_tasks_emulator_host,
        )


def open_client(config: CloudTasksConfig) -> Any:
    """A `CloudTasksAsyncClient` for `config` (the emulator's when set); close its transport."""
    host = config.emulator_host
    if host:
        channel = grpc.aio.insecure_channel(host)
        transport = CloudTasksGrpcAsyncIOTransport(channel=channel)
        return tasks_v2.CloudTasksAsyncClient(transport=transport)
    try:
        return tasks_v2.CloudTasksAsyncClient()
    except DefaultCredentialsError as exc:
        raise BackendUnavailable(
            f"Cloud Tasks at {config.address} needs Application Default Credentials: {exc}"
        ) from exc


async def probe_queue(config: CloudTasksConfig, *, timeout_s: float = _CALL_TIMEOUT_S) -> None:
    """One GetQueue; BackendUnavailable when the queue is missing or cannot be reached.

    Unlike the sink, it never creates the queue, not even on the emulator: a check must not
    repair what it checks."""
    client = open_client(config)
    try:
        await client.get_queue(name=config.queue_path, retry=None, timeout=timeout_s)
    except gexc.NotFound as exc:
        raise BackendUnavailable(
            f"queue {config.queue_path} does not exist at {config.address}; create it with: "
            f"gcloud tasks queues create {config.queue} --location={config.location}"
        ) from exc
    except gexc.GoogleAPICallError as exc:
        raise BackendUnavailable(
            f"queue {config.queue_path} at {config.address} cannot be reached: {exc.message or exc}"
        ) from exc
    finally:
        await client.transport.close()


class CloudTasksSink:
    """Creates Cloud Tasks HTTP tasks; an async context manager owning the gRPC client.

    On the emulator the queue is created on enter (its state lives in memory); in production
    the queue must exist (`gcloud tasks queues create`), and a missing or unreachable queue is
    one BackendUnavailable at start-up.
    """

    def __init__(self, config: CloudTasksConfig, *, client: Any | None = None) -> None:
        self.config = config
        self._shared = client
        self._client: Any | None = None
        self._closed = False
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("CloudTasksSink cannot be reopened once closed")
        client = self._shared or self._open_client()
        try:
            await self._check_queue(client)
        except BaseException:
            if self._shared is None:
                await client.transport.close()
            raise
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._shared is None:
            await client.transport.close()

    # --- TaskSink -------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        """Create one task per item, concurrently; return once all are stored or known."""
        unique, repeated = once_each(tasks)  # Cloud Tasks sees each name once
        created = await asyncio.gather(
            *(self._create(self._http_task(t, cloud_task_id(t.task_id))) for t in unique.values()),
            return_exceptions=True,
        )
        enqueued: list[str] = []
        duplicates = list(repeated)
        failures: list[tuple[str, BaseException]] = []
        for task_id, outcome in zip(unique, created, strict=True):
            if isinstance(outcome, BaseException):
                failures.append((task_id, outcome))
            else:
                (enqueued if outcome else duplicates).append(task_id)
        if failures:
            self._raise_failed(failures, len(unique))
        return EnqueueResult(enqueued=tuple(enqueued), duplicates=tuple(duplicates))

    async def reschedule(
        self,
        task: Task,
        delay_s: float,
        attempt: int,
        salt: str = "",
        previous_failure: FailureKind | None = None,
    ) -> None:
        """Create the task again, due in `delay_s` seconds, under a name of its own per attempt.

        For retries Cloud Tasks cannot time itself (e.g. Graph 131056: 4**attempt seconds). The
        name is stable per (task, attempt, salt), so a handler that is itself retried does not
        schedule twice; a deferral that keeps the attempt passes a `salt` to get a new name.
        """
        name_id = cloud_task_id(f"{task.task_id}\x00retry\x00{attempt}\x00{salt}")
        due = datetime.now(UTC) + timedelta(seconds=max(0.0, delay_s))
        try:
            http_task = self._http_task(task, name_id, due=due, attempt=attempt)
            if previous_failure is not None:  # Cloud Tasks keeps nothing between tries
                http_task.http_request.headers[PREVIOUS_FAILURE_HEADER] = previous_failure.value
            created = await self._create(http_task)
        except gexc.GoogleAPICallError as exc:
            raise TransientError(f"Cloud Tasks reschedule failed: {exc.message or exc}") from exc
        log_event(
            _log,
            "cloud_task_rescheduled",
            task_id=task.task_id,
            attempt=attempt,
            delay_s=round(delay_s, 3),
            duplicate=not created,
        )

    async def stats(self) -> QueueStats:
        """The queue's state and (up to 1000) waiting tasks, as far as ListTasks tells."""
        client = self._open()
        queue = await client.get_queue(name=self.config.queue_path, timeout=_CALL_TIMEOUT_S)
        now = datetime.now(UTC)
        ready = retrying = counted = 0
        oldest: datetime | None = None
        pager = await client.list_tasks(parent=self.config.queue_path, timeout=_CALL_TIMEOUT_S)
        async for item in pager:
            counted += 1
            due = item.schedule_time or now
            if item.dispatch_count or due > now:
                retrying += 1
            else:
                ready += 1
            born = item.create_time or due
            oldest = born if oldest is None or born < oldest else oldest
            if counted >= _STATS_CAP:
                break
        return QueueStats(
            backend="cloud_tasks",
            ready=ready,
            retrying=retrying,
            oldest_age_s=max(0.0, (now - oldest).total_seconds()) if oldest else None,
            extra={
                "queue": self.config.queue_path,
                "state": tasks_v2.Queue.State(queue.state).name,
                "counted_up_to": _STATS_CAP,
                "capped": counted >= _STATS_CAP,
            },
        )

    # --- helpers --------------------------------------------------------------------------------

    def _open_client(self) -> Any:
        return open_client(self.config)

    def _open(self) -> Any:
        if self._client is None:
            raise BackendUnavailable("CloudTasksSink is not open")
        return self._client

    async def _check_queue(self, client: Any) -> None:
        path = self.config.queue_path
        try:
            if self.config.emulator_host:
                parent, _, _ = path.rpartition("/queues/")
                queue = tasks_v2.Queue(name=path)
                await client.create_queue(
                    parent=parent, queue=queue, retry=None, timeout=_CALL_TIMEOUT_S
                )
            await client.get_queue(name=path, retry=None, timeout=_CALL_TIMEOUT_S)
        except gexc.NotFound as exc:
            raise BackendUnavailable(
                f"Cloud Tasks queue {path} does not exist at {self.config.address}; create it "
                f"with: gcloud tasks queues create {self.config.queue} "
                f"--location={self.config.location}"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise BackendUnavailable(
                f"Cloud Tasks queue {path} at {self.config.address} cannot be reached: "
                f"{exc.message or exc}"
            ) from exc

    def _http_task(
        self, task: Task, name_id: str, *, due: datetime | None = None, attempt: int | None = None
    ) -> tasks_v2.Task:
        cfg = self.config
        headers = {"Content-Type": "application/json"}
        if cfg.tasks_token:
            headers[TOKEN_HEADER] = cfg.tasks_token
        if attempt is not None:
            headers[ATTEMPT_HEADER] = str(attempt)
        request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=cfg.handler_url,
            headers=headers,
            body=task.to_json(),
        )
        if cfg.service_account:
            request.oidc_token = tasks_v2.OidcToken(
                service_account_email=cfg.service_account, audience=cfg.handler_url
            )
        http_task = tasks_v2.Task(
            name=f"{cfg.queue_path}/tasks/{name_id}",
            http_request=request,
            dispatch_deadline=timedelta(seconds=cfg.dispatch_deadline_s),
        )
        if due is not None:
            http_task.schedule_time = due
        return http_task

    async def _create(self, http_task: tasks_v2.Task) -> bool:
        """True if created, False if a task of that name already exists."""
        try:
            async with self._in_flight:
                await self._open().create_task(
                    parent=self.config.queue_path, task=http_task, timeout=_CALL_TIMEOUT_S
                )
        except gexc.AlreadyExists:
            return False
        return True

    def _raise_failed(self, failures: list[tuple[str, BaseException]], total: int) -> NoReturn:
        raise_batch_failure(
            _log,
            [error for _, error in failures],
            total,
            event="cloud_tasks_enqueue_failed",
            summary="Cloud Tasks stored {ok} of {total} tasks",
            queue=self.config.queue,
        )
