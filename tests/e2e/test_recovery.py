"""Recovery in seconds: a `pyloto worker` or `pyloto serve` killed with SIGKILL while it holds
tasks (their sends in flight) leaves leases of 30 s; the next process takes them back at once,
because their owner process is gone, and answers them within 2 s of starting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_process import ServeProcess, kill9, terminate
from tests.e2e.test_kill9 import post, serve_env, webhook_body
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

HELD = 6  # one message per conversation, each one's send held in flight at the kill
RECOVERY_S = 2.0


def thirty_second_leases(data_dir: Path, graph_url: str) -> dict[str, str]:
    return {**serve_env(data_dir, graph_url), "PYLOTO_LEASE_SECONDS": "30"}


def replies_since(graph: FakeGraphServer, since: float) -> Counter[str]:
    """Answered sends that arrived after `since` (monotonic), by the wamid they answer."""
    return Counter(
        str(r.body.get("biz_opaque_callback_data"))
        for r in graph.messages()
        if isinstance(r.body, dict) and r.at > since
    )


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        yield server
        server.let_go()


class WorkerProcess:
    """`python -m pyloto_cli worker` on the test's data dir, logs in `workdir/worker-N.log`."""

    def __init__(self, workdir: Path, env: dict[str, str], n: int) -> None:
        self.log = workdir / f"worker-{n}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyloto_cli", "worker"],
                env={**os.environ, "PYLOTO_LOG_FORMAT": "json", **env},
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


async def hold_sends_then_kill(
    graph: FakeGraphServer, url: str, owner: subprocess.Popen[bytes]
) -> set[str]:
    """Post HELD webhooks to `url`, wait until each one's send is held at the fake Graph by
    `owner`, SIGKILL `owner`; the acknowledged wamids."""
    graph.hold()
    bodies = [webhook_body(i) for i in range(HELD)]  # users 0..5: one per conversation
    async with httpx.AsyncClient() as client:
        for _, body in bodies:
            assert await post(client, url, body)
    await wait_until(lambda: graph.held == HELD, within=20.0, what="every send in flight")
    kill9(owner)
    return {wamid for wamid, _ in bodies}


async def test_a_restarted_worker_answers_what_a_killed_worker_held_within_two_seconds(
    graph: FakeGraphServer, tmp_path: Path
) -> None:
    env = thirty_second_leases(tmp_path / "data", graph.url)
    web = ServeProcess(tmp_path, env, ["--no-worker"])
    await web.start()
    try:
        first = WorkerProcess(tmp_path, env, 1)
        wanted = await hold_sends_then_kill(graph, web.url, first.proc)
        killed_at = time.monotonic()
        graph.let_go()  # the dead worker's sends are answered to no one
        second = WorkerProcess(tmp_path, env, 2)
        try:
            await wait_until(
                lambda: wanted <= set(replies_since(graph, killed_at)),
                within=30.0,
                interval=0.02,
                what="the killed worker's tasks answered",
                details=second.log_tail,
            )
            recovery_s = time.monotonic() - killed_at
        finally:
            terminate(second.proc)
    finally:
        web.terminate()
    print(f"\nkill -9 of a worker: answered {recovery_s:.2f} s after the kill")  # noqa: T201
    # from the kill, the new process's start (interpreter, imports) included
    assert recovery_s < 3 * RECOVERY_S, recovery_s
    assert '"event": "queue_lease_owner_gone"' in second.log.read_text()
    assert max(replies_since(graph, killed_at).values()) == 1


async def test_a_restarted_serve_answers_what_a_killed_serve_held_within_two_seconds(
    graph: FakeGraphServer, tmp_path: Path
) -> None:
    serve = ServeProcess(tmp_path, thirty_second_leases(tmp_path / "data", graph.url))
    await serve.start()
    assert serve.proc is not None
    wanted = await hold_sends_then_kill(graph, serve.url, serve.proc)
    killed_at = time.monotonic()
    graph.let_go()
    await serve.start()
    ready_at = time.monotonic()
    try:
        await wait_until(
            lambda: wanted <= set(replies_since(graph, killed_at)),
            within=30.0,
            interval=0.02,
            what="the killed serve's tasks answered",
            details=serve.log_tail,
        )
        recovery_s = time.monotonic() - ready_at
    finally:
        serve.terminate()
    print(f"\nkill -9 of serve: answered {recovery_s:.2f} s after the restart")  # noqa: T201
    assert recovery_s < RECOVERY_S, recovery_s  # from the restarted serve's readiness
    assert '"event": "queue_lease_owner_gone"' in serve.log.read_text()
    assert max(replies_since(graph, killed_at).values()) == 1
