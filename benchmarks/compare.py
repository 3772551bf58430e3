"""pyloto beside the two reference bots: the same load, fakes and figures, one after another.

    .venv/bin/python -m benchmarks.compare [--systems inline,background,pyloto] [-n 300]
        [--rate 50 | --concurrency 64] [--llm-latency-ms 500] [--json]

Each system gets a fresh fake OpenAI server (a subprocess, 500 ms per call by default), a
fresh fake Graph API (in this process) and the same number of signed webhooks from the same
load generator (`pyloto_cli.bench`); the system runs with the same environment in each case:

- `inline`: benchmarks/reference/inline_bot.py (FastAPI, LLM calls and send before the 200);
- `background`: benchmarks/reference/pywa_bot.py (pywa on FastAPI, handler after the 200);
- `pyloto`: `python -m pyloto_cli serve` with the SQLite queue, as `pyloto bench` runs it.

With two or more CPUs, the system under test is pinned to the first one (every thread, once
it is ready; new threads inherit) and this process, the fakes and the load generator to the
others. The table gives each figure per system and its ratio to the first system (`inline`
by default). Replies are matched to webhooks by `biz_opaque_callback_data`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from pyloto_cli.bench.load import WEBHOOK_PATH, Ack, closed_loop, load_client, open_loop
from pyloto_cli.bench.payloads import Webhook, build_webhooks
from pyloto_cli.bench.procs import (
    ChildFailed,
    FakeLLMProcess,
    ServerProcess,
    child,
    cpu_seconds,
    fake_openai,
    free_port,
    log_tail,
    peak_rss_bytes,
    pyloto_serve,
)
from pyloto_cli.bench.report import BenchReport, RunRecord, summarize
from pyloto_cli.bench.runner import BenchConfig, ReplyTracker, describe, loop_factory, server_env
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.logs import configure_logging
from pyloto_cli.web.signature import sign

ROOT = Path(__file__).resolve().parent.parent
BOTS = {"inline": "benchmarks.reference.inline_bot", "background": "benchmarks.reference.pywa_bot"}
SYSTEMS = ("inline", "background", "pyloto")
READY_WITHIN_S = 30.0


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPUs the system under test gets, and which the rest of the run gets."""

    server: frozenset[int]
    rest: frozenset[int]


