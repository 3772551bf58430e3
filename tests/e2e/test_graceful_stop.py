"""SIGTERM to a real `pyloto serve` with sends in flight: webhooks are answered 503 from then on,
what did not finish within the grace is handed back, the process exits 0, and the next one
answers everything acknowledged, once, without waiting out a lease."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pyloto_cli.domain.signature import sign
from tests.e2e.serve_process import ServeProcess
from tests.e2e.test_kill9 import SECRET, serve_env, webhook_body
from tests.e2e.test_recovery import replies_since
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

IN_FLIGHT = 4
GRACE_S = 1.0


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        yield server
        server.let_go()


async def status_of(client: httpx.AsyncClient, url: str, body: bytes) -> int:
    headers = {"X-Hub-Signature-256": sign(SECRET.encode(), body)}
    response = await client.post(f"{url}/webhooks/whatsapp", content=body, headers=headers)
    return response.status_code


def events(serve: ServeProcess, name: str) -> list[dict[str, object]]:
    lines = serve.log.read_text().splitlines()
    return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e["event"] == name]


async def test_sigterm_answers_503_hands_back_the_unfinished_and_exits_0(
    graph: FakeGraphServer, tmp_path: Path
) -> None:
    env = {
        **serve_env(tmp_path / "data", graph.url),
        "PYLOTO_LEASE_SECONDS": "30",
        "PYLOTO_SHUTDOWN_GRACE_SECONDS": str(GRACE_S),
    }
    serve = ServeProcess(tmp_path, env)
    await serve.start()
    proc = serve.proc
    assert proc is not None
    graph.hold()
    bodies = [webhook_body(i) for i in range(IN_FLIGHT + 1)]
    async with httpx.AsyncClient() as client:
        for _, body in bodies[:IN_FLIGHT]:
            assert await status_of(client, serve.url, body) == 200
        await wait_until(lambda: graph.held == IN_FLIGHT, within=20.0, what="sends in flight")
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Meta's next delivery meets the stopping process: 503, so Meta delivers it again
        _, late = bodies[IN_FLIGHT]

        async def refused() -> bool:
            return await status_of(client, serve.url, late) == 503

        await wait_until(refused, what="a 503", details=serve.log_tail)
        ready = await client.get(f"{serve.url}/readyz")
        assert ready.status_code == 503
    code = proc.wait(timeout=30)
    stopped_s = time.monotonic() - signalled
    assert code == 0, serve.log_tail()
    assert stopped_s < GRACE_S + 3, stopped_s
    released = events(serve, "task_released")
    assert len(released) == IN_FLIGHT, serve.log_tail()

    graph.let_go()  # the cancelled sends are answered to no one
    restarted_at = time.monotonic()
    await serve.start()
    try:
        async with httpx.AsyncClient() as client:
            assert await status_of(client, serve.url, late) == 200  # Meta's redelivery
        wanted = {wamid for wamid, _ in bodies}
        await wait_until(
            lambda: wanted <= set(replies_since(graph, restarted_at)),
            within=2.0,
            interval=0.02,
            what="everything answered by the next process",
            details=serve.log_tail,
        )
    finally:
        serve.terminate()
    assert max(replies_since(graph, restarted_at).values()) == 1
    assert not events(serve, "queue_lease_owner_gone")  # handed back, not found abandoned
