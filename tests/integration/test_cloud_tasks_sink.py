"""`CloudTasksSink` against the real Cloud Tasks emulator, delivering to a receiver on loopback.

The emulator POSTs each task to a tiny HTTP server the test runs on 127.0.0.1 (standing in for
pyloto's `/tasks/process`), which records the request and answers the status the test asks for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcAsyncIOTransport

from pyloto_cli.adapters.queue.cloud_tasks import (
    TOKEN_HEADER,
    CloudTasksConfig,
    CloudTasksSink,
    cloud_task_id,
    dispatch_deadline_for,
)
from pyloto_cli.domain.errors import BackendUnavailable, TransientError
from pyloto_cli.domain.task import (
    ATTEMPT_HEADER,
    PREVIOUS_FAILURE_HEADER,
    FailureKind,
    Task,
    TaskKind,
)
from pyloto_cli.settings import Settings
from tests.servers import CloudTasksQueueRef

TOKEN = "integration-task-token-0123456789"
WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request the emulator made to the receiver."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A minimal HTTP/1.1 server: records each request, answers the next planned status."""

    def __init__(self) -> None:
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self.statuses: list[int] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/tasks/process"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            await self.deliveries.put(Delivery(head[0].split(" ")[1], headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    async def next(self) -> Delivery:
        """The next delivery, or a failure after WAIT_S."""
        return await asyncio.wait_for(self.deliveries.get(), WAIT_S)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def config(cloud_tasks_queue: CloudTasksQueueRef, receiver: Receiver) -> CloudTasksConfig:
    return CloudTasksConfig(
        project=cloud_tasks_queue.project,
        location=cloud_tasks_queue.location,
        queue=cloud_tasks_queue.queue,
        handler_url=receiver.url,
        tasks_token=TOKEN,
        emulator_host=cloud_tasks_queue.host,
    )


@pytest.fixture
async def sink(config: CloudTasksConfig) -> AsyncIterator[CloudTasksSink]:
    async with CloudTasksSink(config) as sink:
        yield sink


def make_task(n: int) -> Task:
    wamid = f"wamid.HBgLMTU1NTAwMDEyMzQVAgASGBQzQUJD{n:04d}RUYwMTIzNDU2Nzg5QUIA"
    return Task(
        task_id=wamid,
        kind=TaskKind.MESSAGE,
        conversation_key="106540352242922:US.8431092275",
        phone_number_id="106540352242922",
        received_at=1_700_000_000.5 + n,
        item={"from": "15550001234", "id": wamid, "type": "text", "text": {"body": f"Olá {n} ☕"}},
        value={"messaging_product": "whatsapp", "metadata": {"phone_number_id": "106540352242922"}},
    )


pytestmark = pytest.mark.cloud_tasks


async def test_enqueued_tasks_arrive_as_json_with_the_token_and_a_hashed_name(
    sink: CloudTasksSink, receiver: Receiver
) -> None:
    """Each task is POSTed to the handler once; its body parses back to the same Task."""
    tasks = [make_task(1), make_task(2), make_task(3)]
    result = await sink.enqueue([*tasks, tasks[0]])
    assert sorted(result.enqueued) == sorted(t.task_id for t in tasks)
    assert result.duplicates == (tasks[0].task_id,)
    got = [await receiver.next() for _ in tasks]
    by_id = {Task.from_json(d.body).task_id: d for d in got}
    for task in tasks:
        delivery = by_id[task.task_id]
        assert Task.from_json(delivery.body) == task
        assert delivery.path == "/tasks/process"
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.headers[TOKEN_HEADER.lower()] == TOKEN
        assert delivery.headers["x-cloudtasks-taskname"] == cloud_task_id(task.task_id)
        assert delivery.headers["x-cloudtasks-queuename"].endswith(sink.config.queue)
        assert delivery.headers["x-cloudtasks-taskretrycount"] == "0"
    assert receiver.deliveries.empty()


