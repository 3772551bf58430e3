"""The queue contract against `SqliteMessageQueue`, durability included."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue
from pyloto_cli.pipeline.retry import RetryPolicy
from tests.contract.queue_contract import (
    ContractQueue,
    DurableQueueContract,
    FakeClock,
    MakeQueue,
)


class TestSqliteQueue(DurableQueueContract):
    """SQLite queue on a fresh file per test; each `make_queue()` opens that same file."""

    @pytest.fixture
    def make_queue(self, policy: RetryPolicy, clock: FakeClock, tmp_path: Path) -> MakeQueue:
        def make() -> ContractQueue:
            return SqliteMessageQueue(tmp_path / "queue.db", policy, clock=clock)

        return make
