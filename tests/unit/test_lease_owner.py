"""Whether a lease's owner process has ended: real child processes, alive, killed, reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from pyloto_cli.adapters.queue.owner import ProcessOwner, is_gone, this_process
from tests.waiting import wait_until


def owner_of(process: subprocess.Popen[bytes]) -> ProcessOwner:
    return ProcessOwner(this_process().host, process.pid, psutil.Process(process.pid).create_time())


def zombie(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_running_process_is_not_gone_and_a_killed_one_is_before_and_after_reaping() -> None:
    # reaped by this test, not by asyncio's child watcher: its zombie state is what is tested
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # noqa: ASYNC220
    try:
        owner = owner_of(child)
        assert not is_gone(owner)
        os.kill(child.pid, signal.SIGKILL)
        await wait_until(lambda: zombie(child.pid), what="the killed child to be a zombie")
        assert is_gone(owner)  # its pid still exists until the parent reaps it
    finally:
        child.kill()
        child.wait()
    assert is_gone(owner)


def test_a_pid_taken_by_a_later_process_is_gone() -> None:
    me = this_process()
    assert not is_gone(me)
    assert is_gone(ProcessOwner(me.host, me.pid, me.started - 5))


def test_an_owner_on_another_host_is_never_judged() -> None:
    me = this_process()
    assert not is_gone(ProcessOwner(me.host + "-elsewhere", me.pid, me.started - 5))


def test_a_tag_names_its_owner_and_a_foreign_tag_names_none() -> None:
    me = this_process()
    assert ProcessOwner.parse(me.tag) == ProcessOwner(me.host, me.pid, round(me.started, 3))
    assert not is_gone(ProcessOwner.parse(me.tag) or me)
    assert ProcessOwner.parse("not an owner") is None