async def test_a_task_with_lone_surrogates_arrives_as_utf8_with_replacement_characters(
    sink: CloudTasksSink, receiver: Receiver
) -> None:
    """A JSON "\\ud800" escape in the text and the wamid: the body Cloud Tasks carries is UTF-8
    and parses back to the task, U+FFFD in their place."""
    lone = json.loads('"\\ud800"')
    item = {"id": f"wamid.{lone}", "type": "text", "text": {"body": f"a{lone}b"}}
    task = replace(make_task(9), task_id=f"wamid.{lone}", item=item)
    assert (await sink.enqueue([task])).enqueued == ("wamid.\ufffd",)
    delivery = await receiver.next()
    delivery.body.decode("utf-8")  # strict
    again = Task.from_json(delivery.body)
    assert again == task
    assert again.item["text"]["body"] == "a\ufffdb"


async def test_a_5xx_answer_is_retried_with_a_growing_retry_count(
    sink: CloudTasksSink, receiver: Receiver
) -> None:
    """The handler's 503 and 500 make Cloud Tasks deliver again; the 200 ends it."""
    receiver.statuses = [503, 500, 200]
    await sink.enqueue([make_task(7)])
    got = [await receiver.next() for _ in range(3)]
    assert [d.headers["x-cloudtasks-taskretrycount"] for d in got] == ["0", "1", "2"]
    assert all(Task.from_json(d.body) == make_task(7) for d in got)


async def test_reschedule_delivers_later_under_a_new_name_with_the_attempt(
    sink: CloudTasksSink, receiver: Receiver
) -> None:
    """A rescheduled task carries its due time (ETA), its attempt and a per-attempt name."""
    task = make_task(9)
    before = datetime.now(UTC).timestamp()
    await sink.reschedule(task, delay_s=0.3, attempt=2)
    delivery = await receiver.next()
    assert Task.from_json(delivery.body) == task
    assert delivery.headers[ATTEMPT_HEADER.lower()] == "2"
    assert delivery.headers["x-cloudtasks-taskname"] not in {cloud_task_id(task.task_id), ""}
    assert float(delivery.headers["x-cloudtasks-tasketa"]) >= before + 0.3


async def test_reschedule_carries_the_previous_failure_kind(
    sink: CloudTasksSink, receiver: Receiver
) -> None:
    """Cloud Tasks keeps nothing between tries: the kind travels in a header of its own."""
    await sink.reschedule(
        make_task(8), delay_s=0, attempt=2, previous_failure=FailureKind.AMBIGUOUS_SEND
    )
    delivery = await receiver.next()
    assert delivery.headers[PREVIOUS_FAILURE_HEADER.lower()] == "ambiguous_send"


async def test_stats_show_the_queue_state_and_waiting_tasks(sink: CloudTasksSink) -> None:
    """A task due in an hour is counted as waiting; the queue reports RUNNING."""
    empty = await sink.stats()
    assert (empty.backend, empty.depth, empty.extra["state"]) == ("cloud_tasks", 0, "RUNNING")
    await sink.reschedule(make_task(4), delay_s=3600, attempt=1)
    stats = await sink.stats()
    assert stats.depth == 1
    assert stats.retrying == 1
    assert stats.extra["queue"] == sink.config.queue_path


async def test_a_failed_create_is_a_transient_error(
    sink: CloudTasksSink, cloud_tasks_queue: CloudTasksQueueRef
) -> None:
    """When Cloud Tasks refuses (here: the queue was deleted), enqueue raises TransientError."""
    channel = grpc.aio.insecure_channel(cloud_tasks_queue.host)
    client = tasks_v2.CloudTasksAsyncClient(
        transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
    )
    try:
        await client.delete_queue(name=cloud_tasks_queue.name)
    finally:
        await client.transport.close()  # type: ignore[no-untyped-call]
    with pytest.raises(TransientError, match="stored 0 of 2"):
        await sink.enqueue([make_task(1), make_task(2)])


async def test_an_unreachable_emulator_is_one_clear_error(
    config: CloudTasksConfig, unused_tcp_port: int
) -> None:
    """Start-up against a closed port names Cloud Tasks, the queue and the address."""
    dead = CloudTasksConfig(**{**_fields(config), "emulator_host": f"127.0.0.1:{unused_tcp_port}"})
    with pytest.raises(BackendUnavailable, match=rf"Cloud Tasks .* 127\.0\.0\.1:{unused_tcp_port}"):
        async with CloudTasksSink(dead):
            pass


def _fields(config: CloudTasksConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in CloudTasksConfig.__slots__}


