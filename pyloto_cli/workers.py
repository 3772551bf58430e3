"""`pyloto serve --workers N`: the web role in this process, N `pyloto worker` children.

The children share the embedded SQLite queue (its leases and per-conversation order hold across
processes), so the web process only verifies, stores and answers, and the LLM work runs on other
cores. Children get this process's environment, plus the generated local secrets when there are
any, and are stopped (SIGTERM, then SIGKILL after the grace period) when the web process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.settings import Settings

_log = get_logger("workers")


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["PYLOTO_DATA_DIR"] = str(settings.data_dir.resolve())
    # children poll the shared queue (the web process cannot wake them): poll often
    env.setdefault("PYLOTO_POLL_INTERVAL", "0.01")
    env["PYLOTO_PARENT_PID"] = str(os.getpid())  # the child stops if this process dies
    return env


async def stop_when_orphaned(stop: asyncio.Event, parent: int | None) -> None:
    """Set `stop` once the supervising `pyloto serve` is gone (even after a SIGKILL, even one
    that came before this process got here)."""
    if parent is None:
        return
    while not stop.is_set():
        if os.getppid() != parent:
            log_event(_log, "worker_orphaned", parent_pid=parent)
            stop.set()
            return
        await asyncio.sleep(1.0)


@contextlib.contextmanager
def worker_processes(settings: Settings, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start `count` `pyloto worker` processes for the duration of the block."""
    env = _child_env(settings)
    children = [
        subprocess.Popen([sys.executable, "-m", "pyloto_cli", "worker"], env=env)
        for _ in range(count)
    ]
    log_event(_log, "workers_started", count=count, pids=[c.pid for c in children])
    try:
        yield children
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=settings.shutdown_grace_seconds + 5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log_event(_log, "workers_stopped", count=count)
