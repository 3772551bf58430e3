"""The worker thread's lower CPU priority: per thread, bounded, and never fatal."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import pytest

from pyloto_cli.worker_thread import lower_thread_priority


def in_thread(fn: Callable[[], int | None]) -> tuple[int | None, int, int]:
    """Run `fn` on a new thread: its result, and that thread's nice value before and after."""
    box: list[tuple[int | None, int, int]] = []

    def main() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        result = fn()
        box.append((result, before, os.getpriority(os.PRIO_PROCESS, tid)))

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    return box[0]


def test_only_the_calling_thread_is_lowered() -> None:
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    result, before, after = in_thread(lambda: lower_thread_priority(3))
    assert (result, after) == (min(19, before + 3), min(19, before + 3))
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here


def test_the_nice_value_stops_at_19() -> None:
    result, _, after = in_thread(lambda: lower_thread_priority(19) and lower_thread_priority(19))
    assert (result, after) == (19, 19)


def test_zero_steps_changes_nothing() -> None:
    result, before, after = in_thread(lambda: lower_thread_priority(0))
    assert (result, after) == (None, before)


def test_a_refusal_is_logged_and_the_thread_runs_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_args: int) -> None:
        raise PermissionError("operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    with caplog.at_level(logging.WARNING, logger="pyloto"):
        result, before, after = in_thread(lambda: lower_thread_priority(10))
    assert (result, after) == (None, before)
    assert [r.getMessage() for r in caplog.records] == ["worker_priority_unchanged"]
