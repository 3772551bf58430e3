"""`pyloto bench`: real runs (server, fakes, HTTP) and the honesty of the load generator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from benchmarks import ack_floor
from pyloto_cli.bench.load import Ack, LoadClient, open_loop, post_webhook
from pyloto_cli.bench.payloads import build_webhooks
from pyloto_cli.bench.procs import (
    cpu_seconds,
    peak_rss_bytes,
    process_tree,
    tree_cpu_seconds,
    tree_peak_rss_bytes,
)
from pyloto_cli.bench.report import percentile
from pyloto_cli.cli import app
from pyloto_cli.domain.signature import verify_signature
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.fakes.openai_server import FakeOpenAIServer
from tests.waiting import wait_until


def run_bench(runner: CliRunner, *args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["bench", *args, "--json"])
    assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_small_open_loop_run_answers_every_webhook_exactly_once(runner: CliRunner) -> None:
    """20 signed webhooks at 20/s through the real server and LLM stages: all answered once."""
    report = run_bench(
        runner, "-n", "20", "--rate", "20", "--llm-latency-ms", "20", "--llm-jitter-ms", "5"
    )
    counts = report["counts"]
    assert (counts["sent"], counts["acked"], counts["answered"], counts["replies"]) == (20,) * 4
    assert (counts["lost"], counts["duplicated"], counts["rejected"], counts["failed"]) == (0,) * 4
    assert counts["dead_letters"] == 0
    assert report["ack_ms"]["count"] == 20
    assert report["ack_ms"]["p50"] > 0
    assert report["e2e_ms"]["count"] == 20
    # LLM#3 waits for LLM#2 (each >= 15 ms here): the real responder is on the path
    assert report["e2e_ms"]["p50"] >= 30
    assert report["ack_ms"]["p99"] <= report["ack_ms"]["max"]
    assert report["replies_per_s"] > 0
    assert report["server"]["cpu_ms_per_msg"] > 0
    assert report["server"]["peak_rss_mb"] > 0
    assert report["config"]["mode"] == "open"


def test_closed_loop_with_a_failing_llm_still_answers_every_webhook_once(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the LLM calls answered 500: a reply the LLM could not write is retried (no safe
    reply, no promise), and every webhook is answered once. Short backoffs keep it quick."""
    monkeypatch.setenv("PYLOTO_RETRY_BASE_SECONDS", "0.05")
    monkeypatch.setenv("PYLOTO_RETRY_CAP_SECONDS", "0.2")
    monkeypatch.setenv("PYLOTO_LLM_BREAKER_FAILURES", "1000")
    report = run_bench(
        runner,
        *("-n", "8", "--concurrency", "4", "--users", "3"),
        *("--llm-latency-ms", "0", "--llm-jitter-ms", "0", "--llm-error-rate", "0.5"),
    )
    counts = report["counts"]
    assert counts["acked"] == counts["answered"] == 8
    assert counts["lost"] == counts["duplicated"] == 0
    assert report["config"]["mode"] == "closed"


async def test_open_loop_sends_on_schedule_while_answers_are_slow() -> None:
    """Coordinated omission: every request leaves before the first (1 s) answer comes back."""
    hooks = build_webhooks(10, 10, b"secret", "sched")
    acks: list[Ack] = []
    async with FakeGraphServer() as slow, LoadClient(20) as client:
        slow.delay_s = 1.0
        url = f"{slow.url}/v25.0/109000000000001/messages"
        result = await open_loop(client, url, hooks, 100.0, acks.append)
    assert [a.index for a in result] == list(range(10))
    assert len(acks) == 10
    assert all(a.ok for a in result)
    assert max(a.started for a in result) < min(a.finished for a in result)
    assert all(a.latency_s >= 1.0 for a in result)  # counted from when each was due


async def test_open_loop_cancelled_sends_nothing_more() -> None:
    """A run cancelled halfway (Ctrl-C) stops its pacing thread: no request leaves after it."""
    hooks = build_webhooks(40, 40, b"secret", "cancel")
    async with FakeGraphServer() as graph, LoadClient(20) as client:
        url = f"{graph.url}/v25.0/109000000000001/messages"
        run = asyncio.create_task(open_loop(client, url, hooks, 20.0, lambda _: None))
        await wait_until(lambda: len(graph.requests) >= 3, what="the run under way")
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        sent = len(graph.requests)
        await asyncio.sleep(0.3)  # a window in which six more would have been due
        assert 0 < sent < 40
        assert len(graph.requests) == sent


