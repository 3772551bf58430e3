"""The systems the comparison runs, one after another, through the same load, fakes and figures.

- `inline`: benchmarks/reference/inline_bot.py (FastAPI, the LLM calls and the send before
  the 200);
- `background`: benchmarks/reference/pywa_bot.py (pywa on FastAPI, the handler after the 200);
- `pyloto`: `python -m pyloto_cli serve` of this checkout, SQLite queue;
- `baseline`: `pyloto serve` of another checkout with its own venv (`Baseline`), e.g. the code
  before a change, to compare two versions of pyloto in the same run.

Each system gets a fresh fake OpenAI server (a subprocess), a fresh fake Graph API (in this
process) and the same number of signed webhooks from `pyloto bench`'s load generator. With two
or more CPUs the system under test is pinned to the first one (every thread of every process of
it, once it is ready) and this process, the fakes and the load generator to the others. Replies
are matched to webhooks by `biz_opaque_callback_data`. With `wire`, the server's acks are also
taken off the loopback wire (`benchmarks/wire.py`, Linux, root). After each run the fake LLM's
request log gives how many calls of each stage the system made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

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
SYSTEMS = ("inline", "background", "baseline", "pyloto")
PYLOTOS = frozenset({"pyloto", "baseline"})
# what both pylotos run with unless the environment says otherwise: the bots have no send limit
# (pyloto's default, Meta's default tier of 80/s, would cap its replies below theirs), and
# neither a reply cache nor burst coalescing (each would let pyloto skip LLM calls the bots make)
PYLOTO_DEFAULTS = {
    "PYLOTO_SEND_RATE_PER_NUMBER": "1000",
    "PYLOTO_REPLY_CACHE": "false",
    "PYLOTO_COALESCE_WINDOW_SECONDS": "0",
}
_NEEDS = {"inline": ("fastapi", "uvicorn"), "background": ("fastapi", "uvicorn", "pywa")}
_READY_WITHIN_S = 30.0
_log = get_logger("bench")


def source_root() -> Path:
    """The checkout holding `benchmarks/` and `pyloto_cli/`."""
    return Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Baseline:
    """Another checkout of pyloto, run as `baseline` with its own interpreter.

    Its server starts as `<python> -m pyloto_cli serve` with `root` first on PYTHONPATH, so its
    own `pyloto_cli` is imported whatever the venv's install points at, in the run's temporary
    directory (its data and logs land there) and without writing bytecode: the run leaves the
    checkout as it found it.
    """

    root: Path
    python: Path

    @classmethod
    def at(cls, root: Path) -> Baseline:
        """The checkout at `root`, with `root/.venv/bin/python` if there is one, else this
        interpreter; ValueError when `root` holds no `pyloto_cli`."""
        root = root.resolve()
        if not (root / "pyloto_cli" / "__init__.py").is_file():
            raise ValueError(f"no pyloto_cli/ in {root}")
        venv = root / ".venv" / "bin" / "python"
        return cls(root=root, python=venv if venv.is_file() else Path(sys.executable))

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` with the checkout first on PYTHONPATH and no bytecode written."""
        path = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        return {**env, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}

    def imported(self) -> Path:
        """Where its interpreter imports `pyloto_cli` from, started as its server is."""
        code = "import pyloto_cli; print(pyloto_cli.__file__)"
        with tempfile.TemporaryDirectory(prefix="pyloto-baseline-") as cwd:
            out = subprocess.run(
                [str(self.python), "-c", code],
                cwd=cwd,
                env=self.env(os.environ),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        return Path(out.stdout.strip()).resolve()

    def problem(self) -> str | None:
        """Why it cannot run as the baseline, or None."""
        try:
            imported = self.imported()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{self.python} cannot import pyloto_cli from {self.root}: {exc}"
        if not imported.is_relative_to(self.root):
            return f"{self.python} imports pyloto_cli from {imported}, not from {self.root}"
        return None

    def describe(self) -> dict[str, str | None]:
        """Where it is and which commit it is at (for the report)."""
        commit: str | None = None
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            commit = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "HEAD"],  # noqa: S607
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        return {"root": str(self.root), "python": str(self.python), "commit": commit}


