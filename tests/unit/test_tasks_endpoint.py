"""`POST /tasks/process` in process: authentication, the retry decision, attempt counting.

The stores are the memory ones from `open_roles`; the push role is built here from test doubles:
a scheduler that records reschedules, a token authenticator and a memory dead-letter store.
The pipeline's sender is scripted so a test decides whether a send succeeds or fails and how.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.adapters.metrics import PrometheusMetrics
from pyloto_cli.adapters.queue.cloud_tasks import TOKEN_HEADER
from pyloto_cli.bootstrap import Roles, Stores, open_roles, pipeline_config, retry_policy
from pyloto_cli.domain.errors import AmbiguousSendError, PermanentError, SendPaused, TransientError
from pyloto_cli.domain.task import (
    ATTEMPT_HEADER,
    PREVIOUS_FAILURE_HEADER,
    FailureKind,
    JsonObject,
    Task,
)
from pyloto_cli.domain.webhook_split import split_webhook
from pyloto_cli.logs import event_fields
from pyloto_cli.pipeline.process import Pipeline
from pyloto_cli.ports import NO_METRICS, Deduper, Metrics, Sender, SendResult
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app
from pyloto_cli.web.intake import Intake
from pyloto_cli.web.tasks import RESCHEDULE_AFTER_S, PushRole, pushed_attempt
from pyloto_cli.web.tasks_auth import TaskAuthenticator
from tests.scraping import scrape_text, value

TOKEN = "t" * 32
MAX_ATTEMPTS = 5
RETRY_COUNT = "X-CloudTasks-TaskRetryCount"


class FakeSink:
    """Stands in for `CloudTasksSink`: records `reschedule` calls (and their name salts)."""

    def __init__(self) -> None:
        self.rescheduled: list[tuple[Task, float, int]] = []
        self.salts: list[str] = []
        self.failures: list[FailureKind | None] = []

    async def reschedule(
        self,
        task: Task,
        delay_s: float,
        attempt: int,
        salt: str = "",
        previous_failure: FailureKind | None = None,
    ) -> None:
        self.rescheduled.append((task, delay_s, attempt))
        self.salts.append(salt)
        self.failures.append(previous_failure)


class ScriptedSender:
    """A `Sender` that raises the scripted errors in turn, then accepts every body."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.bodies: list[JsonObject] = []
        self.calls = 0

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.bodies.append(body)
        return SendResult(message_id=f"wamid.sent.{len(self.bodies)}")

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        return None

    async def upload_media(self, phone_number_id: str, path: Path, mime_type: str) -> str:
        raise AssertionError("this test uploads no media")


@dataclasses.dataclass
class Harness:
    settings: Settings
    intake: Intake
    stores: Stores
    http: httpx.AsyncClient
    sender: ScriptedSender
    sink: FakeSink
    dead: MemoryDeadLetterStore