def split_cpus() -> Pinning | None:
    """The first usable CPU for the server, the others for the rest; None with one CPU."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None
    return Pinning(server=frozenset(usable[:1]), rest=frozenset(usable[1:]))


def pin_process(pid: int, cpus: frozenset[int]) -> None:
    """Pin every current thread of `pid` to `cpus` (threads made later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


def with_bsuid(hook: Webhook, secret: bytes) -> Webhook:
    """`hook` with the BSUID fields Meta sends since April 2026, re-signed if they were missing.

    pywa 4.x builds its user from `contacts[].user_id` and drops a message without it; the
    BSUID here is derived from the sender's wa_id, so contacts and messages agree.
    """
    payload = json.loads(hook.body)
    for entry in payload["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            for contact in value.get("contacts", []):
                contact.setdefault("user_id", f"US.9{contact['wa_id']}")
            for message in value.get("messages", []):
                message.setdefault("from_user_id", f"US.9{message['from']}")
    body = json.dumps(payload).encode()
    if body == hook.body:
        return hook
    return Webhook(wamid=hook.wamid, body=body, signature=sign(secret, body))


def webhooks(config: BenchConfig, secret: bytes, run_id: str) -> list[Webhook]:
    """The bench's webhooks for `config`, with BSUIDs."""
    users = config.users or config.messages
    hooks = build_webhooks(config.messages, users, secret, run_id, config.numbers)
    return [with_bsuid(hook, secret) for hook in hooks]


async def _wait_ready(proc: asyncio.subprocess.Process, server: ServerProcess, kind: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise ChildFailed(f"{kind} exited ({proc.returncode}): {log_tail(server.log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{server.url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise ChildFailed(f"{kind} not ready in {READY_WITHIN_S:.0f} s: {log_tail(server.log)}")


@contextlib.asynccontextmanager
async def reference_serve(
    kind: str, workdir: Path, env: Mapping[str, str]
) -> AsyncIterator[ServerProcess]:
    """`python -m benchmarks.reference.<bot> --port N` on loopback, ready when /readyz is 200."""
    port = free_port()
    server = ServerProcess(pid=0, url=f"http://127.0.0.1:{port}", log=workdir / f"{kind}.log")
    args = [sys.executable, "-m", BOTS[kind], "--port", str(port)]
    full_env = {**env, "PORT": str(port), "PYTHONPATH": str(ROOT)}
    async with child(args, log=server.log, cwd=ROOT, env=full_env) as proc:
        await _wait_ready(proc, server, kind)
        yield replace(server, pid=proc.pid)


def serve(
    kind: str, workdir: Path, env: Mapping[str, str]
) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """The system under test as a running process."""
    if kind == "pyloto":
        return pyloto_serve(workdir, env)
    return reference_serve(kind, workdir, env)


async def _drain(tracker: ReplyTracker, wanted: set[str], within_s: float) -> None:
    """Wait until every acknowledged webhook has a reply, or the deadline."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        tracker.poll()
        if wanted <= tracker.replies.keys():
            return
        await asyncio.sleep(0.05)


async def _load(
    config: BenchConfig, client: httpx.AsyncClient, url: str, hooks: Sequence[Webhook]
) -> list[Ack]:
    def ignore(_ack: Ack) -> None:
        return None

    if config.concurrency is not None:
        return await closed_loop(client, url, hooks, config.concurrency, ignore)
    return await open_loop(client, url, hooks, config.rate, ignore)


async def measure(
    config: BenchConfig,
    server: ServerProcess,
    llm: FakeLLMProcess,
    graph: FakeGraphServer,
    hooks: Sequence[Webhook],
) -> RunRecord:
    """Send the webhooks, wait for the replies, and record what happened."""
    tracker = ReplyTracker(graph)
    connections = config.concurrency or max(100, int(config.rate * 4))
    async with load_client(connections) as client:
        before = (cpu_seconds(server.pid), cpu_seconds(llm.pid), time.process_time())
        started = time.monotonic()
        acks = await _load(config, client, server.url + WEBHOOK_PATH, hooks)
        wanted = {hooks[a.index].wamid for a in acks if a.ok}
        await _drain(tracker, wanted, config.drain_timeout_s)
        finished = time.monotonic()
        after = (cpu_seconds(server.pid), cpu_seconds(llm.pid), time.process_time())
    tracker.poll()
    spent = [None if b is None or a is None else a - b for b, a in zip(before, after, strict=True)]
    return RunRecord(
        hooks=[h.wamid for h in hooks],
        acks=acks,
        replies=tracker.replies,
        started=started,
        finished=finished,
        cpu_s=spent[0],
        peak_rss=peak_rss_bytes(server.pid),
        dead_letters=None,
        fake_llm_cpu_s=spent[1],
        bench_cpu_s=spent[2],
    )


async def run_system(kind: str, config: BenchConfig, pinning: Pinning | None) -> BenchReport:
    """One system end to end: fakes and server up, load, drain, figures, all down."""
    secret = secrets.token_hex(16)
    hooks = webhooks(config, secret.encode(), f"{kind}-{secrets.token_hex(4)}")
    options = {
        "latency_ms": config.llm_latency_ms,
        "jitter_ms": config.llm_jitter_ms,
        "error_rate": config.llm_error_rate,
        "seed": config.seed,
    }
    with tempfile.TemporaryDirectory(prefix=f"pyloto-compare-{kind}-") as tmp:
        workdir = Path(tmp)
        child_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
        async with (
            FakeGraphServer() as graph,
            fake_openai(workdir, child_env, options) as llm,
        ):
            graph.delay_s = config.graph_latency_ms / 1000
            env = server_env(config, graph.url, llm.url, secret)
            async with serve(kind, workdir, env) as server:
                if pinning is not None:
                    pin_process(server.pid, pinning.server)
                record = await measure(config, server, llm, graph, hooks)
    return summarize({**describe(config), "system": kind}, record)


async def run_all(
    systems: Sequence[str], config: BenchConfig, pinning: Pinning | None, err: Console
) -> dict[str, BenchReport]:
    """Every system, one after another."""
    reports: dict[str, BenchReport] = {}
    for kind in systems:
        err.print(f"[bold]{kind}[/]: {config.messages} webhooks ...")
        reports[kind] = await run_system(kind, config, pinning)
        counts = reports[kind].counts
        err.print(f"  acked {counts.acked}, answered {counts.answered}, lost {counts.lost}")
    return reports


Figure = tuple[str, Callable[[BenchReport], float | None]]
FIGURES: tuple[Figure, ...] = (
    ("ack ms p50", lambda r: r.ack_ms.p50),
    ("ack ms p99", lambda r: r.ack_ms.p99),
    ("reply ms p50", lambda r: r.e2e_ms.p50),
    ("reply ms p99", lambda r: r.e2e_ms.p99),
    ("replies/s", lambda r: r.replies_per_s),
    ("server CPU ms/msg", lambda r: r.server.cpu_ms_per_msg),
    ("server peak RSS MB", lambda r: r.server.peak_rss_mb),
)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "-"
    ratio = value / base
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def comparison_table(reports: Mapping[str, BenchReport], pinned: bool) -> Table:
    """One row per figure, one column per system, then each system's ratio to the first."""
    names = list(reports)
    base = names[0]
    first = reports[base]
    load = f"{first.config['rate']:g}/s open loop"
    if first.config["mode"] == "closed":
        load = f"closed loop, {first.config['concurrency']} in flight"
    title = (
        f"{first.config['messages']} webhooks each, {load}, LLM {first.config['llm_latency_ms']:g}"
        f" ms per call; server {'pinned to one CPU' if pinned else 'not pinned'}"
    )
    caption = f"reply ms: from the webhook's due time to the Graph send; ratios: system / {base}"
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("figure")
    for name in names:
        table.add_column(name, justify="right")
    for name in names[1:]:
        table.add_column(f"{name} / {base}", justify="right")
    for label, get in FIGURES:
        values = [get(reports[n]) for n in names]
        ratios = [_ratio(v, values[0]) for v in values[1:]]
        table.add_row(label, *(_num(v) for v in values), *ratios)
    counts = [reports[n].counts for n in names]
    blanks = [""] * (len(names) - 1)
    table.add_row("acked / sent", *(f"{c.acked} / {c.sent}" for c in counts), *blanks)
    table.add_row(
        "answered/lost/doubled",
        *(f"{c.answered} / {c.lost} / {c.duplicated}" for c in counts),
        *blanks,
    )
    return table


def _systems(raw: str) -> list[str]:
    names = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names:
        raise SystemExit(f"--systems: choose from {', '.join(SYSTEMS)} (got {raw!r})")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="in this order")
    parser.add_argument("-n", "--messages", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="webhooks/s, open loop")
    parser.add_argument("--concurrency", type=int, default=None, help="closed loop instead")
    parser.add_argument("--users", type=int, default=None, help="default: one per webhook")
    parser.add_argument("--numbers", type=int, default=1, help="business numbers addressed")
    parser.add_argument("--llm-latency-ms", type=float, default=500.0)
    parser.add_argument("--llm-jitter-ms", type=float, default=50.0)
    parser.add_argument("--llm-error-rate", type=float, default=0.0, help="answered 500")
    parser.add_argument("--graph-latency-ms", type=float, default=0.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--server-log-level", default="INFO", help="pyloto's PYLOTO_LOG_LEVEL")
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the table (or JSON)."""
    args = _parser().parse_args(argv)
    systems = _systems(args.systems)
    config = BenchConfig(
        messages=args.messages,
        rate=args.rate,
        concurrency=args.concurrency,
        users=args.users,
        numbers=args.numbers,
        llm_latency_ms=args.llm_latency_ms,
        llm_jitter_ms=args.llm_jitter_ms,
        llm_error_rate=args.llm_error_rate,
        graph_latency_ms=args.graph_latency_ms,
        drain_timeout_s=args.drain_timeout,
        server_log_level=args.server_log_level,
    )
    console, err = Console(), Console(stderr=True)
    pinning = None if args.no_pin else split_cpus()
    if pinning is not None:  # before any thread or child exists: all of them inherit it
        os.sched_setaffinity(0, pinning.rest)
    elif not args.no_pin:
        err.print("[yellow]one CPU only: nothing pinned[/]")
    configure_logging("console", "WARNING")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        reports = runner.run(run_all(systems, config, pinning, err))
    if args.json:
        print(json.dumps({k: r.to_json() for k, r in reports.items()}, indent=2))
    else:
        console.print(comparison_table(reports, pinning is not None))


if __name__ == "__main__":
    main()
