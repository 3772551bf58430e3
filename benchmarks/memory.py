"""pyloto's memory: 10 000 messages queued, then a soak at a steady rate, RSS sampled throughout.

    .venv/bin/python -m benchmarks.memory [--backlog 10000] [--soak-seconds 180]
        [--soak-rate 50] [--soak-users 500] [--sample-every 5]
        [--burst-rate 200 --burst-seconds 60] [--json]

Backlog: `pyloto serve --no-worker` takes `--backlog` signed webhooks into the SQLite queue (no
LLM call yet) and is stopped with all of them queued; then `pyloto serve` (web and worker in one
process, the default deployment) starts on that data directory with the whole backlog waiting
and drains it against the fake OpenAI server (500 ms per call) and the fake Graph API. Each
process's peak RSS (VmHWM) is read before it stops; every queued message must be answered once.

Soak: a fresh `pyloto serve` under an open-loop load at `--soak-rate` webhooks/s for
`--soak-seconds` (`--soak-users` conversations, so sessions reach their history cap), its RSS
(VmRSS) sampled every `--sample-every` seconds. "Flat" is judged on the samples after the first
minute (warm-up: imports, pools, SQLite cache): their growth and least-squares slope.

With `--burst-seconds`, the soak starts with a burst at `--burst-rate` (past capacity, so the
worker reaches its concurrency limit and the connection pools their largest size, as the first
hiccup of a long run would) and "flat" is judged from one minute after the burst. RSS holds
the high-water mark of what was in flight: a quiet soak keeps rising, in steps, each time a
stall lets more pile up, until a stall takes the worker to its limit.
Nothing is pinned. As in `benchmarks.compare`, PYLOTO_SEND_RATE_PER_NUMBER is 1000 and the
reply cache and coalescing are off unless the environment sets them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.systems import PYLOTO_DEFAULTS
from pyloto_cli.bench.load import WEBHOOK_PATH, Ack, LoadClient, closed_loop, open_loop, pool_size
from pyloto_cli.bench.payloads import build_webhooks
from pyloto_cli.bench.procs import (
    ServerProcess,
    fake_openai,
    peak_rss_bytes,
    pyloto_serve,
    rss_bytes,
)
from pyloto_cli.bench.runner import (
    BenchConfig,
    ReplyTracker,
    fake_openai_options,
    queue_depth,
    server_env,
)
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.logs import configure_logging

MB = 2**20
WARM_UP_S = 60.0


@dataclass
class Samples:
    """(seconds since start, RSS MB, queue depth) every interval."""

    points: list[tuple[float, float, int | None]] = field(default_factory=list)

    def summary(self, warm_up_s: float) -> dict[str, Any]:
        """Min, max, first and last after the warm-up, growth and slope (MB per minute)."""
        after = [(t, mb) for t, mb, _ in self.points if t >= warm_up_s] or [
            (t, mb) for t, mb, _ in self.points
        ]
        if not after:
            return {}
        times, mbs = [t for t, _ in after], [mb for _, mb in after]
        return {
            "samples": len(self.points),
            "rss_mb_max": round(max(mb for _, mb, _ in self.points), 1),
            "after_warm_up_first_mb": round(mbs[0], 1),
            "after_warm_up_last_mb": round(mbs[-1], 1),
            "after_warm_up_min_mb": round(min(mbs), 1),
            "after_warm_up_max_mb": round(max(mbs), 1),
            "growth_mb": round(mbs[-1] - mbs[0], 1),
            "slope_mb_per_min": round(_slope(times, mbs) * 60, 3),
        }


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


async def _sample(server: ServerProcess, client: LoadClient, every_s: float, into: Samples) -> None:
    t0 = time.monotonic()
    while True:
        rss = rss_bytes(server.pid)
        depth = (await queue_depth(client, server.url))[0]
        if rss is not None:
            into.points.append((round(time.monotonic() - t0, 1), round(rss / MB, 1), depth))
        await asyncio.sleep(every_s)


async def _drain(
    tracker: ReplyTracker,
    wanted: set[str],
    client: LoadClient,
    url: str,
    within_s: float,
) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        tracker.poll()
        if wanted <= tracker.replies.keys() and (await queue_depth(client, url))[0] == 0:
            return
        await asyncio.sleep(0.2)


def _outcome(wanted: set[str], tracker: ReplyTracker) -> dict[str, int]:
    tracker.poll()
    answered = set(tracker.replies) & wanted
    doubled = sum(1 for w in wanted if len(tracker.replies.get(w, ())) > 1)
    return {
        "acked": len(wanted),
        "answered": len(answered),
        "lost": len(wanted - answered),
        "duplicated": doubled,
    }


@dataclass(frozen=True, slots=True)
class Peers:
    """The fakes and the environment shared by the phases of one part."""

    graph: FakeGraphServer
    env: Mapping[str, str]
    secret: str
    workdir: Path


@contextlib.asynccontextmanager
async def _peers(config: BenchConfig, prefix: str) -> AsyncIterator[Peers]:
    secret = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        child_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
        async with (
            FakeGraphServer() as graph,
            fake_openai(workdir, child_env, fake_openai_options(config)) as llm,
        ):
            env = server_env(config, graph.url, llm.url, secret)
            yield Peers(graph=graph, env=env, secret=secret, workdir=workdir)


async def _fill(peers: Peers, count: int) -> tuple[set[str], dict[str, Any]]:
    """`serve --no-worker` takes `count` webhooks; it stops with all of them queued."""
    hooks = build_webhooks(count, count, peers.secret.encode(), secrets.token_hex(4))
    async with (
        pyloto_serve(peers.workdir, peers.env, args=["--no-worker"], log_name="fill.log") as web,
        LoadClient(64) as client,
    ):
        started = time.monotonic()
        acks = await closed_loop(client, web.url + WEBHOOK_PATH, hooks, 32, _ignore)
        took = time.monotonic() - started
        depth = (await queue_depth(client, web.url))[0]
        peak = peak_rss_bytes(web.pid)
    wanted = {hooks[a.index].wamid for a in acks if a.ok}
    figures = {
        "acked": len(wanted),
        "queued_depth": depth,
        "intake_per_s": round(len(acks) / took, 1),
        "web_peak_rss_mb": None if peak is None else round(peak / MB, 1),
    }
    return wanted, figures


def _ignore(_ack: Ack) -> None:
    return None


async def backlog(config: BenchConfig, count: int, every_s: float) -> dict[str, Any]:
    """Fill the queue with `count` messages, then drain them with one `pyloto serve`."""
    async with _peers(config, "pyloto-memory-backlog-") as peers:
        wanted, fill = await _fill(peers, count)
        tracker, samples = ReplyTracker(peers.graph), Samples()
        async with (
            pyloto_serve(peers.workdir, peers.env, log_name="drain.log") as server,
            LoadClient(4) as client,
        ):
            start_depth = (await queue_depth(client, server.url))[0]
            sampler = asyncio.create_task(_sample(server, client, every_s, samples))
            started = time.monotonic()
            try:
                await _drain(tracker, wanted, client, server.url, config.drain_timeout_s)
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            took = time.monotonic() - started
            peak = peak_rss_bytes(server.pid)
    return {
        "fill": fill,
        "drain": {
            "depth_at_start": start_depth,
            "seconds": round(took, 1),
            "replies_per_s": round(len(wanted) / took, 1),
            "peak_rss_mb": None if peak is None else round(peak / MB, 1),
            "rss_max_sampled_mb": round(max((mb for _, mb, _ in samples.points), default=0), 1),
            **_outcome(wanted, tracker),
        },
    }


@dataclass(frozen=True, slots=True)
class Burst:
    """The soak's opening burst: `seconds` at `rate` webhooks/s (0 seconds: none)."""

    rate: float = 200.0
    seconds: float = 0.0


