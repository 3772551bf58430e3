"""`pyloto serve --workers N`: the web role in this process, N `pyloto worker` children.

The children share the embedded SQLite queue (its leases and per-conversation order hold across
processes), so the web process only verifies, stores and answers, and the LLM work runs in
other processes. Children get this process's environment, plus the generated local secrets when
there are any, and are stopped (SIGTERM, then SIGKILL after the grace period) when the web
process stops.

Two pipes per child, named to it by `PYLOTO_READY_FD` and `PYLOTO_WAKE_FD`:

- ready: the child writes one byte once its runtime is open. `serve` waits for every child
  before it listens, so a child that cannot start (an unreachable backend, a bad setting) stops
  `serve` with that child's exit code instead of leaving a web process that acks and never
  answers, and the first webhooks do not wait for the children's imports.
- wake: after each enqueue the web process writes a byte to every child, which then leases at
  once instead of at its next poll (the poll stays, for retries and for `pyloto worker`s run
  apart). A full pipe means a wake is already pending, so the write is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pyloto_cli.domain.errors import WorkerFailed
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.settings import Settings

_log = get_logger("workers")
READY_TIMEOUT_S = 120.0


def _child_env(settings: Settings, ready_fd: int, wake_fd: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYLOTO_DATA_DIR"] = str(settings.data_dir.resolve())
    env["PYLOTO_PARENT_PID"] = str(os.getpid())  # the child stops if this process dies
    env["PYLOTO_READY_FD"] = str(ready_fd)
    env["PYLOTO_WAKE_FD"] = str(wake_fd)
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


def _wait_ready(child: subprocess.Popen[bytes], ready_fd: int, timeout_s: float) -> None:
    """Block until the child writes its ready byte; raise if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerFailed(f"worker process {child.pid} was not ready after {timeout_s:.0f} s")
        readable, _, _ = select.select([ready_fd], [], [], min(left, 0.5))
        if readable and os.read(ready_fd, 1):
            return
        code = child.poll()
        if code is not None or readable:  # exited, or closed its end without a word
            raise WorkerFailed(
                f"worker process {child.pid} exited (code {child.wait()}) before it was ready;"
                " its error is above"
            )


@dataclass(slots=True)
class WorkerPool:
    """The running children and the write ends of their wake pipes."""

    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    wake_fds: list[int] = field(default_factory=list)

    def wake(self) -> None:
        """Tell every child that work was enqueued (never blocks)."""
        for fd in self.wake_fds:
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(fd, b"\0")

    def _start(self, settings: Settings) -> tuple[subprocess.Popen[bytes], int]:
        ready_r, ready_w = os.pipe()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "pyloto_cli", "worker"],
                env=_child_env(settings, ready_w, wake_r),
                pass_fds=(ready_w, wake_r),
            )
        except BaseException:
            for fd in (ready_r, wake_w):
                os.close(fd)
            raise
        finally:
            os.close(ready_w)
            os.close(wake_r)
        self.children.append(child)
        self.wake_fds.append(wake_w)
        return child, ready_r

    def stop(self, grace_s: float) -> None:
        """SIGTERM every child (each finishes, or releases, what it holds within its grace),
        wait for them, SIGKILL one still there 5 s after the grace; again: nothing more."""
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=grace_s + 5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for fd in self.wake_fds:
            os.close(fd)
        self.wake_fds.clear()


@contextlib.asynccontextmanager
async def worker_processes(
    settings: Settings, count: int, *, ready_timeout_s: float = READY_TIMEOUT_S
) -> AsyncIterator[WorkerPool]:
    """Start `count` `pyloto worker` processes, wait until each is ready, stop them on exit."""
    pool = WorkerPool()
    if count <= 0:
        yield pool
        return
    started: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for _ in range(count):
            started.append(pool._start(settings))
        log_event(_log, "workers_started", count=count, pids=[c.pid for c in pool.children])
        for child, ready_fd in started:
            await asyncio.to_thread(_wait_ready, child, ready_fd, ready_timeout_s)
        log_event(_log, "workers_ready", count=count)
        yield pool
    finally:
        for _, ready_fd in started:
            os.close(ready_fd)
        await asyncio.to_thread(pool.stop, settings.shutdown_grace_seconds)
        log_event(_log, "workers_stopped", count=count)


def announce_ready(ready_fd: int | None) -> None:
    """In a child: tell the parent the runtime is open (once)."""
    if ready_fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(ready_fd, b"1")
        os.close(ready_fd)


def listen_for_wakes(
    loop: asyncio.AbstractEventLoop, wake_fd: int | None, wake: Callable[[], None]
) -> Callable[[], None]:
    """In a child: call `wake` whenever the parent writes to the wake pipe; returns the undo."""
    if wake_fd is None:
        return lambda: None
    os.set_blocking(wake_fd, False)

    def readable() -> None:
        try:
            data = os.read(wake_fd, 4096)
        except BlockingIOError:
            return
        if not data:  # the parent closed its end: stop listening (orphan watch stops us)
            loop.remove_reader(wake_fd)
            return
        wake()

    loop.add_reader(wake_fd, readable)

    def undo() -> None:
        loop.remove_reader(wake_fd)
        os.close(wake_fd)

    return undo
