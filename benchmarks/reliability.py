"""The reliability benchmark: pyloto under faults, outages, crashes and a backlog, measured from
outside, as an operator would try it.

    .venv/bin/python -m benchmarks.reliability --scenario NAME [--messages N] [--rate R] [--json]
    .venv/bin/python -m benchmarks.reliability --scenario all --smoke     # every one, tiny

Runs `pyloto serve` (SQLite queue, its worker inside; for `kill-worker` and `drain`, `serve
--no-worker` beside one `pyloto worker`) against the fake LLM and Graph servers of
`pyloto_cli.fakes`, in this process on loopback. Sends `--messages` signed webhooks at `--rate`
per second from `--users` senders, each one posted again, as Meta does, until it gets a 200;
injects the scenario's faults a third of the way through the load; waits until every
acknowledged message is answered or dead-lettered (at most `--settle` seconds); prints a row:

- load: messages acknowledged, and the rate (or, for `drain`, the backlog and its drain time);
- faults: LLM and Graph answers that were errors, plus the outage's length;
- crashes: processes killed or stopped; lost: acknowledged, yet neither answered nor
  dead-lettered; doubled: answered (accepted by Graph) more than once;
- wrongly dead: dead letters (every message sent is valid, so every one is wrong);
- LLM/msg: LLM calls per acknowledged message, and that as a multiple of one call per LLM
  stage (a message's answer calls each stage once when nothing fails: 1.00x);
- recovery s: from the end of the fault (the outage over, the restarted process ready) until
  every message acknowledged before then is answered or dead-lettered;
- holding replies: sends of the default safe reply (a stand-in, not an answer); a message
  answered only by one counts as answered above.

Scenarios: `llm-errors` (20 % of LLM calls answer 500 or 429), `graph-errors` (20 % of sends
answer error 131000, HTTP 500, or 130429), `llm-outage` (the LLM answers 503 for `--outage`
seconds, 60 by default), `graph-outage` (Graph answers 503 for `--outage` seconds, 30 by
default), `drain` (`--messages`, 4,000 by default, queued with no worker, then drained with the
LLM at 20 ms), `kill-serve` and `kill-worker` (SIGKILL under load, restarted at once),
`sigterm` (SIGTERM under load, restarted once it has exited).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx

from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue
from pyloto_cli.bench.payloads import Webhook, build_webhooks
from pyloto_cli.bench.procs import free_port, wait_ready
from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.fakes.openai_server import FakeAnswer, FakeOpenAIServer
from pyloto_cli.loops import loop_factory
from pyloto_cli.settings import Settings

SCENARIOS = (
    "llm-errors",
    "graph-errors",
    "llm-outage",
    "graph-outage",
    "drain",
    "kill-serve",
    "kill-worker",
    "sigterm",
)
_DEFAULT_OUTAGE_S = {"llm-outage": 60.0, "graph-outage": 30.0}
_REPOST_S = 0.2  # how soon a refused webhook is posted again (Meta's retries are slower)
_POLL_S = 0.1
SAFE_REPLY = Settings.model_fields["safe_reply"].default  # what serve sends when the LLM fails
COLUMNS = (
    "scenario",
    "load",
    "faults",
    "crashes",
    "lost",
    "doubled",
    "wrongly dead",
    "LLM/msg",
    "recovery s",
    "holding replies",
)


@dataclass(frozen=True, slots=True)
class Config:
    """One run's sizes and durations (the defaults are the full runs)."""

    scenario: str
    messages: int = 600
    rate: float = 10.0
    users: int = 100
    outage_s: float | None = None  # None: the scenario's default
    llm_latency_ms: float = 50.0
    settle_s: float = 300.0
    seed: int = 32

    @property
    def outage(self) -> float:
        """The outage's length; 0 for a scenario without one."""
        if self.scenario not in _DEFAULT_OUTAGE_S:
            return 0.0
        return self.outage_s if self.outage_s is not None else _DEFAULT_OUTAGE_S[self.scenario]


def smoke(config: Config) -> Config:
    """The same scenario at sizes for a test: a few dozen messages, a 1 s outage."""
    return replace(config, messages=24, rate=30.0, users=8, outage_s=1.0, settle_s=60.0)