async def soak(
    config: BenchConfig,
    seconds: float,
    rate: float,
    users: int,
    every_s: float,
    burst: Burst | None = None,
) -> dict[str, Any]:
    """A steady open-loop load on one `pyloto serve`, RSS sampled every `every_s`."""
    burst = burst or Burst()
    bursting = int(burst.seconds * burst.rate)
    count = bursting + int(seconds * rate)
    async with _peers(config, "pyloto-memory-soak-") as peers:
        hooks = build_webhooks(count, users, peers.secret.encode(), secrets.token_hex(4))
        tracker, samples = ReplyTracker(peers.graph), Samples()
        async with (
            pyloto_serve(peers.workdir, peers.env, log_name="soak.log") as server,
            LoadClient(pool_size(max(rate, burst.rate))) as client,
        ):
            sampler = asyncio.create_task(_sample(server, client, every_s, samples))
            url = server.url + WEBHOOK_PATH
            try:
                acks = await open_loop(client, url, hooks[:bursting], burst.rate, _ignore)
                steady = await open_loop(client, url, hooks[bursting:], rate, _ignore)
                acks += [replace(a, index=a.index + bursting) for a in steady]
                wanted = {hooks[a.index].wamid for a in acks if a.ok}
                await _drain(tracker, wanted, client, server.url, config.drain_timeout_s)
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            peak = peak_rss_bytes(server.pid)
    return {
        "seconds": seconds,
        "rate": rate,
        "users": users,
        "burst": asdict(burst),
        "peak_rss_mb": None if peak is None else round(peak / MB, 1),
        **samples.summary(burst.seconds + WARM_UP_S),
        **_outcome(wanted, tracker),
        "rss_series": [[t, mb, d] for t, mb, d in samples.points],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backlog", type=int, default=10_000, help="messages queued at once")
    parser.add_argument("--soak-seconds", type=float, default=180.0, help="0: no soak")
    parser.add_argument("--soak-rate", type=float, default=50.0, help="webhooks/s")
    parser.add_argument("--soak-users", type=int, default=500, help="conversations")
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS sample, seconds")
    parser.add_argument("--burst-rate", type=float, default=200.0, help="opening burst, /s")
    parser.add_argument("--burst-seconds", type=float, default=0.0, help="0: no burst")
    parser.add_argument("--llm-latency-ms", type=float, default=500.0)
    parser.add_argument("--llm-jitter-ms", type=float, default=50.0)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--server-log-level", default="INFO", help="pyloto's PYLOTO_LOG_LEVEL")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    return parser


async def _run(args: argparse.Namespace, config: BenchConfig) -> dict[str, Any]:
    result: dict[str, Any] = {"config": asdict(config) | {"data_dir": None}}
    if args.backlog > 0:
        result["backlog"] = await backlog(config, args.backlog, 0.5)
    if args.soak_seconds > 0:
        burst = Burst(args.burst_rate, args.burst_seconds)
        result["soak"] = await soak(
            config, args.soak_seconds, args.soak_rate, args.soak_users, args.sample_every, burst
        )
    return result


def _print(result: Mapping[str, Any]) -> None:
    backlog = result.get("backlog")
    if backlog:
        fill, drain = backlog["fill"], backlog["drain"]
        print(
            f"{fill['queued_depth']} queued: web process peak RSS {fill['web_peak_rss_mb']} MB"
            f" while taking them in; serve peak RSS {drain['peak_rss_mb']} MB draining them"
            f" (answered {drain['answered']}, lost {drain['lost']},"
            f" doubled {drain['duplicated']})"
        )
    for part in ("backlog", "soak"):
        if part in result:
            figures = {k: v for k, v in result[part].items() if k != "rss_series"}
            print(f"{part}: {json.dumps(figures)}")


def main(argv: list[str] | None = None) -> None:
    """Run the backlog and the soak; print their figures."""
    args = _parser().parse_args(argv)
    for name, value in PYLOTO_DEFAULTS.items():
        os.environ.setdefault(name, value)
    config = BenchConfig(
        llm_latency_ms=args.llm_latency_ms,
        llm_jitter_ms=args.llm_jitter_ms,
        drain_timeout_s=args.drain_timeout,
        server_log_level=args.server_log_level,
    )
    configure_logging("console", "WARNING")
    result = asyncio.run(_run(args, config))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)


if __name__ == "__main__":
    main()
