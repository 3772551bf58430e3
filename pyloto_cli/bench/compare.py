"""pyloto beside the reference bots: the same load, fakes and figures, one system after another.

Systems: `inline` (benchmarks/reference/inline_bot.py: FastAPI, the LLM calls and the send
before the 200), `background` (benchmarks/reference/pywa_bot.py: pywa on FastAPI, the handler
after the 200) and `pyloto` (`python -m pyloto_cli serve`, SQLite queue). Each system gets a
fresh fake OpenAI server (a subprocess), a fresh fake Graph API (in this process) and the same
number of signed webhooks from the same load generator. With two or more CPUs the system under
test is pinned to the first one (every thread of every process of it, once it is ready) and
this process, the fakes and the load generator to the others. Replies are matched to webhooks
by `biz_opaque_callback_data`. With `--wire` (Linux, as root), the server's acks are also
taken off the loopback wire (`bench/wire.py`): its own ack time, without the load generator's.

The reference bots live in the source checkout (`benchmarks/reference/`, not installed with the
package) and need the `bench` extra (FastAPI, pywa): `reference_problem()` says what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from pyloto_cli.bench.load import WEBHOOK_PATH, Ack, LoadClient, closed_loop, open_loop, pool_size
from pyloto_cli.bench.payloads import Webhook, build_webhooks
from pyloto_cli.bench.procs import (
    FakeLLMProcess,
    ServerProcess,
    child,
    fake_openai,
    first_line,
    free_port,
    process_tree,
    pyloto_serve,
    tree_cpu_seconds,
    tree_peak_rss_bytes,
    wait_ready,
)
from pyloto_cli.bench.report import BenchReport, RunRecord, summarize
from pyloto_cli.bench.runner import (
    BenchConfig,
    ReplyTracker,
    describe,
    fake_openai_options,
    pyloto_args,
    run_workdir,
    server_env,
    spent_between,
)
from pyloto_cli.domain.signature import sign
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.logs import get_logger, log_event

BOTS = {"inline": "benchmarks.reference.inline_bot", "background": "benchmarks.reference.pywa_bot"}
SYSTEMS = ("inline", "background", "pyloto")
# the fakes and the bots have no send limit; pyloto's default (80/s, Meta's default tier) would
# cap its replies/s below the others', so the comparison runs it at Meta's upgraded tier
COMPARE_SEND_RATE = "1000"
_NEEDS = {"inline": ("fastapi", "uvicorn"), "background": ("fastapi", "uvicorn", "pywa")}
_READY_WITHIN_S = 30.0
_log = get_logger("bench")


def source_root() -> Path:
    """The checkout holding `pyloto_cli/` (and, in a clone, `benchmarks/`)."""
    return Path(__file__).resolve().parents[2]


def reference_problem(systems: Sequence[str]) -> str | None:
    """Why the reference bots among `systems` cannot run here, or None when they can."""
    bots = [s for s in systems if s in BOTS]
    if not bots:
        return None
    if not (source_root() / "benchmarks" / "reference" / "inline_bot.py").is_file():
        return (
            "the reference bots are in the source checkout (benchmarks/reference/), not in "
            "the installed package: run from a clone of pyloto"
        )
    missing = sorted({m for s in bots for m in _NEEDS[s] if importlib.util.find_spec(m) is None})
    if missing:
        return (
            f"the reference bots need {', '.join(missing)}: "
            "pip install -e '.[bench]' (the `bench` extra)"
        )
    return None


def parse_systems(raw: str, *, with_pyloto: bool) -> list[str]:
    """`inline,background` -> the systems in order (pyloto last when `with_pyloto`)."""
    names = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"choose from {', '.join(SYSTEMS)} (got {raw!r})")
    if with_pyloto and "pyloto" not in names:
        names.append("pyloto")
    return names


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


@contextlib.contextmanager
def pinned_here(pinning: Pinning | None) -> Iterator[None]:
    """This process (and what it starts) on `pinning.rest` for the block, then as before."""
    if pinning is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, pinning.rest)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_process(pid: int, cpus: frozenset[int]) -> None:
    """Pin every thread of `pid` and of its descendants to `cpus` (new threads inherit it)."""
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):  # a process or thread that just ended
            for tid in os.listdir(f"/proc/{proc}/task"):
                with contextlib.suppress(OSError):
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


@contextlib.asynccontextmanager
async def reference_serve(
    kind: str, workdir: Path, env: Mapping[str, str]
) -> AsyncIterator[ServerProcess]:
    """`python -m benchmarks.reference.<bot> --port N` on loopback, ready when /readyz is 200."""
    root = source_root()
    port = free_port()
    server = ServerProcess(pid=0, url=f"http://127.0.0.1:{port}", log=workdir / f"{kind}.log")
    args = [sys.executable, "-m", BOTS[kind], "--port", str(port)]
    full_env = {**env, "PORT": str(port), "PYTHONPATH": str(root)}
    async with child(args, log=server.log, cwd=root, env=full_env) as proc:
        await wait_ready(proc, server.url, server.log, _READY_WITHIN_S, kind)
        yield replace(server, pid=proc.pid)


def serve(
    kind: str, config: BenchConfig, workdir: Path, env: Mapping[str, str]
) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """The system under test as a running process."""
    if kind == "pyloto":
        env = {"PYLOTO_SEND_RATE_PER_NUMBER": COMPARE_SEND_RATE, **env}
        return pyloto_serve(workdir, env, args=pyloto_args(config))
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
    config: BenchConfig, client: LoadClient, url: str, hooks: Sequence[Webhook]
) -> list[Ack]:
    def ignore(_ack: Ack) -> None:
        return None

    if config.concurrency is not None:
        return await closed_loop(client, url, hooks, config.concurrency, ignore)
    return await open_loop(client, url, hooks, config.rate, ignore)


@dataclass(slots=True)
class WireRecord:
    """What `wire_capture` saw: the server's ack latencies in seconds, or None without one."""

    latencies_s: list[float] | None = None