@dataclass(slots=True)
class Row:
    """What one scenario measured."""

    scenario: str
    acked: int
    load: str
    llm_faults: int
    graph_faults: int
    crashes: int
    lost: int
    doubled: int
    dead: int
    llm_calls: int
    llm_stages: int  # the stages a message's answer calls the LLM for (routes the fake saw)
    recovery_s: float | None
    holding: int = 0  # sends of the safe reply: a stand-in, not an answer
    outage_s: float = 0.0

    @property
    def llm_per_message(self) -> float:
        return self.llm_calls / self.acked if self.acked else 0.0

    def cells(self) -> list[str]:
        faults = f"LLM {self.llm_faults}, Graph {self.graph_faults}"
        if self.outage_s:
            faults += f" ({self.outage_s:g} s outage)"
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}"
        return [
            self.scenario,
            self.load,
            faults,
            str(self.crashes),
            str(self.lost),
            str(self.doubled),
            str(self.dead),
            f"{self.llm_per_message:.2f} ({self.llm_per_message / max(self.llm_stages, 1):.2f}x)",
            recovery,
            str(self.holding),
        ]


@dataclass(slots=True)
class Pyloto:
    """`pyloto serve` (and a `pyloto worker`) on one data dir and one port, restartable."""

    workdir: Path
    env: dict[str, str]
    worker_apart: bool
    port: int = field(default_factory=free_port)
    serve: asyncio.subprocess.Process | None = None
    worker: asyncio.subprocess.Process | None = None
    crashes: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _spawn(
        self,
        command: str,
        *args: str,
        extra: dict[str, str] | None = None,
        fds: tuple[int, ...] = (),
    ) -> asyncio.subprocess.Process:
        env = {**self.env, "PORT": str(self.port), "PYLOTO_HOST": "127.0.0.1", **(extra or {})}
        with (self.workdir / f"{command}.log").open("ab") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pyloto_cli",
                command,
                *args,
                cwd=self.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                pass_fds=fds,
            )

    async def start_serve(self, *, worker: bool = True) -> None:
        args = () if worker and not self.worker_apart else ("--no-worker",)
        self.serve = await self._spawn("serve", *args)
        await wait_ready(self.serve, self.url, self.workdir / "serve.log", 60.0)

    async def start_worker(self) -> None:
        """Start `pyloto worker` and wait until it says it is ready (its runtime open)."""
        read_end, write_end = os.pipe()
        try:
            extra = {"PYLOTO_READY_FD": str(write_end)}
            try:
                self.worker = await self._spawn("worker", extra=extra, fds=(write_end,))
            finally:
                os.close(write_end)  # the child has its copy: its exit ends the read
            ready = await asyncio.wait_for(asyncio.to_thread(os.read, read_end, 1), 60)
        finally:
            os.close(read_end)
        if not ready:
            raise RuntimeError(f"pyloto worker exited before it was ready; see {self.workdir}")

    async def kill(self, which: str) -> None:
        proc = self.serve if which == "serve" else self.worker
        if proc is None:
            raise RuntimeError(f"no {which} process to kill")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self.crashes += 1

    async def terminate_serve(self) -> None:
        if self.serve is None:
            raise RuntimeError("no serve process to stop")
        self.serve.send_signal(signal.SIGTERM)
        await self.serve.wait()
        self.crashes += 1

    async def close(self) -> None:
        for proc in (self.worker, self.serve):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@dataclass(slots=True)
class Tally:
    """What the load acknowledged and the fakes saw, read while the run goes on."""

    graph: FakeGraphServer
    queue: SqliteMessageQueue | None = None
    acked: set[str] = field(default_factory=set)

    def holding(self) -> int:
        """Sends of the safe reply: a promise to answer later, not an answer."""
        return sum(
            1
            for r in self.graph.messages()
            if isinstance(r.body, dict) and (r.body.get("text") or {}).get("body") == SAFE_REPLY
        )

    def replies(self) -> Counter[str]:
        return Counter(
            str(r.body.get("biz_opaque_callback_data"))
            for r in self.graph.messages()
            if isinstance(r.body, dict)
        )

    async def dead(self) -> set[str]:
        if self.queue is None:
            return set()
        return {d.task.task_id for d in await self.queue.dead_letters(limit=1_000_000)}

    async def settled(self, wanted: set[str]) -> bool:
        """Every one of `wanted` answered or dead-lettered."""
        return wanted <= set(self.replies()) | await self.dead()


