"""`/metrics` of `pyloto serve --workers 1` shows the worker process's counters too."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_process import ServeProcess
from tests.e2e.test_kill9 import answered, post, serve_env, webhook_body
from tests.fakes.graph_server import FakeGraphServer
from tests.scraping import Samples, scrape_text, value
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


async def test_web_process_scrape_adds_the_worker_process(tmp_path: Path) -> None:
    """Webhooks counted by the web process and sends counted by its worker child appear in
    one scrape; what an earlier run left in the metrics directory is cleared at start."""
    data = tmp_path / "data"
    stale = data / "metrics" / "left-by-an-earlier-run"
    stale.parent.mkdir(parents=True)
    stale.write_text("x")
    async with FakeGraphServer() as graph:
        env = {**serve_env(data, graph.url), "PYLOTO_METRICS": "true"}
        serve = ServeProcess(tmp_path, env, ["--workers", "1"])
        await serve.start()
        try:
            assert not stale.exists()
            async with httpx.AsyncClient() as client:
                bodies = [webhook_body(i) for i in range(3)]
                assert all([await post(client, serve.url, body) for _, body in bodies])

                async def scrape() -> Samples | None:
                    response = await client.get(f"{serve.url}/metrics")
                    assert response.status_code == 200, response.text
                    samples = scrape_text(response.text)
                    done = value(samples, "pyloto_tasks_processed_total", outcome="done")
                    # a task is counted before its ack commits (the ack joins the next commit)
                    drained = value(samples, "pyloto_queue_depth") == 0
                    return samples if done == 3 and drained else None

                samples = await wait_until(
                    scrape, within=20.0, what="3 tasks acked in /metrics", details=serve.log_tail
                )
        finally:
            serve.terminate()
    assert samples is not None
    assert len(answered(graph)) == 3
    assert value(samples, "pyloto_webhooks_received_total") == 3  # the web process
    assert value(samples, "pyloto_tasks_enqueued_total") == 3
    assert value(samples, "pyloto_graph_sends_total", outcome="sent", code="") == 3  # the child
    assert value(samples, "pyloto_task_processing_seconds_count") == 3
    assert ("pyloto_queue_depth", frozenset()) in samples  # read from the queue at the scrape
    assert value(samples, "pyloto_queue_depth") == 0