@contextlib.asynccontextmanager
async def wire_capture(workdir: Path, port: int, *, on: bool = True) -> AsyncIterator[WireRecord]:
    """The acks of the server on `port`, taken off the wire while the block runs (a child
    process: `pyloto_cli.bench.wire`). Off, or where it cannot capture (not Linux, no
    CAP_NET_RAW), the record stays None and the run goes on.

    It is off unless asked for (`BenchConfig.wire`): the kernel hands a copy of every loopback
    packet the server sends to the capture's filter, and the capture wakes on the generator's
    CPU for each of the server's packets. Measured: about 1 ms more client ack p99 and up to
    10 % more server CPU per message with it on (docs/performance.md, session 11)."""
    record = WireRecord()
    if not on or not sys.platform.startswith("linux"):
        yield record
        return
    out = workdir / f"wire-acks-{port}.json"
    args = [sys.executable, "-m", "pyloto_cli.bench.wire", "--port", str(port), "--out", str(out)]
    log = workdir / "wire.log"
    async with child(args, log=log, cwd=workdir, env=os.environ, pipe_stdout=True) as proc:
        line = await first_line(proc, _READY_WITHIN_S)
        capturing = line.startswith(b"capturing")
        if not capturing:
            log_event(_log, "bench_wire_capture_off", reason=line.decode(errors="replace").strip())
        yield record
    if capturing:  # the child wrote its figures on the SIGTERM that stopped it
        with contextlib.suppress(OSError, ValueError):
            record.latencies_s = [float(s) for s in json.loads(out.read_text())]