async def _post_until_acked(
    client: httpx.AsyncClient, pyloto: Pyloto, hook: Webhook, tally: Tally, deadline: float
) -> None:
    headers = {"X-Hub-Signature-256": hook.signature, "Content-Type": "application/json"}
    while time.monotonic() < deadline:
        try:
            answer = await client.post(
                f"{pyloto.url}/webhooks/whatsapp", content=hook.body, headers=headers
            )
            if answer.status_code == 200:
                tally.acked.add(hook.wamid)
                return
        except httpx.TransportError:
            pass  # down or restarting: Meta delivers it again
        await asyncio.sleep(_REPOST_S)


async def _load(
    pyloto: Pyloto, hooks: list[Webhook], rate: float, tally: Tally, deadline: float
) -> None:
    """Post `hooks` at `rate` per second (open loop), each until it is acknowledged."""
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(trust_env=False, timeout=10.0, limits=limits) as client:
        start = time.monotonic()
        posts: list[asyncio.Task[None]] = []
        for index, hook in enumerate(hooks):
            due = start + index / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            posts.append(
                asyncio.create_task(_post_until_acked(client, pyloto, hook, tally, deadline))
            )
        await asyncio.gather(*posts)


async def _until(check: Callable[[], Awaitable[bool]], deadline: float) -> float | None:
    """Poll `check` until it holds (returns the monotonic time it did) or `deadline` passes."""
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(_POLL_S)
    return None


async def _recovery(tally: Tally, ended_at: float, deadline: float) -> float | None:
    """Seconds from `ended_at` until what was acknowledged by then is answered or dead."""
    wanted = set(tally.acked)
    done = await _until(lambda: tally.settled(wanted), deadline)
    return None if done is None else max(0.0, done - ended_at)


async def _fault(
    config: Config, pyloto: Pyloto, llm: FakeOpenAIServer, graph: FakeGraphServer
) -> float | None:
    """Inject the scenario's timed fault; the monotonic time it ended (None: no timed fault)."""
    name = config.scenario
    if name == "llm-outage":
        llm.always(FakeAnswer(status=503))
        await asyncio.sleep(config.outage)
        llm.always(None)
    elif name == "graph-outage":
        outage = graph.fail(http_status=503, times=None)
        await asyncio.sleep(config.outage)
        graph.stop_failing(outage)
    elif name == "kill-serve":
        await pyloto.kill("serve")
        await pyloto.start_serve()
    elif name == "kill-worker":
        await pyloto.kill("worker")
        await pyloto.start_worker()
    elif name == "sigterm":
        await pyloto.terminate_serve()
        await pyloto.start_serve()
    else:
        return None
    return time.monotonic()


def _env(workdir: Path, graph_url: str, llm_url: str, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYLOTO_", "OPENAI_"))}
    env.pop("PORT", None)
    return {
        **env,
        "PYLOTO_DATA_DIR": str(workdir / "data"),
        "WHATSAPP_APP_SECRET": secret,
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8),
        "WHATSAPP_ACCESS_TOKEN": "bench",
        "GRAPH_API_URL": graph_url,
        "OPENAI_ENABLED": "true",
        "OPENAI_API_KEY": "bench",
        "OPENAI_BASE_URL": llm_url,
        "QUEUE_BACKEND": "sqlite",
        "PYLOTO_LOG_FORMAT": "json",
        "PYLOTO_LOG_LEVEL": "INFO",
        "NO_PROXY": "127.0.0.1,localhost",
    }


