"""The `Deduper` contract on `MemoryDeduper`, plus its bounded memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.ports import ClaimResult, Deduper
from tests.contract.dedupe_contract import DeduperContract, FakeClock, FakeClockFixtures


class TestMemoryDeduper(FakeClockFixtures, DeduperContract):
    """The in-process deduper keeps the whole contract."""

    @pytest.fixture
    async def deduper(self, clock: FakeClock) -> AsyncIterator[Deduper]:
        async with MemoryDeduper(clock=clock) as deduper:
            yield deduper


async def test_expired_markers_are_dropped_from_memory() -> None:
    """Markers leave memory once expired, so a week of traffic does not grow it forever."""
    clock = FakeClock()
    deduper = MemoryDeduper(clock=clock)
    for i in range(100):
        await deduper.mark_done(f"wamid.done{i}", 10.0)
        await deduper.claim(f"wamid.claim{i}", 5.0)
    await deduper.mark_done("wamid.keep", 60.0)
    await deduper.claim("wamid.reclaimed", 5.0)
    clock.advance(4.0)
    await deduper.mark_done("wamid.reclaimed", 60.0)  # its old claim expiry must not drop it
    assert len(deduper) == 202
    clock.advance(7.0)
    await deduper.release("wamid.unknown")
    assert len(deduper) == 2
    assert await deduper.claim("wamid.reclaimed", 1.0) is ClaimResult.DONE
    assert await deduper.claim("wamid.keep", 1.0) is ClaimResult.DONE