async def measure(
    config: BenchConfig,
    server: ServerProcess,
    llm: FakeLLMProcess,
    graph: FakeGraphServer,
    hooks: Sequence[Webhook],
    workdir: Path,
) -> RunRecord:
    """Send the webhooks, wait for the replies, and record what happened; with `config.wire`
    the server's acks are also taken off the wire while the webhooks go out."""
    tracker = ReplyTracker(graph)
    port = urllib.parse.urlsplit(server.url).port or 80
    async with LoadClient(pool_size(config.rate, config.concurrency)) as client:
        before = (tree_cpu_seconds(server.pid), tree_cpu_seconds(llm.pid), time.process_time())
        started = time.monotonic()
        async with wire_capture(workdir, port, on=config.wire) as wire:
            acks = await _load(config, client, server.url + WEBHOOK_PATH, hooks)
        wanted = {hooks[a.index].wamid for a in acks if a.ok}
        await _drain(tracker, wanted, config.drain_timeout_s)
        finished = time.monotonic()
        after = (tree_cpu_seconds(server.pid), tree_cpu_seconds(llm.pid), time.process_time())
        peak = tree_peak_rss_bytes(server.pid)
    tracker.poll()
    spent = [spent_between(b, a) for b, a in zip(before, after, strict=True)]
    return RunRecord(
        hooks=[h.wamid for h in hooks],
        acks=acks,
        replies=tracker.replies,
        started=started,
        finished=finished,
        cpu_s=spent[0],
        peak_rss=peak,
        dead_letters=None,
        fake_llm_cpu_s=spent[1],
        bench_cpu_s=spent[2],
        wire_acks_s=wire.latencies_s,
    )


async def run_system(kind: str, config: BenchConfig, pinning: Pinning | None) -> BenchReport:
    """One system end to end: fakes and server up, load, drain, figures, all down."""
    secret = secrets.token_hex(16)
    hooks = webhooks(config, secret.encode(), f"{kind}-{secrets.token_hex(4)}")
    async with contextlib.AsyncExitStack() as stack:
        workdir = run_workdir(config, stack, prefix=f"pyloto-compare-{kind}-")
        child_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
        async with (
            FakeGraphServer() as graph,
            fake_openai(workdir, child_env, fake_openai_options(config)) as llm,
        ):
            graph.delay_s = config.graph_latency_ms / 1000
            env = server_env(config, graph.url, llm.url, secret)
            async with serve(kind, config, workdir, env) as server:
                if pinning is not None:
                    pin_process(server.pid, pinning.server)
                record = await measure(config, server, llm, graph, hooks, workdir)
    extra: dict[str, object] = {
        "pinned": pinning is not None,
        "system": kind,
        "workdir": str(workdir) if config.keep else None,
    }
    if kind == "pyloto":
        extra["send_rate_per_number"] = env.get("PYLOTO_SEND_RATE_PER_NUMBER", COMPARE_SEND_RATE)
    return summarize({**describe(config), **extra}, record)


class CompareProgress:
    """Told when each system starts and ends (the CLI prints a line)."""

    def started(self, kind: str, config: BenchConfig) -> None:
        """Before `kind` runs."""

    def finished(self, kind: str, report: BenchReport) -> None:
        """After `kind` ran."""


class CompareLines(CompareProgress):
    """One line per system on `console` (stderr, for the CLI and the script)."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def started(self, kind: str, config: BenchConfig) -> None:
        """`inline: 1000 webhooks ...`"""
        self._console.print(f"[bold]{kind}[/]: {config.messages} webhooks ...")

    def finished(self, kind: str, report: BenchReport) -> None:
        """`  acked 1000, answered 1000, lost 0`"""
        c = report.counts
        self._console.print(f"  acked {c.acked}, answered {c.answered}, lost {c.lost}")


async def run_compare(
    systems: Sequence[str],
    config: BenchConfig,
    pinning: Pinning | None,
    progress: CompareProgress | None = None,
) -> dict[str, BenchReport]:
    """Every system, one after another (call inside `pinned_here(pinning)`)."""
    told = progress or CompareProgress()
    reports: dict[str, BenchReport] = {}
    for kind in systems:
        told.started(kind, config)
        reports[kind] = await run_system(kind, config, pinning)
        told.finished(kind, reports[kind])
    return reports
