"""A real `pyloto serve` on the Pub/Sub emulator: webhook -> publish -> streaming pull -> reply.

Only what the backend needs is set (QUEUE_BACKEND, PYLOTO_PUBSUB_CREATE, PUBSUB_EMULATOR_HOST,
GOOGLE_CLOUD_PROJECT), plus the app secret and a fake Graph API to count replies by their
`biz_opaque_callback_data` (the inbound wamid).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pyloto_cli.adapters.queue.pubsub import PubSubConfig, open_subscriber
from pyloto_cli.domain.signature import sign
from pyloto_cli.settings import Settings
from tests.e2e.serve_process import ServeProcess, terminate
from tests.e2e.test_cloud_tasks_serve import answered, webhook
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.pubsub]

SECRET = "e2e-pubsub-app-secret"


def pubsub_env(workdir: Path, graph_url: str, host: str, project: str) -> dict[str, str]:
    return {
        "PYLOTO_DATA_DIR": str(workdir / "data"),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "e2e-verify",
        "WHATSAPP_ACCESS_TOKEN": "e2e-token",
        "GRAPH_API_URL": graph_url,
        "OPENAI_ENABLED": "false",
        "QUEUE_BACKEND": "pubsub",
        "PYLOTO_PUBSUB_CREATE": "true",
        "PUBSUB_EMULATOR_HOST": host,
        "GOOGLE_CLOUD_PROJECT": project,
    }


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        yield server


async def post_all(serve: ServeProcess, messages: list[tuple[str, str]]) -> None:
    async with httpx.AsyncClient() as client:
        for wamid, user in messages:
            body = json.dumps(webhook(wamid, user, f"text {wamid}")).encode()
            response = await client.post(
                f"{serve.url}/webhooks/whatsapp",
                content=body,
                headers={"X-Hub-Signature-256": sign(SECRET.encode(), body)},
            )
            assert response.status_code == 200, response.text


def replies_of(graph: FakeGraphServer, user: str) -> list[str]:
    return [
        str(r.body.get("biz_opaque_callback_data"))
        for r in graph.messages()
        if r.body["to"] == f"+{user}"
    ]


def spawn_cli(
    args: list[str], env: dict[str, str], cwd: Path, *, keep_stdout: bool = False
) -> subprocess.Popen[bytes]:
    """`pyloto ARGS` as a process of its own (stdout kept when asked, logs dropped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pyloto_cli", *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


MESSAGES = [(f"wamid.E{i}", f"1555000{i % 2:04d}") for i in range(8)]


async def test_serve_answers_every_message_in_order_per_conversation(
    graph: FakeGraphServer, pubsub_emulator_host: str, pubsub_project: str, tmp_path: Path
) -> None:
    env = pubsub_env(tmp_path, graph.url, pubsub_emulator_host, pubsub_project)
    serve = ServeProcess(tmp_path / "serve", env)
    await serve.start()
    try:
        async with httpx.AsyncClient() as client:
            ready = (await client.get(f"{serve.url}/readyz")).json()
        assert ready["queue"] == {"backend": "pubsub", "depth": None, "dead": 0}
        await post_all(serve, MESSAGES)
        await wait_until(
            lambda: len(answered(graph)) == len(MESSAGES),
            within=30.0,
            what="every message answered",
            details=serve.log_tail,
        )
    finally:
        serve.terminate()
    assert set(answered(graph).values()) == {1}  # each once
    for user in {u for _, u in MESSAGES}:
        assert replies_of(graph, user) == [w for w, u in MESSAGES if u == user]


async def test_no_worker_serve_leaves_the_messages_to_a_worker_process(
    graph: FakeGraphServer,
    pubsub_emulator_host: str,
    pubsub_project: str,
    tmp_path: Path,
) -> None:
    env = pubsub_env(tmp_path, graph.url, pubsub_emulator_host, pubsub_project)
    serve = ServeProcess(tmp_path / "serve", env, args=["--no-worker"])
    data_dir = str(tmp_path / "serve" / "data")
    await serve.start()
    try:
        await post_all(serve, MESSAGES[:2])
        worker = spawn_cli(["worker"], {**env, "PYLOTO_DATA_DIR": data_dir}, tmp_path)
        try:
            await wait_until(
                lambda: len(answered(graph)) == 2,
                within=30.0,
                what="the worker process answered",
                details=serve.log_tail,
            )
        finally:
            terminate(worker)
    finally:
        serve.terminate()
    assert "task_processed" not in serve.log_tail(100_000)  # the web process ran none
    cli_env = {**env, "PYLOTO_DATA_DIR": data_dir}
    shown = spawn_cli(["queue", "stats", "--json"], cli_env, tmp_path, keep_stdout=True)
    out, _ = await asyncio.to_thread(shown.communicate, timeout=60)
    assert shown.returncode == 0
    stats = json.loads(out)
    assert stats["backend"] == "pubsub"
    assert stats["depth"] is None
    assert "reports no depth" in stats["note"]


async def test_a_push_subscription_delivers_to_pubsub_push(
    graph: FakeGraphServer, pubsub_emulator_host: str, pubsub_project: str, tmp_path: Path
) -> None:
    """The emulator pushes each message to `/pubsub/push` (the local token in the endpoint's
    query, as a push subscription sends no custom header); no streaming worker runs."""
    token = "e2e-push-token-0123456789abcdef"
    env = {
        **pubsub_env(tmp_path, graph.url, pubsub_emulator_host, pubsub_project),
        "PYLOTO_WORKER_ENABLED": "false",
        "PYLOTO_TASKS_TOKEN": token,
    }
    serve = ServeProcess(tmp_path / "serve", env)
    await serve.start()
    try:
        settings = Settings(
            _env_file=None, pubsub_project=pubsub_project, pubsub_emulator_host=pubsub_emulator_host
        )
        config = PubSubConfig.from_settings(settings)
        endpoint = f"{serve.url}/pubsub/push?token={token}"
        await asyncio.to_thread(create_push_subscription, config, endpoint)
        await post_all(serve, MESSAGES[:3])
        await wait_until(
            lambda: len(answered(graph)) == 3,
            within=30.0,
            what="every pushed message answered",
            details=serve.log_tail,
        )
    finally:
        serve.terminate()
    assert '"queue": "pubsub_push"' in serve.log_tail(200_000)


def create_push_subscription(config: PubSubConfig, endpoint: str) -> None:
    subscriber = open_subscriber(config)
    try:
        subscriber.create_subscription(
            request={
                "name": f"projects/{config.project}/subscriptions/whatsapp-inbound-push",
                "topic": config.topic_path,
                "push_config": {"push_endpoint": endpoint},
                "enable_message_ordering": True,
            },
            timeout=10,
        )
    finally:
        subscriber.close()
