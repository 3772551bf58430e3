"""The queue contract against `MemoryMessageQueue`."""

from __future__ import annotations

import pytest

from pyloto_cli.adapters.queue.memory import MemoryMessageQueue
from pyloto_cli.domain.retry import RetryPolicy
from tests.contract.queue_contract import ContractQueue, FakeClock, MakeQueue, QueueContract


class TestMemoryQueue(QueueContract):
    """In-process queue: every non-durable behaviour."""

    @pytest.fixture
    def make_queue(self, policy: RetryPolicy, clock: FakeClock) -> MakeQueue:
        def make() -> ContractQueue:
            return MemoryMessageQueue(policy, clock=clock)

        return make
