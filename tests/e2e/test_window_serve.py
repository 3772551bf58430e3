"""`pyloto serve` with the fakes: a message from three days ago gets no reply; a window that
has closed (Graph's 131047) ends `reply_expired` without, or sends the template with, one
configured; the admin API pauses the assistant."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from pyloto_cli.cli import app
from pyloto_cli.domain.conversation import conversation_id
from pyloto_cli.domain.signature import sign
from pyloto_cli.logs import LOGGER_NAME
from tests.e2e.serve_process import ServeProcess
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

SECRET = "e2e-app-secret"
ADMIN = "e2e-admin-token"
PNID = "900000000000002"
DAY = 86_400


def body(wamid: str, user: str, at: float) -> bytes:
    message = {"from": user, "id": wamid, "timestamp": str(int(at)), "type": "text"}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PNID},
        "contacts": [{"profile": {"name": "U"}, "wa_id": user}],
        "messages": [{**message, "text": {"body": "Olá, ainda está aberto?"}}],
    }
    change = {"field": "messages", "value": value}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    return json.dumps(payload).encode()


def sends(graph: FakeGraphServer) -> list[Any]:
    """Every message send Graph received, accepted or refused (no read receipts)."""
    return [r for r in graph.requests if isinstance(r.body, dict) and "status" not in r.body]


class Served:
    """A running `pyloto serve` and what it did."""

    def __init__(self, serve: ServeProcess, client: httpx.AsyncClient, env: dict[str, str]):
        self.serve, self.client, self.env = serve, client, env

    async def post(self, data: bytes) -> None:
        headers = {"X-Hub-Signature-256": sign(SECRET.encode(), data)}
        answer = await self.client.post(
            f"{self.serve.url}/webhooks/whatsapp", content=data, headers=headers
        )
        assert answer.status_code == 200

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.serve.log.read_text().splitlines()
        events = (json.loads(line) for line in lines if line.startswith("{"))
        return [event for event in events if event["event"] == name]

    async def processed(self, count: int) -> list[dict[str, Any]]:
        await wait_until(
            lambda: len(self.events("task_processed")) >= count,
            within=15.0,
            what=f"{count} tasks processed",
            details=self.serve.log_tail,
        )
        return self.events("task_processed")


def _env(tmp_path: Path, graph: FakeGraphServer, **extra: str) -> dict[str, str]:
    return {
        "PYLOTO_DATA_DIR": str(tmp_path / "data"),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "e2e-verify",
        "WHATSAPP_ACCESS_TOKEN": "e2e-token",
        "GRAPH_API_URL": graph.url,
        "OPENAI_ENABLED": "false",
        "PYLOTO_RETRY_BASE_SECONDS": "0.1",
        **extra,
    }


async def _served(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[Served]:
    serve = ServeProcess(tmp_path, env)
    await serve.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            yield Served(serve, client, env)
    finally:
        serve.terminate()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI commands configure the `pyloto` logger on the runner's streams: undo it after."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        yield server


@pytest.mark.usefixtures("restore_logging")
async def test_stale_message_closed_window_and_admin_handoff(
    graph: FakeGraphServer, tmp_path: Path
) -> None:
    """Without a template: three days old -> stored, no reply; 131047 -> `reply_expired`,
    once, in `queue stats` and the failed deliveries; a handoff over the admin API -> the
    next message is not answered."""
    async for served in _served(tmp_path, _env(tmp_path, graph, PYLOTO_ADMIN_TOKEN=ADMIN)):
        await served.post(body("wamid.old", "15550001111", time.time() - 3 * DAY))
        [first] = await served.processed(1)
        assert (first["outcome"], len(served.events("message_stale"))) == ("skipped", 1)
        assert graph.messages() == []

        graph.fail(131047)
        await served.post(body("wamid.late", "15550002222", time.time()))
        outcomes = [e["outcome"] for e in await served.processed(2)]
        assert outcomes == ["skipped", "reply_expired"]
        assert [r.code for r in sends(graph)] == [131047]  # never retried
        runner = CliRunner()
        stats = await asyncio.to_thread(
            runner.invoke, app, ["queue", "stats", "--json"], env=served.env
        )
        assert stats.exit_code == 0, stats.output
        assert json.loads(stats.stdout)["reply_expired"] == 1
        failed = await asyncio.to_thread(
            runner.invoke, app, ["queue", "failed-deliveries", "--json"], env=served.env
        )
        [row] = json.loads(failed.stdout)["failed"]
        assert (row["message_id"], row["error_title"]) == ("wamid.late", "reply_expired")

        cid = conversation_id(f"{PNID}:15550002222")
        admin = f"{served.serve.url}/admin/conversations/{cid}/handoff"
        refused = await served.client.post(admin, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert (await served.client.post(admin, headers=auth)).json()["new"] == "human"
        await served.post(body("wamid.after", "15550002222", time.time()))
        # stored by the conversation-mode rules, before any LLM call: done, nothing sent
        assert [e["outcome"] for e in await served.processed(3)][-1] == "done"
        assert len(sends(graph)) == 1


async def test_closed_window_with_a_template_sends_it_instead(
    graph: FakeGraphServer, tmp_path: Path
) -> None:
    """With PYLOTO_REENGAGE_TEMPLATE(_LANG): after 131047 the template goes, once."""
    env = _env(
        tmp_path,
        graph,
        PYLOTO_REENGAGE_TEMPLATE="hello_again",
        PYLOTO_REENGAGE_TEMPLATE_LANG="pt_BR",
    )
    async for served in _served(tmp_path, env):
        graph.fail(131047)
        await served.post(body("wamid.late", "15550003333", time.time()))
        [done] = await served.processed(1)
        assert done["outcome"] == "done"
        sent = sends(graph)
        assert [(r.code, r.body["type"]) for r in sent] == [(131047, "text"), (None, "template")]
        assert sent[1].body["template"] == {"name": "hello_again", "language": {"code": "pt_BR"}}
        assert sent[1].body["to"] == "+15550003333"
