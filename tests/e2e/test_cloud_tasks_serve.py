"""A real `pyloto serve` on the Cloud Tasks emulator: webhook -> task -> `/tasks/process` -> reply.

The emulator (tests/servers.py, `--max-retries 3`: four dispatches at most, ~0.1 s apart)
pushes every task to the process's `/tasks/process` with the shared token header. pyloto's own
policy (PYLOTO_MAX_ATTEMPTS=3, the retry horizon) dead-letters before the emulator gives up, as
it must in production. Replies are counted at a fake Graph server by
`biz_opaque_callback_data` (the inbound wamid).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyloto_cli.adapters.deadletters.sqlite import SqliteDeadLetterStore
from pyloto_cli.adapters.queue.cloud_tasks import TOKEN_HEADER
from pyloto_cli.domain.signature import sign
from pyloto_cli.domain.webhook_split import split_webhook
from tests.e2e.serve_process import ServeProcess
from tests.fakes.graph_server import FakeGraphServer
from tests.servers import CloudTasksQueueRef
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cloud_tasks]

SECRET = "e2e-cloud-tasks-app-secret"
TASKS_TOKEN = "e2e-tasks-token-0123456789abcdef0123"
MAX_ATTEMPTS = 3


def webhook(wamid: str, user: str, text: str = "Olá 😊", *, age_s: float = 0.0) -> dict[str, Any]:
    """One signed-webhook body carrying one text message from `user`, sent `age_s` ago."""
    stamp = str(int(time.time() - age_s))
    message = {"from": user, "id": wamid, "timestamp": stamp, "type": "text"}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "900000000000002"},
        "contacts": [{"profile": {"name": "U"}, "wa_id": user}],
        "messages": [{**message, "text": {"body": text}}],
    }
    change = {"field": "messages", "value": value}
    return {"object": "whatsapp_business_account", "entry": [{"id": "9001", "changes": [change]}]}


def cloud_tasks_serve(workdir: Path, graph_url: str, queue: CloudTasksQueueRef) -> ServeProcess:
    """`pyloto serve` on the Cloud Tasks backend, the emulator pushing to its /tasks/process."""
    serve = ServeProcess(
        workdir,
        {
            "PYLOTO_DATA_DIR": str(workdir / "data"),
            "WHATSAPP_APP_SECRET": SECRET,
            "WHATSAPP_VERIFY_TOKEN": "e2e-verify",
            "WHATSAPP_ACCESS_TOKEN": "e2e-token",
            "GRAPH_API_URL": graph_url,
            "OPENAI_ENABLED": "false",
            "QUEUE_BACKEND": "cloud_tasks",
            "SESSION_STORE_BACKEND": "sqlite",
            "DEDUPE_BACKEND": "sqlite",
            "CLOUD_TASKS_EMULATOR_HOST": queue.host,
            "CLOUDTASKS_PROJECT": queue.project,
            "CLOUDTASKS_LOCATION": queue.location,
            "CLOUDTASKS_QUEUE_NAME": queue.queue,
            "PYLOTO_TASKS_TOKEN": TASKS_TOKEN,
            "PYLOTO_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        },
    )
    serve.env["CLOUDTASKS_HANDLER_URL"] = f"{serve.url}/tasks/process"
    serve.env.pop("CLOUDTASKS_SERVICE_ACCOUNT", None)
    return serve


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        yield server


@pytest.fixture
async def serve(
    graph: FakeGraphServer, cloud_tasks_queue: CloudTasksQueueRef, tmp_path: Path
) -> AsyncIterator[ServeProcess]:
    process = cloud_tasks_serve(tmp_path / "serve", graph.url, cloud_tasks_queue)
    await process.start()
    try:
        yield process
    finally:
        process.terminate()


async def post_webhook(
    client: httpx.AsyncClient, serve: ServeProcess, wamid: str, user: str, age_s: float = 0.0
) -> None:
    body = json.dumps(webhook(wamid, user, age_s=age_s)).encode()
    response = await client.post(
        f"{serve.url}/webhooks/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": sign(SECRET.encode(), body)},
    )
    assert response.status_code == 200, response.text


def answered(graph: FakeGraphServer) -> Counter[str]:
    """Accepted replies per inbound wamid."""
    return Counter(str(r.body.get("biz_opaque_callback_data")) for r in graph.messages())


def sends_for(graph: FakeGraphServer, wamid: str) -> list[int]:
    """HTTP statuses the fake answered to every send attempt for `wamid`, in order."""
    return [
        r.answered
        for r in graph.requests
        if isinstance(r.body, dict) and r.body.get("biz_opaque_callback_data") == wamid
    ]


async def wait_answered(wamids: Iterable[str], graph: FakeGraphServer, serve: ServeProcess) -> None:
    wanted = set(wamids)
    await wait_until(
        lambda: wanted <= set(answered(graph)),
        within=20.0,
        what="every webhook answered",
        details=serve.log_tail,
    )


async def queue_counts(client: httpx.AsyncClient, serve: ServeProcess) -> tuple[int, int]:
    """(waiting tasks, dead letters) as `/readyz` reports them."""
    queue = (await client.get(f"{serve.url}/readyz")).json()["queue"]
    return int(queue["depth"]), int(queue["dead"])


async def wait_counts(
    client: httpx.AsyncClient, serve: ServeProcess, wanted: tuple[int, int], within_s: float = 20.0
) -> None:
    """Until `/readyz` reports (depth, dead) == `wanted` (a task leaves once its 200 is in)."""

    async def reached() -> bool:
        return await queue_counts(client, serve) == wanted

    await wait_until(
        reached, within=within_s, what=f"(depth, dead) == {wanted}", details=serve.log_tail
    )


async def test_webhooks_are_pushed_back_and_answered_once(
    serve: ServeProcess, graph: FakeGraphServer
) -> None:
    """30 messages from 6 users: each answered exactly once; the handler needs the token."""
    intruder = "wamid.e2e.ct.intruder"
    (forged,) = split_webhook(webhook(intruder, "15550009999"), time.time())
    async with httpx.AsyncClient(timeout=10) as client:
        tasks_url = f"{serve.url}/tasks/process"
        no_token = await client.post(tasks_url, content=forged.to_json())
        wrong = await client.post(
            tasks_url, content=forged.to_json(), headers={TOKEN_HEADER: "w" * 36}
        )
        assert (no_token.status_code, wrong.status_code) == (401, 401)
        wamids = [f"wamid.e2e.ct.{i:03d}" for i in range(30)]
        await asyncio.gather(
            *(post_webhook(client, serve, w, f"1555000{i % 6:04d}") for i, w in enumerate(wamids))
        )
        await wait_answered(wamids, graph, serve)
        await wait_counts(client, serve, (0, 0))
    replies = answered(graph)
    assert {w: n for w, n in replies.items() if n != 1} == {}
    assert set(replies) == set(wamids)  # the forged task was never run
    assert sends_for(graph, intruder) == []


async def test_5xx_is_retried_by_the_queue_and_answered_once(
    serve: ServeProcess, graph: FakeGraphServer
) -> None:
    """A Graph 131000 and a bare 502 each fail one send: the 503 makes the emulator retry."""
    graph.fail(131000, times=1, to="+15550001001")
    graph.fail(None, http_status=502, times=1, to="+15550001002")
    async with httpx.AsyncClient(timeout=10) as client:
        await post_webhook(client, serve, "wamid.e2e.ct.r1", "15550001001")
        await post_webhook(client, serve, "wamid.e2e.ct.r2", "15550001002")
        await post_webhook(client, serve, "wamid.e2e.ct.ok", "15550001003")
        wanted = {"wamid.e2e.ct.r1", "wamid.e2e.ct.r2", "wamid.e2e.ct.ok"}
        await wait_answered(wanted, graph, serve)
        await wait_counts(client, serve, (0, 0))
    assert answered(graph) == Counter(dict.fromkeys(wanted, 1))
    assert sends_for(graph, "wamid.e2e.ct.r1") == [500, 200]
    assert sends_for(graph, "wamid.e2e.ct.r2") == [502, 200]
    assert sends_for(graph, "wamid.e2e.ct.ok") == [200]


async def test_failures_end_in_dead_letters_before_the_queue_gives_up(
    serve: ServeProcess, graph: FakeGraphServer
) -> None:
    """Permanent: one send, dead at once. Always-5xx on a message past the retry horizon (an
    hour after it was sent): dead on that failure (200), before the queue gives up."""
    graph.fail(131026, times=None, to="+15550002001")  # undeliverable: permanent
    graph.fail(131000, times=None, to="+15550002002")  # always failing: retryable
    async with httpx.AsyncClient(timeout=10) as client:
        await post_webhook(client, serve, "wamid.e2e.ct.perm", "15550002001")
        await post_webhook(client, serve, "wamid.e2e.ct.flaky", "15550002002", age_s=3700.0)
        await wait_counts(client, serve, (0, 2))
    serve.terminate()  # the queue is empty: no send can follow; the state file is free
    assert sends_for(graph, "wamid.e2e.ct.perm") == [400]
    assert sends_for(graph, "wamid.e2e.ct.flaky") == [500]
    async with SqliteDeadLetterStore(serve.workdir / "data" / "state.db") as store:
        letters = {d.task.task_id: d for d in await store.list()}
    assert set(letters) == {"wamid.e2e.ct.perm", "wamid.e2e.ct.flaky"}
    assert letters["wamid.e2e.ct.perm"].attempts == 1
    assert "131026" in letters["wamid.e2e.ct.perm"].error
    assert letters["wamid.e2e.ct.flaky"].attempts == 1
    assert "gave up" in letters["wamid.e2e.ct.flaky"].error