async def test_open_loop_sends_each_webhook_when_due() -> None:
    """The pacing thread hands each POST over on schedule: the first of 20 at 200/s leaves at
    once and the last 95 ms later, not all at the start or one event-loop tick late each."""
    hooks = build_webhooks(20, 20, b"secret", "due")
    async with FakeGraphServer() as graph, LoadClient(20) as client:
        url = f"{graph.url}/v25.0/109000000000001/messages"
        acks = await open_loop(client, url, hooks, 200.0, lambda _: None)
    dues = [a.due - acks[0].due for a in acks]
    assert dues == pytest.approx([i / 200 for i in range(20)], abs=1e-6)
    assert all(a.started >= a.due for a in acks)
    assert acks[-1].started - acks[0].started >= 0.09


async def test_a_post_that_cannot_connect_is_a_failed_ack() -> None:
    """Nothing listening: the ack carries no status and the client's error, and is not ok."""
    hook = build_webhooks(1, 1, b"secret", "refused")[0]
    async with LoadClient(2, timeout_s=2.0) as client:
        ack = await post_webhook(client, "http://127.0.0.1:9/webhooks/whatsapp", hook, 0, 0.0)
    assert ack.status is None
    assert not ack.ok
    assert ack.error == "ConnectionRefusedError"
    assert ack.finished >= ack.started


async def test_ack_floor_measures_a_server_that_does_nothing() -> None:
    """benchmarks.ack_floor: every POST answered 200 by the trivial app, and the three figures
    (lag, round trip, ack) measured for each."""
    started = time.monotonic()
    result = await ack_floor.measure(20, 100.0)
    assert result["acked"] == 20
    for name in ("lag_ms", "round_trip_ms", "ack_ms"):
        assert result[name]["count"] == 20
    assert result["ack_ms"]["p50"] >= result["round_trip_ms"]["p50"] > 0
    assert time.monotonic() - started >= 0.19  # 20 at 100/s: paced, not sent at once


def test_webhooks_are_signed_and_unique() -> None:
    """Each body verifies against its own signature; wamids differ; senders go round robin."""
    hooks = build_webhooks(6, 2, b"s3cret", "run1")
    for hook in hooks:
        verify_signature(b"s3cret", hook.body, hook.signature)
    assert len({h.wamid for h in hooks}) == 6
    values = [json.loads(h.body)["entry"][0]["changes"][0]["value"] for h in hooks]
    senders = [value["messages"][0]["from"] for value in values]
    assert len(set(senders)) == 2


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..100 is 50, p99 is 99, p100 the maximum; one value is every percentile."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_proc_figures_of_this_process() -> None:
    """CPU seconds and peak RSS are read for a live pid and are None for a missing one."""
    assert (cpu_seconds(os.getpid()) or 0) > 0
    assert (peak_rss_bytes(os.getpid()) or 0) > 1_000_000
    assert cpu_seconds(2**22 + 1) is None
    assert peak_rss_bytes(2**22 + 1) is None


def test_tree_figures_count_child_processes() -> None:
    """`serve --workers N` is measured as a tree: a live child is in it, and in its sums."""
    code = "import sys; sys.stdin.read()"  # lives until its stdin closes
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE) as kid:
        try:
            assert kid.pid in process_tree(os.getpid())
            own_rss = peak_rss_bytes(os.getpid()) or 0
            assert (tree_peak_rss_bytes(os.getpid()) or 0) > own_rss
            own_cpu = cpu_seconds(os.getpid()) or 0  # read first: CPU only grows
            assert (tree_cpu_seconds(os.getpid()) or 0) >= own_cpu
        finally:
            assert kid.stdin is not None
            kid.stdin.close()
            kid.wait(timeout=10)
    assert tree_cpu_seconds(2**22 + 1) is None


async def test_fake_llm_error_rate_and_jitter() -> None:
    """error_rate=1 answers every unscripted call with the error status; jitter stays in range."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    fake_llm = FakeOpenAIServer(latency_ms=5, jitter_ms=5, error_rate=1.0, seed=3)
    async with fake_llm as fake, httpx.AsyncClient(trust_env=False) as client:
        url = f"{fake.base_url}/chat/completions"
        answers = [await client.post(url, json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [500] * 3
    assert all(0 <= (r.finished or 0) - r.arrived < 1.0 for r in fake.requests)


def test_reply_cache_hit_rate_is_reported(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PYLOTO_REPLY_CACHE on, repeated first-turn greetings are answered from the cache."""
    monkeypatch.setenv("PYLOTO_REPLY_CACHE", "true")
    report = run_bench(
        runner,
        *("-n", "20", "--rate", "40", "--greetings", "0.5"),
        *("--llm-latency-ms", "5", "--llm-jitter-ms", "1"),
    )
    assert report["counts"]["answered"] == 20
    assert report["counts"]["duplicated"] == 0
    cache = report["reply_cache"]
    # 10 greetings, 5 distinct texts, one conversation each: 5 misses, then 5 hits
    assert (cache["enabled"], cache["hits"], cache["misses"]) == (True, 5, 5)
    assert cache["hit_rate"] == 0.5
