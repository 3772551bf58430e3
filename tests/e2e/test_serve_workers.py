"""`pyloto serve --workers 2`: the web process plus two worker processes on one SQLite queue."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_process import ServeProcess
from tests.e2e.test_kill9 import USERS, answered, post, serve_env, webhook_body
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


def workers_serve(tmp_path: Path, graph_url: str) -> ServeProcess:
    return ServeProcess(tmp_path, serve_env(tmp_path / "data", graph_url), ["--workers", "2"])


async def test_two_worker_processes_answer_everything_once_in_order(tmp_path: Path) -> None:
    """120 webhooks over 20 conversations: each answered once, in order, by both workers."""
    async with FakeGraphServer() as graph:
        graph.delay_s = 0.01
        serve = workers_serve(tmp_path, graph.url)
        await serve.start()
        try:
            bodies = [webhook_body(i) for i in range(120)]
            # in order within a conversation (the order the replies are checked against, as
            # one user's phone sends them), concurrent across conversations
            lanes: dict[int, list[bytes]] = {}
            for i, (_, body) in enumerate(bodies):
                lanes.setdefault(i % USERS, []).append(body)
            async with httpx.AsyncClient() as client:
                results = await asyncio.gather(
                    *(_post_all(client, serve.url, lane) for lane in lanes.values())
                )
            assert all(ok for lane in results for ok in lane)
            wanted = {w for w, _ in bodies}
            await wait_until(
                lambda: wanted <= set(answered(graph)),
                within=15.0,
                what="every webhook answered",
                details=serve.log_tail,
            )
        finally:
            assert serve.proc is not None
            serve.proc.send_signal(signal.SIGTERM)
            serve.proc.wait(timeout=30)
    replies = answered(graph)
    assert set(replies) == wanted
    assert max(replies.values()) == 1
    log = [json.loads(x) for x in serve.log.read_text().splitlines() if x.startswith("{")]
    pids = Counter(e.get("pid") for e in log if e["event"] == "workers_started")
    assert pids  # the web process started its workers
    assert any(e["event"] == "workers_stopped" for e in log)
    # per conversation (user), replies left in the order the messages were sent
    order: dict[str, list[int]] = {}
    for request in graph.messages():
        wamid = str(request.body["biz_opaque_callback_data"])
        index = int(wamid.rsplit(".", 1)[1])
        order.setdefault(str(request.body.get("to")), []).append(index)
    assert all(seq == sorted(seq) for seq in order.values())


async def test_worker_processes_stop_when_serve_is_killed(tmp_path: Path) -> None:
    """SIGKILL on the web process leaves no orphan worker processes behind."""
    async with FakeGraphServer() as graph:
        serve = workers_serve(tmp_path, graph.url)
        await serve.start()
        log = [json.loads(x) for x in serve.log.read_text().splitlines() if x.startswith("{")]
        [started] = [e for e in log if e["event"] == "workers_started"]
        pids = [int(p) for p in started["pids"]]
        serve.kill9()
        await wait_until(  # the children look at their parent once a second
            lambda: not _alive(pids),
            within=10.0,
            what="the worker processes gone",
            details=lambda: f"still alive: {_alive(pids)}",
        )


async def _post_all(client: httpx.AsyncClient, url: str, bodies: list[bytes]) -> list[bool]:
    return [await post(client, url, body) for body in bodies]


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False


async def test_worker_processes_are_woken_by_the_web_process(tmp_path: Path) -> None:
    """With a 30 s poll, only the web process's wake explains a reply within seconds."""
    async with FakeGraphServer() as graph:
        env = {**serve_env(tmp_path / "data", graph.url), "PYLOTO_POLL_INTERVAL": "30"}
        serve = ServeProcess(tmp_path, env, ["--workers", "1"])
        await serve.start()
        try:
            log = [json.loads(x) for x in serve.log.read_text().splitlines() if x.startswith("{")]
            assert any(e["event"] == "workers_ready" for e in log)  # before /readyz answered
            # time for the worker's first poll to find nothing, so that it then waits 30 s; too
            # short only weakens the test (a poll would find the webhook), it cannot fail it
            await asyncio.sleep(0.5)
            wamid, body = webhook_body(1)
            async with httpx.AsyncClient() as client:
                assert await post(client, serve.url, body)
            await wait_until(
                lambda: answered(graph)[wamid], within=5.0, what="the reply", details=serve.log_tail
            )
            assert answered(graph)[wamid] == 1
        finally:
            serve.terminate()


@pytest.mark.parametrize("args", [["--workers", "1"], []], ids=["process", "thread"])
async def test_a_worker_that_cannot_start_stops_serve(tmp_path: Path, args: list[str]) -> None:
    """The web role needs no LLM client, the worker does: its failure must not leave a serve
    that acks and never answers."""
    env = {
        **serve_env(tmp_path / "data", "http://127.0.0.1:9"),
        "OPENAI_ENABLED": "true",
        "OPENAI_API_KEY": "sk-e2e",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "PYLOTO_PROMPTS_DIR": str(tmp_path / "no-such-dir"),
    }
    serve = ServeProcess(tmp_path, env, args)
    proc = serve.spawn()
    code = await asyncio.to_thread(proc.wait, 60)
    assert code == 1
    text = serve.log_tail(20_000)
    assert "error:" in text
    assert "WorkerFailed" in text
    assert ("before it was ready" in text) if args else ("PYLOTO_PROMPTS_DIR" in text)
