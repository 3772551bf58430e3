"""One bench run end to end: fakes and server up, load, drain, figures, everything down.

The fake Graph API runs in this process's event loop, so a reply's arrival time and the
webhook's due time come from the same `time.monotonic()`; replies are matched to webhooks by
`biz_opaque_callback_data`, which pyloto sets to the inbound wamid. The fake OpenAI server runs
as a subprocess (its CPU stays out of the server's and the load generator's). The server's CPU
is read from /proc right after it is ready and again after the drain, so start-up is excluded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from pyloto_cli.bench.load import (
    WEBHOOK_PATH,
    Ack,
    LoadClient,
    closed_loop,
    get_json,
    open_loop,
    pool_size,
)
from pyloto_cli.bench.payloads import Webhook, build_webhooks
from pyloto_cli.bench.procs import (
    FakeLLMProcess,
    ServerProcess,
    fake_openai,
    pyloto_serve,
    tree_cpu_seconds,
    tree_peak_rss_bytes,
)
from pyloto_cli.bench.report import (
    BenchReport,
    ReplyCacheUsage,
    RunRecord,
    reply_cache_usage,
    summarize,
)
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.logs import get_logger, log_event

_log = get_logger("bench")
_TICK_S = 0.1


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """The options of one run; the defaults finish in well under a minute."""

    messages: int = 300
    rate: float = 50.0
    concurrency: int | None = None  # set: closed loop at this many in flight, `rate` unused
    users: int | None = None  # None: one conversation per message
    numbers: int = 1  # business numbers the webhooks are addressed to (sends are paced per number)
    greetings: float = 0.0  # share of webhooks that are short greetings (reply cache eligible)
    llm_latency_ms: float = 500.0
    llm_jitter_ms: float = 50.0
    llm_error_rate: float = 0.0
    graph_latency_ms: float = 0.0
    drain_timeout_s: float = 30.0
    server_log_level: str = "INFO"
    data_dir: Path | None = None  # parent of the run's temporary directory
    keep: bool = False  # keep that directory (server log, SQLite files) after the run
    seed: int = 1
    workers: int = 0  # `pyloto serve --workers N`: N worker processes beside the web process
    queue: str = "sqlite"  # QUEUE_BACKEND (redis and pubsub read their servers from the env)
    # 0: senders round robin; N: each sender writes N messages 1 s apart, `rate` senders a second
    messages_per_user: int = 0

    @property
    def mode(self) -> str:
        """`open` (rate) or `closed` (concurrency)."""
        return "open" if self.concurrency is None else "closed"


class BenchProgress(Protocol):
    """Receives counts while the run goes (the CLI draws a progress bar)."""

    def update(self, *, sent: int, acked: int, answered: int, total: int) -> None:
        """Called every tick and once at the end."""


class _Silent:
    def update(self, *, sent: int, acked: int, answered: int, total: int) -> None:
        return None


class ReplyTracker:
    """Reads the fake Graph server's record incrementally: callback data -> arrival times."""

    def __init__(self, graph: FakeGraphServer) -> None:
        self._graph = graph
        self._seen = 0
        self.replies: dict[str, list[float]] = {}

    def poll(self) -> int:
        """Take in new requests; returns how many inbound wamids have at least one reply."""
        requests = self._graph.requests
        for request in requests[self._seen :]:
            body = request.body
            if request.answered != 200 or not isinstance(body, dict) or "status" in body:
                continue  # an injected failure or a read receipt: not a delivered reply
            key = body.get("biz_opaque_callback_data")
            if isinstance(key, str):
                self.replies.setdefault(key, []).append(request.at)
        self._seen = len(requests)
        return len(self.replies)


