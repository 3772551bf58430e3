"""The queues side by side under conversations: SQLite, Redis Streams and Pub/Sub (emulator).

    .venv/bin/python -m benchmarks.queues [--queues sqlite,redis,pubsub] [-n 2000] [--rate 100]
        [--per-user 5] [--workers 2] [--json]

Each queue gets one `pyloto bench` run (`pyloto_cli.bench.run_bench`) of
`pyloto serve --workers 2` with the same load: `-n` webhooks at `--rate` per second, from
senders that each write `--per-user` messages one second apart (2000 at 100/s: 400
conversations of 5). Sessions and dedupe stay in SQLite; Redis (`redis-server`) and the Pub/Sub
emulator (the Cloud SDK's jar, as in tests/servers.py) are started here on free loopback ports.
The table gives, per queue: lost and doubled replies, conversations whose replies arrived out of
order, ack p99 (for Pub/Sub: the publish confirmed before the 200) and reply p50. Nothing is
pinned: everything shares the machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.systems import PYLOTO_DEFAULTS
from pyloto_cli.bench import BenchConfig, BenchReport, run_bench
from pyloto_cli.logs import configure_logging
from pyloto_cli.loops import loop_factory
from tests.emulators import pubsub_jar, redis_args

QUEUES = ("sqlite", "redis", "pubsub")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(check: str, process: subprocess.Popen[bytes], within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{check} exited before it was ready")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(check, timeout=1.0) as answer,  # noqa: S310 - loopback
        ):
            if answer.read().strip() == b"Ok":
                return
        time.sleep(0.1)  # polling a server that gives no other signal
    raise SystemExit(f"{check} not ready after {within_s:.0f} s")


def _redis_ready(port: int, process: subprocess.Popen[bytes], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("redis-server exited before it was ready")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # polling a server that gives no other signal
    raise SystemExit("redis-server not ready")


@contextlib.contextmanager
def servers(queues: list[str], workdir: Path) -> Iterator[dict[str, dict[str, str]]]:
    """Start what the queues need on loopback; yields, per queue, the environment that points
    at its server (only its own: Redis would also carry the SQLite run's shared limits)."""
    env: dict[str, dict[str, str]] = {queue: {} for queue in queues}
    started: list[subprocess.Popen[bytes]] = []
    try:
        if "redis" in queues:
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("redis-server not found (scripts/install-test-deps.sh)")
            port = _free_port()
            started.append(subprocess.Popen([binary, *redis_args(port)], stdout=subprocess.DEVNULL))
            _redis_ready(port, started[-1])
            env["redis"]["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        if "pubsub" in queues:
            java, jar = shutil.which("java"), pubsub_jar()
            if java is None or jar is None:
                raise SystemExit("java or the Pub/Sub emulator jar not found")
            port = _free_port()
            log = (workdir / "pubsub.log").open("wb")
            command = [java, "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"]
            started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            _wait_ready(f"http://127.0.0.1:{port}/", started[-1])
            env["pubsub"].update(
                PUBSUB_EMULATOR_HOST=f"127.0.0.1:{port}",
                GOOGLE_CLOUD_PROJECT="pyloto-bench",
                PYLOTO_PUBSUB_CREATE="true",
            )
        yield env
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)


def table(reports: dict[str, BenchReport]) -> Table:
    """One column per queue."""
    first = next(iter(reports.values())).config
    title = (
        f"pyloto serve --workers {first['workers']}: {first['messages']} webhooks at"
        f" {first['rate']:g}/s, {first['messages_per_user']} per conversation 1 s apart,"
        f" LLM {first['llm_latency_ms']:g} ms per call, nothing pinned"
    )
    out = Table(title=title, title_justify="left")
    out.add_column("figure")
    for queue in reports:
        out.add_column(queue, justify="right")
    rows: tuple[tuple[str, Callable[[BenchReport], object]], ...] = (
        ("acked", lambda r: r.counts.acked),
        ("answered", lambda r: r.counts.answered),
        ("lost", lambda r: r.counts.lost),
        ("doubled", lambda r: r.counts.duplicated),
        ("dead letters", lambda r: r.counts.dead_letters),
        ("conversations out of order", lambda r: r.out_of_order),
        ("ack ms p50", lambda r: r.ack_ms.p50),
        ("ack ms p99", lambda r: r.ack_ms.p99),
        ("reply ms p50", lambda r: r.e2e_ms.p50),
        ("reply ms p99", lambda r: r.e2e_ms.p99),
        ("CPU ms/msg (web + workers)", lambda r: r.server.cpu_ms_per_msg),
    )
    for name, get in rows:
        out.add_row(name, *(str(get(report)) for report in reports.values()))
    return out


async def run_all(
    queues: list[str], config: BenchConfig, err: Console, envs: dict[str, dict[str, str]]
) -> dict[str, BenchReport]:
    """One run per queue, one after another, each with its own server in the environment (the
    bench passes its environment on to pyloto)."""
    reports: dict[str, BenchReport] = {}
    for queue in queues:
        err.print(f"[bold]{queue}[/]: {config.messages} webhooks ...")
        os.environ.update(envs[queue])
        try:
            reports[queue] = await run_bench(replace(config, queue=queue))
        finally:
            for name in envs[queue]:
                os.environ.pop(name, None)
        c = reports[queue].counts
        err.print(f"  acked {c.acked}, answered {c.answered}, lost {c.lost}")
    return reports


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queues", default=",".join(QUEUES), help="in order")
    parser.add_argument("-n", "--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks/s, open loop")
    parser.add_argument("--per-user", type=int, default=5, help="messages per conversation")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--llm-latency-ms", type=float, default=500.0)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run pyloto once per queue and print the table (or JSON)."""
    args = _parser().parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        raise SystemExit(f"--queues: unknown {', '.join(unknown)} (choose from {QUEUES})")
    for name, value in PYLOTO_DEFAULTS.items():
        os.environ.setdefault(name, value)
    config = BenchConfig(
        messages=args.messages,
        rate=args.rate,
        messages_per_user=args.per_user,
        workers=args.workers,
        llm_latency_ms=args.llm_latency_ms,
        drain_timeout_s=args.drain_timeout,
    )
    configure_logging("console", "WARNING")
    err = Console(stderr=True)
    with (
        tempfile.TemporaryDirectory(prefix="pyloto-queues-") as workdir,
        servers(queues, Path(workdir)) as envs,
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        reports = runner.run(run_all(queues, config, err, envs))
    if args.json:
        print(json.dumps({q: r.to_json() for q, r in reports.items()}, indent=2))
    else:
        Console(width=140).print(table(reports))


if __name__ == "__main__":
    main()
