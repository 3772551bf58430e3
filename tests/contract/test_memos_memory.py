"""The `TaskMemos` contract on `MemoryTaskMemos`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pyloto_cli.adapters.memos.memory import MemoryTaskMemos
from pyloto_cli.ports import TaskMemos
from tests.contract.dedupe_contract import FakeClock, FakeClockFixtures
from tests.contract.memos_contract import TaskMemosContract


class TestMemoryTaskMemos(FakeClockFixtures, TaskMemosContract):
    """The in-process memos keep the whole contract."""

    @pytest.fixture
    async def memos(self, clock: FakeClock) -> AsyncIterator[TaskMemos]:
        async with MemoryTaskMemos(clock=clock) as memos:
            yield memos