def reference_problem(systems: Sequence[str], baseline: Baseline | None = None) -> str | None:
    """Why some of `systems` cannot run here, or None when they all can."""
    if "baseline" in systems:
        if baseline is None:
            return "the baseline system needs --baseline DIR (a checkout of pyloto)"
        problem = baseline.problem()
        if problem is not None:
            return problem
    bots = [s for s in systems if s in BOTS]
    missing = sorted({m for s in bots for m in _NEEDS[s] if importlib.util.find_spec(m) is None})
    if missing:
        return (
            f"the reference bots need {', '.join(missing)}: "
            "pip install -e '.[bench]' (the `bench` extra)"
        )
    return None


def parse_systems(raw: str) -> list[str]:
    """`inline,baseline,pyloto` -> the systems in that order."""
    names = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"choose from {', '.join(SYSTEMS)} (got {raw!r})")
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


@contextlib.asynccontextmanager
async def baseline_serve(
    baseline: Baseline, config: BenchConfig, workdir: Path, env: Mapping[str, str]
) -> AsyncIterator[ServerProcess]:
    """The baseline checkout's `pyloto serve` on loopback, ready when /readyz is 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "baseline.log"
    full_env = baseline.env({**env, "PORT": str(port), "PYLOTO_HOST": "127.0.0.1"})
    command = [str(baseline.python), "-m", "pyloto_cli", "serve", *pyloto_args(config)]
    async with child(command, log=log, cwd=workdir, env=full_env) as proc:
        await wait_ready(proc, url, log, _READY_WITHIN_S, "the baseline's pyloto serve")
        yield ServerProcess(pid=proc.pid, url=url, log=log)


def serve(
    kind: str,
    config: BenchConfig,
    workdir: Path,
    env: Mapping[str, str],
    baseline: Baseline | None = None,
) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """The system under test as a running process."""
    if kind in PYLOTOS:
        env = {**PYLOTO_DEFAULTS, **env}
    if kind == "pyloto":
        return pyloto_serve(workdir, env, args=pyloto_args(config))
    if kind == "baseline":
        if baseline is None:
            raise ValueError("the baseline system needs a Baseline")
        return baseline_serve(baseline, config, workdir, env)
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
    process: `benchmarks.wire`). Off, or where it cannot capture (not Linux, no CAP_NET_RAW),
    the record stays None and the run goes on.

    It is off unless asked for: the kernel hands a copy of every loopback packet the server
    sends to the capture's filter, and the capture wakes on the generator's CPU for each of
    the server's packets, which costs the client's ack figure and the server a little."""
    record = WireRecord()
    if not on or not sys.platform.startswith("linux"):
        yield record
        return
    out = workdir / f"wire-acks-{port}.json"
    args = [sys.executable, "-m", "benchmarks.wire", "--port", str(port), "--out", str(out)]
    log = workdir / "wire.log"
    env = {**os.environ, "PYTHONPATH": str(source_root())}
    async with child(args, log=log, cwd=workdir, env=env, pipe_stdout=True) as proc:
        line = await first_line(proc, _READY_WITHIN_S)
        capturing = line.startswith(b"capturing")
        if not capturing:
            log_event(_log, "bench_wire_capture_off", reason=line.decode(errors="replace").strip())
        yield record
    if capturing:  # the child wrote its figures on the SIGTERM that stopped it
        with contextlib.suppress(OSError, ValueError):
            record.latencies_s = [float(s) for s in json.loads(out.read_text())]


async def llm_calls(client: LoadClient, llm: FakeLLMProcess) -> dict[str, int]:
    """How many chat completions the fake LLM answered, by route (`event`, `text`,
    `message_type`): every stage a system ran shows here."""
    parts = urllib.parse.urlsplit(llm.url)
    rows = await get_json(client, f"{parts.scheme}://{parts.netloc}/_fake/requests")
    if not isinstance(rows, list):
        return {}
    return dict(collections.Counter(str(row.get("route")) for row in rows))


@dataclass(frozen=True, slots=True)
class Measured:
    """One system's record and what the fake LLM was asked."""

    record: RunRecord
    llm_calls: dict[str, int]