async def run(config: Config, workdir: Path) -> Row:
    """Run one scenario in `workdir` and measure it."""
    drain = config.scenario == "drain"
    latency = 20.0 if drain else config.llm_latency_ms
    secret = secrets.token_hex(16)
    hooks = build_webhooks(config.messages, config.users, secret.encode(), secrets.token_hex(4))
    async with (
        FakeGraphServer() as graph,
        FakeOpenAIServer(latency_ms=latency, seed=config.seed) as llm,
    ):
        if config.scenario == "llm-errors":
            llm.error_rate, llm.error_statuses = 0.2, (500, 429)
        if config.scenario == "graph-errors":
            graph.fail_at_random(0.2, (131000, 130429), seed=config.seed)
        apart = config.scenario in ("drain", "kill-worker")  # serve --no-worker + pyloto worker
        pyloto = Pyloto(workdir, _env(workdir, graph.url, llm.base_url, secret), apart)
        tally = Tally(graph)
        try:
            row = await _measure(config, pyloto, tally, hooks, llm)
        finally:
            await pyloto.close()
            if tally.queue is not None:
                await tally.queue.close()
    return row


async def _measure(
    config: Config, pyloto: Pyloto, tally: Tally, hooks: list[Webhook], llm: FakeOpenAIServer
) -> Row:
    await pyloto.start_serve()
    if config.scenario == "kill-worker":
        await pyloto.start_worker()
    tally.queue = SqliteMessageQueue(pyloto.workdir / "data" / "queue.db", RetryPolicy())
    await tally.queue.__aenter__()
    load_s = config.messages / config.rate
    deadline = time.monotonic() + load_s + config.outage + config.settle_s
    recovery_s: float | None = None
    if config.scenario == "drain":
        await _load(pyloto, hooks, config.rate, tally, deadline)
        await pyloto.start_worker()
        started = time.monotonic()
        done = await _until(lambda: tally.settled(set(tally.acked)), deadline)
        drained = "not drained" if done is None else f"drained in {done - started:.1f} s"
        load = f"{len(tally.acked)} queued, {drained}"
    else:
        loading = asyncio.create_task(_load(pyloto, hooks, config.rate, tally, deadline))
        await asyncio.sleep(load_s / 3)
        ended_at = await _fault(config, pyloto, llm, tally.graph)
        if ended_at is not None:
            recovery_s = await _recovery(tally, ended_at, deadline)
        await loading
        await _until(lambda: tally.settled(set(tally.acked)), deadline)
        load = f"{len(tally.acked)} at {config.rate:g}/s"
    replies = tally.replies()
    dead = await tally.dead()
    return Row(
        scenario=config.scenario,
        acked=len(tally.acked),
        load=load,
        llm_faults=sum(1 for r in llm.requests if r.status is not None and r.status >= 400),
        graph_faults=sum(1 for r in tally.graph.requests if r.answered != 200),
        crashes=pyloto.crashes,
        lost=len(tally.acked - set(replies) - dead),
        doubled=sum(1 for n in replies.values() if n > 1),
        dead=len(dead & tally.acked),
        llm_calls=len(llm.requests),
        llm_stages=len({r.route for r in llm.requests}),
        recovery_s=recovery_s,
        holding=tally.holding(),
        outage_s=config.outage,
    )


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[list[Config], bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", required=True, choices=(*SCENARIOS, "all"))
    parser.add_argument("--messages", type=int, help="webhooks sent (default 600; drain 4000)")
    parser.add_argument("--rate", type=float, help="webhooks per second (default 10; drain 400)")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--outage", type=float, help="outage seconds (LLM 60, Graph 30)")
    parser.add_argument("--llm-latency-ms", type=float, default=50.0)
    parser.add_argument("--settle", type=float, default=300.0, help="most seconds to wait after")
    parser.add_argument("--seed", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a test's)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    configs = []
    for name in names:
        drain = name == "drain"
        config = Config(
            scenario=name,
            messages=args.messages or (4000 if drain else 600),
            rate=args.rate or (400.0 if drain else 10.0),
            users=args.users,
            outage_s=args.outage,
            llm_latency_ms=args.llm_latency_ms,
            settle_s=args.settle,
            seed=args.seed,
        )
        configs.append(smoke(config) if args.smoke else config)
    return configs, args.json


async def main_async(configs: list[Config], as_json: bool) -> list[Row]:
    rows = []
    for config in configs:
        with tempfile.TemporaryDirectory(prefix=f"pyloto-{config.scenario}-") as tmp:
            rows.append(await run(config, Path(tmp)))
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(table(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    configs, as_json = parse_args(argv)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        runner.run(main_async(configs, as_json))


if __name__ == "__main__":
    main()
