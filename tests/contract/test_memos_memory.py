"""The `TaskMemos` contract on `MemoryTaskMemos`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pyloto_cli.adapters.memos.memory import MemoryTaskMemos
from pyloto_cli.ports import TaskMemos
from tests.contract.dedupe_contract import FakeClock
from tests.contract.memos_contract import Advance, TaskMemosContract


class TestMemoryTaskMemos(TaskMemosContract):
    """The in-process memos keep the whole contract."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        return clock.advance_async

    @pytest.fixture
    async def memos(self, clock: FakeClock) -> AsyncIterator[TaskMemos]:
        async with MemoryTaskMemos(clock=clock) as memos:
            yield memos
