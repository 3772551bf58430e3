"""`pyloto serve` as a real process for end-to-end tests: free port, own working directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServeProcess:
    """`python -m pyloto_cli serve [args]` in `workdir` (no stray `.env` is read, unless the
    test writes one there), JSON logs in `workdir/serve.log`. `env` adds to the environment;
    `url` is known before it starts; `umask` sets the process's umask."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        args: Sequence[str] = (),
        umask: int = -1,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log = workdir / "serve.log"
        self.args = tuple(args)
        self.env = {**os.environ, "PYLOTO_LOG_FORMAT": "json", **env, "PYLOTO_PORT": str(self.port)}
        self.umask = umask
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "pyloto_cli", "serve", *self.args],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                umask=self.umask,
            )

    async def start(self, within_s: float = 30.0) -> None:
        """Start it and wait until /readyz answers (or fail with the log's tail)."""
        self.proc = self.spawn()
        async with httpx.AsyncClient() as client:
            await wait_until(
                lambda: self._ready(client),
                within=within_s,
                interval=0.05,
                what="pyloto serve ready",
                details=self.log_tail,
            )

    async def _ready(self, client: httpx.AsyncClient) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"pyloto serve exited: {self.log_tail()}")
        try:
            return (await client.get(f"{self.url}/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)

    def terminate(self) -> None:
        if self.proc is not None:
            terminate(self.proc)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL, and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM if it still runs; SIGKILL if it has not stopped 15 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
