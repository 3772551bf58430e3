"""`POST /pubsub/push` in process: authentication, the envelope, and 2xx only once a task is done
or deliberately dropped (Pub/Sub acks any 2xx)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.bootstrap import open_roles, retry_policy
from pyloto_cli.domain.errors import PermanentError, TransientError
from pyloto_cli.domain.task import Task
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app
from pyloto_cli.web.pubsub_push import PubSubPushRole, read_envelope
from pyloto_cli.web.tasks_auth import (
    TaskAuthConfigError,
    TaskAuthenticator,
    build_pubsub_push_authenticator,
)
from tests.unit.test_tasks_endpoint import ScriptedSender, message_task, push_pipeline

TOKEN = "p" * 32


@dataclasses.dataclass
class Harness:
    http: httpx.AsyncClient
    sender: ScriptedSender
    dead: MemoryDeadLetterStore


@pytest.fixture
async def harness(make_settings: Callable[..., Settings]) -> AsyncIterator[Harness]:
    settings = make_settings(
        queue_backend="memory",
        session_store_backend="memory",
        dedupe_backend="memory",
        max_attempts=3,
        retry_base_seconds=0.01,
        retry_cap_seconds=0.01,
    )
    async with open_roles(settings) as roles:
        sender, dead = ScriptedSender(), MemoryDeadLetterStore()
        intake = await roles.intake()
        pipeline = await push_pipeline(roles, settings, sender)
        role = PubSubPushRole(
            pipeline=pipeline,
            auth=TaskAuthenticator(token=TOKEN),
            dead_letters=dead,
            policy=retry_policy(settings),
            wait_budget_s=0.5,
        )
        app = create_app(settings, intake, pubsub_push=role)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Harness(http, sender, dead)


def envelope(task: Task, *, attempt: int | None = None, data: bytes | None = None) -> bytes:
    """The body a push subscription POSTs for one message."""
    raw = task.to_json() if data is None else data
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(raw).decode(),
            "attributes": {"task_id": task.task_id},
            "messageId": "1234",
            "orderingKey": "abc",
        },
        "subscription": "projects/p/subscriptions/whatsapp-inbound-push",
    }
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    return json.dumps(body).encode()


async def push(h: Harness, body: bytes, *, query: str = f"?token={TOKEN}") -> httpx.Response:
    return await h.http.post(f"/pubsub/push{query}", content=body)


async def test_a_done_task_is_acked_with_200(harness: Harness) -> None:
    response = await push(harness, envelope(message_task()))
    assert response.status_code == 200
    assert len(harness.sender.bodies) == 1


async def test_the_token_may_come_as_the_header_and_nothing_runs_without_it(
    harness: Harness,
) -> None:
    body = envelope(message_task())
    refused = await push(harness, body, query="")
    assert refused.status_code == 401
    wrong = await push(harness, body, query="?token=" + "x" * 32)
    assert wrong.status_code == 401
    assert harness.sender.calls == 0
    by_header = await harness.http.post(
        "/pubsub/push", content=body, headers={"X-Pyloto-Task-Token": TOKEN}
    )
    assert by_header.status_code == 200


async def test_a_short_retry_is_waited_out_in_the_request(harness: Harness) -> None:
    harness.sender.errors.append(TransientError("graph 500", retry_after=0.05))
    response = await push(harness, envelope(message_task()))
    assert response.status_code == 200
    assert harness.sender.calls == 2
    assert len(harness.sender.bodies) == 1


async def test_a_long_retry_is_a_503_pubsub_redelivers(harness: Harness) -> None:
    harness.sender.errors.append(TransientError("graph 429", retry_after=30.0))
    response = await push(harness, envelope(message_task()))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert harness.sender.bodies == []
    again = await push(harness, envelope(message_task(), attempt=2))
    assert again.status_code == 200
    assert len(harness.sender.bodies) == 1


async def test_a_permanent_failure_is_kept_as_a_dead_letter_and_acked(harness: Harness) -> None:
    harness.sender.errors.append(PermanentError("graph 131026: undeliverable", code=131026))
    task = message_task()
    response = await push(harness, envelope(task, attempt=1))
    assert response.status_code == 200
    letter = await harness.dead.get(task.task_id)
    assert letter is not None
    assert "131026" in letter.error


async def test_spent_delivery_attempts_end_in_a_dead_letter(harness: Harness) -> None:
    # a failure of unknown kind: the attempts bound it (a known transient one has a horizon)
    harness.sender.errors.append(RuntimeError("unexpected"))
    task = message_task()
    response = await push(harness, envelope(task, attempt=3))  # max_attempts=3: the last
    assert response.status_code == 200
    letter = await harness.dead.get(task.task_id)
    assert letter is not None
    assert letter.attempts == 3


async def test_a_message_that_is_not_a_task_is_dead_lettered(harness: Harness) -> None:
    task = message_task()
    response = await push(harness, envelope(task, data=b"\xff not a task"))
    assert response.status_code == 200
    letter = await harness.dead.get(task.task_id)
    assert letter is not None
    assert "cannot be read" in letter.error
    assert harness.sender.calls == 0


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"message": {"data": "@@@"}}', b'{"message": []}'],
)
async def test_a_body_that_is_not_a_push_envelope_is_400(harness: Harness, body: bytes) -> None:
    response = await push(harness, body)
    assert response.status_code == 400
    assert harness.sender.calls == 0
    with pytest.raises(ValueError, match="not a Pub/Sub push envelope"):
        read_envelope(body)


async def test_without_a_push_role_the_endpoint_is_404(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(queue_backend="memory", session_store_backend="memory")
    async with open_roles(settings) as roles:
        app = create_app(settings, await roles.intake())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.post("/pubsub/push", content=envelope(message_task()))
    assert response.status_code == 404


def test_push_authentication_settings(make_settings: Callable[..., Settings]) -> None:
    assert build_pubsub_push_authenticator(make_settings()) is None  # off, never open
    with pytest.raises(TaskAuthConfigError, match="PUBSUB_PUSH_AUDIENCE"):
        build_pubsub_push_authenticator(
            make_settings(pubsub_push_service_account="push@p.iam.gserviceaccount.com")
        )
    with pytest.raises(TaskAuthConfigError, match="at least 16"):
        build_pubsub_push_authenticator(make_settings(tasks_token="short"))
    both = build_pubsub_push_authenticator(
        make_settings(
            pubsub_push_service_account="push@p.iam.gserviceaccount.com",
            pubsub_push_audience="https://bot.example.com/pubsub/push",
            tasks_token=TOKEN,
        ),
        certs=_NoCerts(),
    )
    assert both is not None


class _NoCerts:
    def certs(self) -> dict[str, str]:
        return {}
