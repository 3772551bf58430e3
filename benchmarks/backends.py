"""Enqueue latency per queue backend and session load+save latency per store, in one run.

    python -m benchmarks.backends [-n 300] [--json]

Runs every backend through the composition root's own adapter selection (`pyloto_cli.backends`)
against real local servers: Redis, the Cloud Tasks emulator and the Firestore emulator. When
REDIS_URL / CLOUD_TASKS_EMULATOR_HOST / FIRESTORE_EMULATOR_HOST are not set, it starts them with
`scripts/test-services.sh` (on loopback) and stops them at the end. Each operation is timed one
at a time (sequential latency, not throughput). Prints a table, or one JSON line with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from pyloto_cli import backends
from pyloto_cli.bench.report import percentile
from pyloto_cli.bootstrap import retry_policy
from pyloto_cli.domain.session import Role, Turn
from pyloto_cli.domain.task import Task, TaskKind
from pyloto_cli.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
QUEUES = ("memory", "sqlite", "redis", "cloud_tasks")
STORES = ("memory", "sqlite", "redis", "firestore")


@contextlib.contextmanager
def local_servers() -> Iterator[dict[str, str]]:
    """The servers' variables: from the environment, or from servers this function starts."""
    wanted = ("REDIS_URL", "CLOUD_TASKS_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")
    if all(os.environ.get(name) for name in wanted):
        yield {
            name: os.environ[name]
            for name in (*wanted, "GOOGLE_CLOUD_PROJECT")
            if name in os.environ
        }
        return
    script = ROOT / "scripts" / "test-services.sh"
    env = {**os.environ, "REDIS_PORT": "6391", "TASKS_PORT": "8124", "FIRESTORE_PORT": "8687"}
    subprocess.run(["bash", str(script), "start"], check=True, env=env)  # noqa: S607
    try:
        values = {}
        for line in (ROOT / ".services" / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            values[key] = value
        yield values
    finally:
        subprocess.run(["bash", str(script), "stop"], check=False, env=env)  # noqa: S607


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
    return {"p50": round(p50, 3), "p99": round(p99, 3), "n": len(samples)}


async def timed(n: int, op: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await op(i)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


def task(i: int, run: str) -> Task:
    wamid = f"wamid.bench.{run}.{i}"
    return Task(wamid, TaskKind.MESSAGE, f"pn:{i % 50}", "pn", time.time(), {"id": wamid}, {})


async def queue_latency(settings: Settings, n: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    async with contextlib.AsyncExitStack() as stack:
        parts = await backends.open_queue(backends.Shared(settings, stack), retry_policy(settings))
        return await timed(n, lambda i: parts.sink.enqueue([task(i, run)]))


async def store_latency(settings: Settings, n: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    async with contextlib.AsyncExitStack() as stack:
        sessions = await backends.open_sessions(backends.Shared(settings, stack))

        async def load_and_save(i: int) -> None:
            key = f"pn:bench-{run}-{i % 20}"
            await sessions.load(key)
            turn = Turn(Role.USER, f"message {i}", f"wamid.{run}.{i}", time.time())
            await sessions.append(key, [turn], 50)

        return await timed(n, load_and_save)


async def measure(n: int, servers: dict[str, str], data_dir: Path) -> dict[str, Any]:
    os.environ.update(servers)  # the Firestore client reads FIRESTORE_EMULATOR_HOST itself
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "redis_url": servers.get("REDIS_URL"),
        "google_cloud_project": servers.get("GOOGLE_CLOUD_PROJECT", "pyloto-bench"),
        "cloud_tasks_emulator_host": servers.get("CLOUD_TASKS_EMULATOR_HOST"),
        "cloudtasks_queue_name": f"bench-{uuid.uuid4().hex[:8]}",
        "cloudtasks_handler_url": "http://127.0.0.1:9/tasks/process",  # nothing listens: fine
        "tasks_token": "bench-token-" + uuid.uuid4().hex,
    }
    result: dict[str, Any] = {"queue_enqueue_ms": {}, "session_load_save_ms": {}}
    for name in QUEUES:
        settings = Settings(_env_file=None, queue_backend=name, **base)
        result["queue_enqueue_ms"][name] = await queue_latency(settings, n)
    for name in STORES:
        settings = Settings(_env_file=None, session_store_backend=name, **base)
        result["session_load_save_ms"][name] = await store_latency(settings, n)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with local_servers() as servers, tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args.n, servers, Path(tmp)))
    if args.json:
        print(json.dumps(result))
        return
    for section, rows in result.items():
        print(section)
        for name, figures in rows.items():
            print(f"  {name:<12} p50 {figures['p50']:>8.3f} ms   p99 {figures['p99']:>8.3f} ms")


if __name__ == "__main__":
    main()