def server_env(config: BenchConfig, graph_url: str, openai_url: str, secret: str) -> dict[str, str]:
    """The server's environment: the caller's (PYLOTO_* tuning passes), then the bench's."""
    env = {k: v for k, v in os.environ.items() if k not in {"PORT", "PYLOTO_PORT"}}
    env.update(
        {
            "PYLOTO_DATA_DIR": "data",
            "WHATSAPP_APP_SECRET": secret,
            "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8),
            "WHATSAPP_ACCESS_TOKEN": "bench",
            "GRAPH_API_URL": graph_url,
            "OPENAI_ENABLED": "true",
            "OPENAI_API_KEY": "bench",
            "OPENAI_BASE_URL": openai_url,
            "QUEUE_BACKEND": config.queue,
            "SESSION_STORE_BACKEND": "sqlite",
            "DEDUPE_BACKEND": "sqlite",
            "PYLOTO_WORKER_ENABLED": "true",
            "PYLOTO_LOG_FORMAT": "json",
            "PYLOTO_LOG_LEVEL": config.server_log_level,
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    return env


async def _ticker(progress: BenchProgress, counts: dict[str, int], tracker: ReplyTracker) -> None:
    while True:
        answered = tracker.poll()
        progress.update(
            sent=counts["sent"], acked=counts["acked"], answered=answered, total=counts["total"]
        )
        await asyncio.sleep(_TICK_S)


async def _send(
    config: BenchConfig,
    client: LoadClient,
    url: str,
    hooks: list[Webhook],
    counts: dict[str, int],
) -> list[Ack]:
    def on_ack(ack: Ack) -> None:
        counts["sent"] += 1
        counts["acked"] += ack.ok

    if config.concurrency is not None:
        return await closed_loop(client, url, hooks, config.concurrency, on_ack)
    return await open_loop(client, url, hooks, config.rate, on_ack)


async def queue_depth(client: LoadClient, url: str) -> tuple[int | None, int | None]:
    """The queue's depth and dead-letter count from the server's /readyz (None: unknown)."""
    ready = await get_json(client, f"{url}/readyz")
    queue = ready.get("queue", {}) if isinstance(ready, dict) else {}
    return queue.get("depth"), queue.get("dead")


async def _drain(
    client: LoadClient,
    server: ServerProcess,
    tracker: ReplyTracker,
    wanted: set[str],
    within_s: float,
) -> int | None:
    """Wait until every acked webhook was answered and the queue is empty; the dead count."""
    deadline = time.monotonic() + within_s
    dead: int | None = None
    while time.monotonic() < deadline:
        tracker.poll()
        if wanted <= tracker.replies.keys():
            depth, dead = await queue_depth(client, server.url)
            if depth in (0, None):  # None: the queue reports no depth (Pub/Sub)
                break
        await asyncio.sleep(0.05)
    else:
        _, dead = await queue_depth(client, server.url)
    tracker.poll()
    return dead


@dataclass(frozen=True, slots=True)
class _Peers:
    """What a run talks to, once everything is up."""

    client: LoadClient
    server: ServerProcess
    graph: FakeGraphServer
    llm: FakeLLMProcess


def _cpu(peers: _Peers) -> tuple[float | None, float | None, float]:
    """CPU seconds so far: the server (with its worker processes), the fake LLM, this process."""
    server, llm = tree_cpu_seconds(peers.server.pid), tree_cpu_seconds(peers.llm.pid)
    return server, llm, time.process_time()


def spent_between(before: float | None, after: float | None) -> float | None:
    """CPU seconds between two readings (None if either is unknown)."""
    return None if before is None or after is None else after - before


async def _measure(
    config: BenchConfig, peers: _Peers, hooks: list[Webhook], progress: BenchProgress
) -> RunRecord:
    tracker = ReplyTracker(peers.graph)
    counts = {"sent": 0, "acked": 0, "total": len(hooks)}
    cpu_before = _cpu(peers)
    started = time.monotonic()
    ticker = asyncio.create_task(_ticker(progress, counts, tracker))
    try:
        url = peers.server.url + WEBHOOK_PATH
        acks = await _send(config, peers.client, url, hooks, counts)
        wanted = {hooks[a.index].wamid for a in acks if a.ok}
        dead = await _drain(peers.client, peers.server, tracker, wanted, config.drain_timeout_s)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
    finished = time.monotonic()
    cpu_after = _cpu(peers)
    progress.update(
        sent=counts["sent"], acked=counts["acked"], answered=tracker.poll(), total=len(hooks)
    )
    return RunRecord(
        hooks=[h.wamid for h in hooks],
        acks=acks,
        replies=tracker.replies,
        started=started,
        finished=finished,
        cpu_s=spent_between(cpu_before[0], cpu_after[0]),
        peak_rss=tree_peak_rss_bytes(peers.server.pid),
        dead_letters=dead,
        fake_llm_cpu_s=spent_between(cpu_before[1], cpu_after[1]),
        bench_cpu_s=spent_between(cpu_before[2], cpu_after[2]),
        reply_cache=_reply_cache(peers.server.log),
    )


def _reply_cache(log: Path) -> ReplyCacheUsage:
    """The server's reply cache figures, from its log (every reply was logged before sent)."""
    try:
        with log.open(encoding="utf-8", errors="replace") as lines:
            return reply_cache_usage(lines)
    except OSError:
        return ReplyCacheUsage(None)


def senders_of(config: BenchConfig) -> list[int] | None:
    """With `messages_per_user` N: webhook i's sender, so that each second `rate` senders write,
    and each sender writes N messages in N consecutive seconds (then the next `rate` senders)."""
    per_user = config.messages_per_user
    if per_user <= 0:
        return None
    per_second = max(1, round(config.rate))
    return [
        (i // per_second // per_user) * per_second + i % per_second for i in range(config.messages)
    ]


def describe(config: BenchConfig) -> dict[str, Any]:
    """The options as plain values, for the report."""
    data = asdict(config)
    data["data_dir"] = None if config.data_dir is None else str(config.data_dir)
    data["mode"] = config.mode
    return data


def run_workdir(
    config: BenchConfig, stack: contextlib.AsyncExitStack, prefix: str = "pyloto-bench-"
) -> Path:
    """The run's directory under `config.data_dir`: removed on exit unless `config.keep`."""
    parent = config.data_dir
    if config.keep:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        log_event(_log, "bench_workdir_kept", path=str(path))
        return path
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix, dir=parent)))