def message_task(
    wamid: str = "wamid.TASKS.0001", user: str = "15550004321", timestamp: int | None = None
) -> Task:
    """The task the webhook would store for one text message."""
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "900000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000000",
                                "phone_number_id": "900000000000002",
                            },
                            "contacts": [{"profile": {"name": "Bia"}, "wa_id": user}],
                            "messages": [
                                {
                                    "from": user,
                                    "id": wamid,
                                    "timestamp": str(timestamp or int(time.time())),
                                    "type": "text",
                                    "text": {"body": "Oi, tudo bem? 😊"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    (task,) = split_webhook(payload, time.time())
    return task


async def push_pipeline(
    roles: Roles,
    settings: Settings,
    sender: Sender,
    *,
    deduper: Deduper | None = None,
    metrics: Metrics = NO_METRICS,
) -> Pipeline:
    """The pipeline a push endpoint runs: the roles' stores and responder, `sender` sending
    (and `deduper`, when given, in place of the roles' one)."""
    stores = await roles.stores()
    return Pipeline(
        sessions=stores.sessions,
        deduper=stores.deduper if deduper is None else deduper,
        responder=(await roles.pipeline()).responder,
        sender=sender,
        statuses=stores.statuses,
        config=pipeline_config(settings, exclusive_queue=False),
        metrics=metrics,
    )


@pytest.fixture
async def harness(make_settings: Callable[..., Settings]) -> AsyncIterator[Harness]:
    settings = make_settings(
        queue_backend="memory",
        session_store_backend="memory",
        dedupe_backend="memory",
        max_attempts=MAX_ATTEMPTS,
        body_timeout_seconds=0.3,  # every body here is sent whole, but the stalled one
        metrics=True,
    )
    metrics = PrometheusMetrics()
    async with open_roles(settings, metrics=metrics) as roles:
        sender, sink, dead = ScriptedSender(), FakeSink(), MemoryDeadLetterStore()
        stores, intake = await roles.stores(), await roles.intake()
        pipeline = await push_pipeline(roles, settings, sender, metrics=metrics)
        role = PushRole(
            pipeline=pipeline,
            auth=TaskAuthenticator(token=TOKEN),
            scheduler=sink,
            dead_letters=dead,
            policy=retry_policy(settings),
        )
        transport = httpx.ASGITransport(app=create_app(settings, intake, role, metrics))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Harness(settings, intake, stores, http, sender, sink, dead)


async def push(
    h: Harness, task: Task, *, token: str | None = TOKEN, **headers: str
) -> httpx.Response:
    """POST the task as Cloud Tasks would, with the shared token unless `token` is None."""
    sent = dict(headers)
    if token is not None:
        sent[TOKEN_HEADER] = token
    return await h.http.post("/tasks/process", content=task.to_json(), headers=sent)


# --- authentication -----------------------------------------------------------------------------


async def test_no_token_is_401_and_nothing_runs(harness: Harness) -> None:
    task = message_task()
    response = await push(harness, task, token=None)
    assert response.status_code == 401
    assert harness.sender.calls == 0
    assert not await harness.stores.sessions.exists(task.conversation_key)


async def test_wrong_token_is_refused_and_nothing_runs(harness: Harness) -> None:
    task = message_task()
    response = await push(harness, task, token="x" * 32)
    assert response.status_code in (401, 403)
    assert harness.sender.calls == 0
    assert not await harness.stores.sessions.exists(task.conversation_key)


async def test_a_bearer_token_alone_does_not_pass_the_shared_secret(harness: Harness) -> None:
    response = await push(harness, message_task(), token=None, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 401
    assert harness.sender.calls == 0


async def test_auth_comes_before_the_body_is_read(harness: Harness) -> None:
    response = await harness.http.post("/tasks/process", content=b"{not json")
    assert response.status_code == 401


async def test_not_a_push_queue_is_404(harness: Harness) -> None:
    app = create_app(harness.settings, harness.intake)  # a pull queue's app: no push role
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post(
            "/tasks/process", content=message_task().to_json(), headers={TOKEN_HEADER: TOKEN}
        )
    assert response.status_code == 404
    assert harness.sender.calls == 0


# --- the retry decision -------------------------------------------------------------------------


async def test_right_token_runs_the_task_and_answers_200(harness: Harness) -> None:
    task = message_task()
    response = await push(harness, task)
    assert response.status_code == 200
    (body,) = harness.sender.bodies
    assert body["biz_opaque_callback_data"] == task.task_id
    session = await harness.stores.sessions.load(task.conversation_key)
    assert session is not None
    assert [t.message_id for t in session.turns] == [task.task_id, "wamid.sent.1"]


async def test_a_redelivered_task_is_answered_once(harness: Harness) -> None:
    task = message_task()
    assert (await push(harness, task)).status_code == 200
    assert (await push(harness, task, **{RETRY_COUNT: "1"})).status_code == 200
    assert len(harness.sender.bodies) == 1


async def test_retryable_failure_is_503_with_retry_after(harness: Harness) -> None:
    harness.sender.errors.append(TransientError("Graph 131000", retry_after=3.0, code=131000))
    task = message_task()
    response = await push(harness, task)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert harness.sender.bodies == []
    assert harness.sink.rescheduled == []
    assert await harness.dead.list() == []
    # the claim was released: Cloud Tasks' retry gets through and sends once
    retried = await push(harness, task, **{RETRY_COUNT: "1"})
    assert retried.status_code == 200
    assert len(harness.sender.bodies) == 1


async def test_retryable_failure_without_a_delay_gets_the_policy_delay(harness: Harness) -> None:
    """No delay from the error: the 503 carries the backoff policy's delay as Retry-After."""
    harness.sender.errors.append(TransientError("HTTP 500 from Graph"))
    response = await push(harness, message_task())
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1


async def test_ambiguous_send_is_rescheduled_with_its_failure_kind_and_not_retried_twice(
    harness: Harness,
) -> None:
    """Cloud Tasks keeps nothing between tries: the reschedule carries the failure kind, and
    the endpoint reads it back from the header."""
    harness.sender.errors.append(AmbiguousSendError("read timeout after send"))
    task = message_task()
    response = await push(harness, task)
    assert response.status_code == 200
    assert harness.sink.rescheduled == [(task, harness.sink.rescheduled[0][1], 2)]
    assert harness.sink.failures == [FailureKind.AMBIGUOUS_SEND]
    harness.sender.errors.append(AmbiguousSendError("read timeout again"))
    header = {ATTEMPT_HEADER: "2", PREVIOUS_FAILURE_HEADER: FailureKind.AMBIGUOUS_SEND.value}
    again = await push(harness, task, **header)
    assert again.status_code == 200
    dead = await harness.dead.get(task.task_id)
    assert dead is not None
    assert "not retried twice" in dead.error


async def test_an_error_text_is_not_taken_for_the_failure_kind(harness: Harness) -> None:
    """A retry whose previous failure is unknown (here: an unknown header value) gets its one
    retry of an ambiguous send: only the typed kind says "already retried once"."""
    harness.sender.errors.append(AmbiguousSendError("read timeout after send"))
    task = message_task()
    header = {ATTEMPT_HEADER: "2", PREVIOUS_FAILURE_HEADER: "AmbiguousSendError: earlier"}
    response = await push(harness, task, **header)
    assert response.status_code == 200
    assert await harness.dead.list() == []
    assert [attempt for _, _, attempt in harness.sink.rescheduled] == [3]


async def test_a_live_claim_elsewhere_is_deferred_without_spending_an_attempt(
    harness: Harness,
) -> None:
    """Another instance holds the claim: rescheduled at the same attempt, nothing sent."""
    task = message_task()
    await harness.stores.deduper.claim(task.task_id, 60.0)  # another instance is on it
    response = await push(harness, task, **{ATTEMPT_HEADER: "3"})
    assert response.status_code == 200
    assert [(t.task_id, attempt) for t, _, attempt in harness.sink.rescheduled] == [
        (task.task_id, 3)
    ]
    assert harness.sender.calls == 0
    assert await harness.dead.list() == []


async def test_long_delay_is_rescheduled_with_the_next_attempt(harness: Harness) -> None:
    harness.sender.errors.append(TransientError("pair rate limit", retry_after=16.0, code=131056))
    task = message_task()
    response = await push(harness, task, **{ATTEMPT_HEADER: "2", RETRY_COUNT: "0"})
    assert response.status_code == 200
    assert RESCHEDULE_AFTER_S < 16.0  # the case the endpoint schedules itself
    assert harness.sink.rescheduled == [(task, 16.0, 3)]
    assert await harness.dead.list() == []
    assert harness.sender.bodies == []


async def test_a_known_transient_failure_spends_no_attempt(harness: Harness) -> None:
    """Graph still failing at the last counted attempt: retried (503), not dead-lettered: the
    retry horizon bounds a known transient failure, not PYLOTO_MAX_ATTEMPTS."""
    harness.sender.errors.append(TransientError("still failing", retry_after=1.0))
    task = message_task()
    response = await push(harness, task, **{RETRY_COUNT: str(MAX_ATTEMPTS - 1)})
    assert response.status_code == 503
    assert await harness.dead.list() == []


async def test_past_the_retry_horizon_dead_letters_with_200(harness: Harness) -> None:
    """A message older than the horizon (default one hour) whose send still fails is
    dead-lettered with its reason and answered 200: Cloud Tasks lets it go."""
    harness.sender.errors.append(TransientError("pair rate limit", retry_after=64.0, code=131056))
    task = message_task(timestamp=int(time.time()) - 3700)
    response = await push(harness, task, **{ATTEMPT_HEADER: "2", RETRY_COUNT: "1"})
    assert response.status_code == 200
    assert harness.sink.rescheduled == []
    dead = await harness.dead.get(task.task_id)
    assert dead is not None
    assert "131056" in dead.error
    assert "retry horizon" in dead.error


async def test_permanent_failure_dead_letters_with_200(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyloto")
    harness.sender.errors.append(PermanentError("Message undeliverable", code=131026))
    task = message_task()
    response = await push(harness, task)
    assert response.status_code == 200
    (logged,) = [r for r in caplog.records if r.getMessage() == "task_dead_lettered"]
    assert logged.levelno == logging.WARNING
    assert "131026" in event_fields(logged)["reason"]
    dead = await harness.dead.get(task.task_id)
    assert dead is not None
    assert dead.attempts == 1
    assert "131026" in dead.error
    assert dead.task == task
    assert harness.sink.rescheduled == []


async def test_paused_sending_defers_without_spending_an_attempt(harness: Harness) -> None:
    """SendPaused: rescheduled at the same attempt, even the last one; never dead-lettered."""
    harness.sender.errors.append(SendPaused("graph_token_rejected", retry_after=60.0, code=190))
    task = message_task()
    response = await push(harness, task, **{RETRY_COUNT: str(MAX_ATTEMPTS - 1)})
    assert response.status_code == 200
    assert harness.sink.rescheduled == [(task, 60.0, MAX_ATTEMPTS)]
    assert await harness.dead.list() == []
    assert harness.sender.bodies == []


async def test_each_deferral_gets_a_task_name_of_its_own(harness: Harness) -> None:
    """A deferred task deferred again (same attempt, within a second) must not reuse its name:
    Cloud Tasks would answer ALREADY_EXISTS and the task would be dropped with the 200."""
    task = message_task()
    for _ in range(3):
        harness.sender.errors.append(SendPaused("graph_token_rejected", retry_after=0.5))
        assert (await push(harness, task, **{ATTEMPT_HEADER: "1"})).status_code == 200
    assert [attempt for _, _, attempt in harness.sink.rescheduled] == [1, 1, 1]
    assert len(set(harness.sink.salts)) == 3, harness.sink.salts


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", json.dumps({"task_id": "x"}).encode(), b""],
    ids=["not-json", "not-an-object", "missing-fields", "empty"],
)
async def test_a_body_that_is_not_a_task_is_dead_lettered_once_and_answered_200(
    harness: Harness, body: bytes
) -> None:
    """No attempt could read it: Cloud Tasks must not retry it, and it is kept, not dropped."""
    headers = {TOKEN_HEADER: TOKEN, "X-CloudTasks-TaskName": "task-7"}
    response = await harness.http.post("/tasks/process", content=body, headers=headers)
    assert response.status_code == 200
    assert harness.sender.calls == 0
    [letter] = await harness.dead.list()
    assert letter.task.task_id == "task-7"
    assert letter.error.startswith("InvalidTask: stored task cannot be read")


async def test_an_unreadable_body_without_a_task_name_is_kept_under_its_hash(
    harness: Harness,
) -> None:
    for _ in range(2):  # the same body twice: kept under one id
        response = await harness.http.post(
            "/tasks/process", content=b"{not json", headers={TOKEN_HEADER: TOKEN}
        )
        assert response.status_code == 200
    letters = await harness.dead.list()
    assert {letter.task.task_id for letter in letters} == {
        f"unreadable-{hashlib.sha256(b'{not json').hexdigest()[:16]}"
    }


async def test_an_unauthenticated_body_that_is_not_a_task_is_refused_and_not_kept(
    harness: Harness,
) -> None:
    response = await harness.http.post("/tasks/process", content=b"{not json")
    assert response.status_code in (401, 403)
    assert await harness.dead.list() == []


async def test_stalled_body_is_408_and_nothing_runs(harness: Harness) -> None:
    """Half a task, then nothing: 408 at the body deadline, the connection closed."""
    body = message_task().to_json()
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield body[:10]
        await never.wait()  # the client stops sending
        yield body[10:]

    response = await asyncio.wait_for(
        harness.http.post("/tasks/process", content=stalled(), headers={TOKEN_HEADER: TOKEN}),
        timeout=10,
    )
    assert response.status_code == 408
    assert response.headers["connection"] == "close"
    assert harness.sender.calls == 0


# --- attempt arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        ({}, 1),
        ({"x-cloudtasks-taskretrycount": "0"}, 1),
        ({"x-cloudtasks-taskretrycount": "2"}, 3),
        ({"x-pyloto-attempt": "3"}, 3),
        ({"x-pyloto-attempt": "3", "x-cloudtasks-taskretrycount": "2"}, 5),
        ({"x-pyloto-attempt": "junk", "x-cloudtasks-taskretrycount": "-1"}, 1),
    ],
)
def test_pushed_attempt(headers: dict[str, str], attempt: int) -> None:
    assert pushed_attempt(headers) == attempt


async def test_attempt_headers_reach_the_dead_letter(harness: Harness) -> None:
    """A re-created task (X-Pyloto-Attempt 3) on its Cloud Tasks retry 1 is attempt 4."""
    harness.sender.errors.append(PermanentError("bad recipient", code=131026))
    task = message_task()
    response = await push(harness, task, **{ATTEMPT_HEADER: "3", RETRY_COUNT: "1"})
    assert response.status_code == 200
    dead = await harness.dead.get(task.task_id)
    assert dead is not None
    assert dead.attempts == 4


async def test_pushed_attempts_are_counted_in_metrics(harness: Harness) -> None:
    """/tasks/process counts what the pull worker counts: each attempt by outcome, retries,
    dead letters and the Graph sends' outcomes."""
    harness.sender.errors.append(TransientError("throttled", code=130429))
    harness.sender.errors.append(PermanentError("Message undeliverable", code=131026))
    assert (await push(harness, message_task())).status_code == 503
    assert (
        await push(harness, message_task(), **{"X-CloudTasks-TaskRetryCount": "1"})
    ).status_code == 200
    samples = scrape_text((await harness.http.get("/metrics")).text)
    assert value(samples, "pyloto_tasks_processed_total", outcome="retry") == 1
    assert value(samples, "pyloto_tasks_processed_total", outcome="dead") == 1
    assert value(samples, "pyloto_tasks_retried_total") == 1
    assert value(samples, "pyloto_tasks_dead_lettered_total") == 1
    assert value(samples, "pyloto_task_processing_seconds_count") == 2
    assert value(samples, "pyloto_graph_sends_total", outcome="transient", code="130429") == 1
    assert value(samples, "pyloto_graph_sends_total", outcome="permanent", code="131026") == 1