# --- without the emulator: what it cannot show ------------------------------------------------


class FakeClient:
    """Answers create_task like production for names it has seen: ALREADY_EXISTS."""

    def __init__(self, fail: Callable[[str], Exception | None] = lambda name: None) -> None:
        self.names: list[str] = []
        self.requests: list[tasks_v2.Task] = []
        self.fail = fail

    async def get_queue(self, **kwargs: Any) -> tasks_v2.Queue:
        return tasks_v2.Queue(name=kwargs["name"], state=tasks_v2.Queue.State.RUNNING)

    async def create_task(self, *, parent: str, task: tasks_v2.Task, **kwargs: Any) -> Any:
        error = self.fail(task.name)
        if error is not None:
            raise error
        if task.name in self.names:
            raise gexc.AlreadyExists(f"{task.name} exists")  # type: ignore[no-untyped-call]
        self.names.append(task.name)
        self.requests.append(task)
        return task


def _config(**overrides: Any) -> CloudTasksConfig:
    values: dict[str, Any] = {
        "project": "p",
        "location": "l",
        "queue": "q",
        "handler_url": "https://pyloto.example/tasks/process",
    }
    values.update(overrides)
    return CloudTasksConfig(**values)


async def test_already_exists_is_reported_as_a_duplicate() -> None:
    """A name Cloud Tasks has seen within the hour is a duplicate, not an error."""
    fake = FakeClient()
    async with CloudTasksSink(_config(), client=cast(Any, fake)) as sink:
        first = await sink.enqueue([make_task(1)])
        again = await sink.enqueue([make_task(1), make_task(2)])
    assert first.enqueued == (make_task(1).task_id,)
    assert again.duplicates == (make_task(1).task_id,)
    assert again.enqueued == (make_task(2).task_id,)


async def test_one_failure_among_many_fails_the_batch_after_all_finish() -> None:
    """Every create runs to its end; one UNAVAILABLE makes the whole enqueue transient."""
    bad = f"tasks/{cloud_task_id(make_task(2).task_id)}"
    down = gexc.ServiceUnavailable("down")  # type: ignore[no-untyped-call]
    fake = FakeClient(lambda name: down if name.endswith(bad) else None)
    async with CloudTasksSink(_config(), client=cast(Any, fake)) as sink:
        with pytest.raises(TransientError, match="stored 2 of 3"):
            await sink.enqueue([make_task(1), make_task(2), make_task(3)])
    assert len(fake.names) == 2


async def test_oidc_and_deadline_are_set_on_every_task() -> None:
    """With a service account the task asks for an ID token for the handler URL."""
    fake = FakeClient()
    config = _config(service_account="sa@p.iam.gserviceaccount.com", dispatch_deadline_s=45.0)
    async with CloudTasksSink(config, client=cast(Any, fake)) as sink:
        await sink.enqueue([make_task(1)])
    (created,) = fake.requests
    assert created.http_request.oidc_token.service_account_email == "sa@p.iam.gserviceaccount.com"
    assert created.http_request.oidc_token.audience == config.handler_url
    assert created.dispatch_deadline.total_seconds() == 45.0
    assert TOKEN_HEADER not in created.http_request.headers
    assert json.loads(created.http_request.body)["task_id"] == make_task(1).task_id


def test_settings_give_the_config_and_a_deadline_past_the_llm_budget(
    make_settings: Callable[..., Settings],
) -> None:
    """The dispatch deadline covers the LLM deadline plus a margin, within Cloud Tasks' range."""
    settings = make_settings(
        google_cloud_project="proj",
        cloudtasks_handler_url="https://h/tasks/process",
        tasks_token=TOKEN,
        llm_deadline=20.0,
    )
    config = CloudTasksConfig.from_settings(settings)
    assert (config.project, config.queue, config.tasks_token) == ("proj", "whatsapp-process", TOKEN)
    assert config.dispatch_deadline_s > 20.0
    assert dispatch_deadline_for(1.0) == 15.0
    assert dispatch_deadline_for(5000.0) == 1800.0
    with pytest.raises(BackendUnavailable, match="CLOUDTASKS_HANDLER_URL"):
        CloudTasksConfig.from_settings(make_settings(google_cloud_project="proj"))