def pyloto_args(config: BenchConfig) -> list[str]:
    """`pyloto serve`'s arguments for `config`."""
    return ["--workers", str(config.workers)] if config.workers else []


def fake_openai_options(config: BenchConfig) -> Mapping[str, Any]:
    """The fake OpenAI server's command-line options for `config`."""
    return {
        "latency_ms": config.llm_latency_ms,
        "jitter_ms": config.llm_jitter_ms,
        "error_rate": config.llm_error_rate,
        "seed": config.seed,
    }


async def run_bench(config: BenchConfig, progress: BenchProgress | None = None) -> BenchReport:
    """Run the bench once and return its figures; every process and server is stopped after."""
    secret = secrets.token_hex(16)
    users = config.users or config.messages
    run_id = secrets.token_hex(4)
    senders = senders_of(config)
    hooks = build_webhooks(
        config.messages,
        users,
        secret.encode(),
        run_id,
        config.numbers,
        config.greetings,
        user_of=senders,
    )
    log_event(_log, "bench_started", **describe(config))
    child_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    async with contextlib.AsyncExitStack() as stack:
        workdir = run_workdir(config, stack)
        graph = await stack.enter_async_context(FakeGraphServer())
        graph.delay_s = config.graph_latency_ms / 1000
        llm = await stack.enter_async_context(
            fake_openai(workdir, child_env, fake_openai_options(config))
        )
        env = server_env(config, graph.url, llm.url, secret)
        server = await stack.enter_async_context(
            pyloto_serve(workdir, env, args=pyloto_args(config))
        )
        client = await stack.enter_async_context(
            LoadClient(pool_size(config.rate, config.concurrency))
        )
        peers = _Peers(client=client, server=server, graph=graph, llm=llm)
        record = await _measure(config, peers, hooks, progress or _Silent())
        record = replace(record, users=senders)
    kept = {"workdir": str(workdir) if config.keep else None}
    report = summarize({**describe(config), **kept}, record)
    log_event(
        _log,
        "bench_finished",
        answered=report.counts.answered,
        lost=report.counts.lost,
        duplicated=report.counts.duplicated,
    )
    return report
