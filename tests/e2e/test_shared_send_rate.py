"""`pyloto serve --workers 3` with a send rate of 20/s: the three processes share one bucket per
business number (the host's SQLite state file), so together they send at 20/s, not 60/s."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_process import ServeProcess
from tests.e2e.test_kill9 import post, serve_env, webhook_body
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

RATE = 20
SPAN_S = 5.0


async def test_three_worker_processes_keep_to_one_send_rate_per_number(tmp_path: Path) -> None:
    async with FakeGraphServer() as graph:
        env = {
            **serve_env(tmp_path / "data", graph.url),
            "PYLOTO_SEND_RATE_PER_NUMBER": str(RATE),
            "PYLOTO_SHUTDOWN_GRACE_SECONDS": "1",  # the queue is not drained: stop soon
        }
        serve = ServeProcess(tmp_path, env, ["--workers", "3"])
        await serve.start()
        try:
            bodies = [body for _, body in (webhook_body(i) for i in range(180))]
            async with httpx.AsyncClient() as client:
                results = await asyncio.gather(*(post(client, serve.url, b) for b in bodies))
            assert all(results)
            # counted from here: while this loop was busy posting, the fake (on the same loop)
            # stamped requests late and in bunches; 180 messages at 20/s keep the span busy
            first = time.monotonic()
            await wait_until(  # the fake's clock: once a send arrives past the span, it is over
                lambda: bool(graph.messages()) and graph.messages()[-1].at >= first + SPAN_S,
                within=30.0,
                what=f"{SPAN_S:.0f} s of sends",
                details=serve.log_tail,
            )
        finally:
            assert serve.proc is not None
            serve.proc.send_signal(signal.SIGTERM)
            serve.proc.wait(timeout=30)
    times = [r.at for r in graph.messages() if first <= r.at < first + SPAN_S]
    assert len(times) <= SPAN_S * RATE + 2
    assert len(times) >= SPAN_S * RATE * 0.6  # they did send, near the rate
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= RATE + 2
