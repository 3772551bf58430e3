"""The bench's child processes (the fake OpenAI server, `pyloto serve`) and their /proc figures.

Children start in their own session so that a Ctrl-C in the terminal reaches only the bench,
which then stops them itself: SIGTERM, a grace period, then SIGKILL. CPU time and peak RSS come
from `/proc/<pid>/stat` and `/proc/<pid>/status` (Linux; None elsewhere): all threads of the
process, nothing of the bench's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pyloto_cli.domain.errors import PylotoError
from pyloto_cli.logs import get_logger, log_event

_log = get_logger("bench")
_STOP_GRACE_S = 15.0


class ChildFailed(PylotoError):
    """A child process exited or never became ready; the message ends with its log's tail."""


@dataclass(frozen=True, slots=True)
class FakeLLMProcess:
    """A running fake OpenAI server: its pid and `OPENAI_BASE_URL`."""

    pid: int
    url: str


@dataclass(frozen=True, slots=True)
class ServerProcess:
    """A running `pyloto serve`: its pid, URL and log file."""

    pid: int
    url: str
    log: Path


def free_port() -> int:
    """A free TCP port on loopback (bound and released; the child binds it next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, chars: int = 2000) -> str:
    """The end of a child's log, for error messages."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads), from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces; fields start at 3
    ticks = int(fields[11]) + int(fields[12])  # utime (14) and stime (15)
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of process `pid`, from /proc."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (e.g. `pyloto serve --workers N`'s worker processes)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{current}/task/{tid}/children").read_text()
                    todo.extend(int(c) for c in children.split())
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of `pid` and its live descendants (None when `pid` is gone)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(p) or 0.0 for p in process_tree(pid)[1:])


def tree_peak_rss_bytes(pid: int) -> int | None:
    """The sum of the peak RSS of `pid` and of its live descendants (an upper bound of the
    tree's peak: each process's peak may fall at a different time)."""
    own = peak_rss_bytes(pid)
    if own is None:
        return None
    return own + sum(peak_rss_bytes(p) or 0 for p in process_tree(pid)[1:])


def rss_bytes(pid: int) -> int | None:
    """Current resident set size (VmRSS) of process `pid`, from /proc."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


async def _stop(proc: asyncio.subprocess.Process, grace_s: float = _STOP_GRACE_S) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def child(
    args: Sequence[str], *, log: Path, cwd: Path, env: Mapping[str, str], pipe_stdout: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `args` (stderr, and stdout unless piped, to `log`) and stop it on exit."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipe_stdout else out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def fake_openai(
    workdir: Path, env: Mapping[str, str], options: Mapping[str, Any]
) -> AsyncIterator[FakeLLMProcess]:
    """`python -m pyloto_cli.fakes.openai_server` on a free port, ready when it says so."""
    args = [sys.executable, "-m", "pyloto_cli.fakes.openai_server", "--port", "0"]
    for name, value in options.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    log = workdir / "fake-openai.log"
    async with child(args, log=log, cwd=workdir, env=env, pipe_stdout=True) as proc:
        line = await first_line(proc, 20.0)
        if b"listening on " not in line:
            raise ChildFailed(f"the fake OpenAI server did not start: {log_tail(log)}")
        url = line.decode().rsplit("listening on ", 1)[1].strip()
        log_event(_log, "bench_fake_openai_ready", url=url)
        yield FakeLLMProcess(pid=proc.pid, url=url)


async def first_line(proc: asyncio.subprocess.Process, within_s: float) -> bytes:
    """The first line a child started with `pipe_stdout` prints (how it says it is ready), or
    b"" if it prints none within `within_s`."""
    if proc.stdout is None:
        return b""
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(proc.stdout.readline(), within_s)
    return b""


async def wait_ready(
    proc: asyncio.subprocess.Process,
    url: str,
    log: Path,
    within_s: float,
    name: str = "pyloto serve",
) -> None:
    """Until `url`/readyz answers 200; ChildFailed (with the log's tail) if `proc` exits or
    `within_s` passes first."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise ChildFailed(f"{name} exited ({proc.returncode}): {log_tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise ChildFailed(f"{name} not ready within {within_s:.0f} s: {log_tail(log)}")


@contextlib.asynccontextmanager
async def pyloto_serve(
    workdir: Path,
    env: Mapping[str, str],
    within_s: float = 30.0,
    args: Sequence[str] = (),
    log_name: str = "serve.log",
) -> AsyncIterator[ServerProcess]:
    """`python -m pyloto_cli serve [args]` on a free loopback port, ready when /readyz is 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / log_name
    full_env = {**env, "PORT": str(port), "PYLOTO_HOST": "127.0.0.1"}
    command = [sys.executable, "-m", "pyloto_cli", "serve", *args]
    async with child(command, log=log, cwd=workdir, env=full_env) as proc:
        await wait_ready(proc, url, log, within_s)
        log_event(_log, "bench_server_ready", pid=proc.pid, url=url)
        yield ServerProcess(pid=proc.pid, url=url, log=log)
