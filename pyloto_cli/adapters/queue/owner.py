"""Who holds a lease on a one-host queue: a process, named so that another can tell it is gone.

A lease time long enough for a slow LLM (30 s) is far too long to wait after a crash. So a
lease records its owner as `host/pid/start` (the process's start time, which tells a dead
process from a later one that got its pid), and a queue that finds a lease whose owner process
on this host has ended releases it at once. An owner on another host is never judged: only its
lease time tells (a shared queue file is one host's; Redis uses heartbeats instead).
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass

import psutil

# psutil derives a start time from the boot time and the kernel's clock ticks: the same
# process reads the same to well within this, two processes on one pid are seconds apart
_SAME_START_S = 0.05


@dataclass(frozen=True, slots=True)
class ProcessOwner:
    """A process on a host, as recorded with the leases it holds."""

    host: str
    pid: int
    started: float

    @property
    def tag(self) -> str:
        """The text stored with a lease."""
        return f"{self.host}/{self.pid}/{self.started:.3f}"

    @classmethod
    def parse(cls, tag: str) -> ProcessOwner | None:
        """The owner a stored tag names; None for a tag this version did not write."""
        host, _, rest = tag.rpartition("/")
        host, _, pid = host.rpartition("/")
        try:
            return cls(host, int(pid), float(rest))
        except ValueError:
            return None


@functools.cache
def this_process() -> ProcessOwner:
    """This process (computed once: a process keeps its pid and start time)."""
    process = psutil.Process()
    return ProcessOwner(socket.gethostname(), process.pid, process.create_time())


def is_gone(owner: ProcessOwner) -> bool:
    """Whether `owner` has certainly ended: no process has its pid on this host, or the one
    that has is another (a later start, or a zombie waiting to be reaped). An owner on another
    host, or one that cannot be inspected, is taken as alive."""
    if owner.host != socket.gethostname():
        return False
    try:
        process = psutil.Process(owner.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(process.create_time() - owner.started) > _SAME_START_S
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # e.g. access denied: it runs, as someone else
        return False