async def measure(
    config: BenchConfig,
    server: ServerProcess,
    llm: FakeLLMProcess,
    graph: FakeGraphServer,
    hooks: Sequence[Webhook],
    workdir: Path,
    wire: bool = False,
) -> Measured:
    """Send the webhooks, wait for the replies, and record what happened; with `wire` the
    server's acks are also taken off the wire while the webhooks go out."""
    tracker = ReplyTracker(graph)
    port = urllib.parse.urlsplit(server.url).port or 80
    async with LoadClient(pool_size(config.rate, config.concurrency)) as client:
        before = (tree_cpu_seconds(server.pid), tree_cpu_seconds(llm.pid), time.process_time())
        started = time.monotonic()
        async with wire_capture(workdir, port, on=wire) as capture:
            acks = await _load(config, client, server.url + WEBHOOK_PATH, hooks)
        wanted = {hooks[a.index].wamid for a in acks if a.ok}
        await _drain(tracker, wanted, config.drain_timeout_s)
        finished = time.monotonic()
        after = (tree_cpu_seconds(server.pid), tree_cpu_seconds(llm.pid), time.process_time())
        peak = tree_peak_rss_bytes(server.pid)
        calls = await llm_calls(client, llm)
    tracker.poll()
    spent = [spent_between(b, a) for b, a in zip(before, after, strict=True)]
    record = RunRecord(
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
        wire_acks_s=capture.latencies_s,
    )
    return Measured(record=record, llm_calls=calls)


@dataclass(frozen=True, slots=True)
class CompareConfig:
    """What the comparison adds to a bench run's options."""

    bench: BenchConfig
    pinning: Pinning | None = None
    wire: bool = False
    baseline: Baseline | None = None


async def run_system(kind: str, config: CompareConfig) -> BenchReport:
    """One system end to end: fakes and server up, load, drain, figures, all down."""
    bench = config.bench
    secret = secrets.token_hex(16)
    hooks = webhooks(bench, secret.encode(), f"{kind}-{secrets.token_hex(4)}")
    async with contextlib.AsyncExitStack() as stack:
        workdir = run_workdir(bench, stack, prefix=f"pyloto-compare-{kind}-")
        child_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
        async with (
            FakeGraphServer() as graph,
            fake_openai(workdir, child_env, fake_openai_options(bench)) as llm,
        ):
            graph.delay_s = bench.graph_latency_ms / 1000
            env = server_env(bench, graph.url, llm.url, secret)
            async with serve(kind, bench, workdir, env, config.baseline) as server:
                if config.pinning is not None:
                    pin_process(server.pid, config.pinning.server)
                measured = await measure(bench, server, llm, graph, hooks, workdir, config.wire)
    extra: dict[str, object] = {
        "pinned": config.pinning is not None,
        "system": kind,
        "workdir": str(workdir) if bench.keep else None,
        "wire": config.wire,
        "llm_calls": measured.llm_calls,
    }
    if kind in PYLOTOS:
        served = {**PYLOTO_DEFAULTS, **os.environ}
        extra["send_rate_per_number"] = served["PYLOTO_SEND_RATE_PER_NUMBER"]
        extra["reply_cache"] = served["PYLOTO_REPLY_CACHE"]
        extra["coalesce_window_seconds"] = served["PYLOTO_COALESCE_WINDOW_SECONDS"]
    if kind == "baseline" and config.baseline is not None:
        extra["baseline"] = config.baseline.describe()
    return summarize({**describe(bench), **extra}, measured.record)


class CompareProgress:
    """Told when each system starts and ends (the script prints a line)."""

    def started(self, kind: str, config: BenchConfig) -> None:
        """Before `kind` runs."""

    def finished(self, kind: str, report: BenchReport) -> None:
        """After `kind` ran."""


class CompareLines(CompareProgress):
    """One line per system on `console` (stderr)."""

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
    systems: Sequence[str], config: CompareConfig, progress: CompareProgress | None = None
) -> dict[str, BenchReport]:
    """Every system, one after another (call inside `pinned_here(config.pinning)`)."""
    told = progress or CompareProgress()
    reports: dict[str, BenchReport] = {}
    for kind in systems:
        told.started(kind, config.bench)
        reports[kind] = await run_system(kind, config)
        told.finished(kind, reports[kind])
    return reports
