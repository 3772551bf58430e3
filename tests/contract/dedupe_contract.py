"""The `Deduper` contract: one behaviour suite every dedupe backend must pass.

A backend's test module subclasses the contract and provides the fixtures:

    class TestMemoryDeduper(FakeClockFixtures, DeduperContract):
        @pytest.fixture
        async def deduper(self, clock):
            async with MemoryDeduper(clock=clock) as deduper:
                yield deduper

Fixtures:
- `deduper` (required): an async fixture yielding an opened adapter over an empty namespace of
  its own (a fresh file, a uuid key prefix or collection), cleaned up afterwards. Tests use
  fixed keys such as `KEY`.
- `advance` (required): `async advance(seconds)` makes `seconds` pass for the adapter. Backends
  with an injectable clock move a `FakeClock` (`clock.advance_async`; `FakeClockFixtures`
  provides both); servers that expire by real time (Redis `PX`) pass `asyncio.sleep`. The
  suite advances `PAST_SHORT_TTL_S` at most four times in total, so real sleeps stay under one
  second.
- `open_deduper` (required by `DeduperDurabilityContract` only): a plain callable returning a
  new, unopened adapter (an async context manager) on the same storage and clock; that
  contract then opens `deduper` from it unless the subclass provides its own.

Time scale, as class attributes a subclass may raise for a slow real server: claims and markers
meant to expire get `SHORT_TTL_S`, and `advance(PAST_SHORT_TTL_S)` must take them past it; the
gap between them is the slack a real server has for the calls in between. Markers meant to live
through a test get `LONG_TTL_S`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from pyloto_cli.ports import ClaimResult, Deduper

Advance = Callable[[float], Awaitable[None]]
OpenDeduper = Callable[[], AbstractAsyncContextManager[Deduper]]

KEY = "wamid.HBgLMTU1NTAwMDEyMzQVAgASGBQzQUJDREVGMDEyMzQ1Njc4OUFCAA=="
OTHER_KEY = "wamid.HBgLMTU1NTAwMDEyMzQVAgASGBQzQUZGRkZGRkZGRkZGRkZGRkZGAA=="


class FakeClock:
    """Epoch seconds that move only when told: pass it as an adapter's `clock`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds

    async def advance_async(self, seconds: float) -> None:
        """`advance` as the contract's `advance` fixture expects it."""
        self.advance(seconds)


class FakeClockFixtures:
    """The `clock` and `advance` fixtures of a backend that takes an injectable clock."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        return clock.advance_async


class DeduperContract:
    """Behaviour every `Deduper` adapter shares (see the module docstring for fixtures)."""

    SHORT_TTL_S = 0.15
    PAST_SHORT_TTL_S = 0.25
    LONG_TTL_S = 60.0
    concurrent_claims = 20

    async def test_first_claim_wins_and_a_second_is_in_progress(self, deduper: Deduper) -> None:
        """A new key is claimed once; while the claim lives, others are told to wait."""
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.IN_PROGRESS
        assert await deduper.claim(OTHER_KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED

    async def test_a_done_key_is_reported_done(self, deduper: Deduper) -> None:
        """After mark_done, claims answer DONE, with or without an earlier claim."""
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
        await deduper.mark_done(KEY, self.LONG_TTL_S)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.DONE
        await deduper.mark_done(OTHER_KEY, self.LONG_TTL_S)
        assert await deduper.claim(OTHER_KEY, self.LONG_TTL_S) is ClaimResult.DONE

    async def test_release_frees_a_claim_but_not_a_done_marker(self, deduper: Deduper) -> None:
        """A released claim can be claimed again at once; release never undoes mark_done."""
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
        await deduper.release(KEY)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
        await deduper.mark_done(KEY, self.LONG_TTL_S)
        await deduper.release(KEY)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.DONE
        await deduper.release(OTHER_KEY)  # nothing there: no error
        assert await deduper.claim(OTHER_KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED

    async def test_an_expired_claim_can_be_claimed_again(
        self, deduper: Deduper, advance: Advance
    ) -> None:
        """A worker that died holding a claim blocks the key only until the claim's TTL ends."""
        assert await deduper.claim(KEY, self.SHORT_TTL_S) is ClaimResult.CLAIMED
        assert await deduper.claim(OTHER_KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.IN_PROGRESS
        await advance(self.PAST_SHORT_TTL_S)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
        assert await deduper.claim(OTHER_KEY, self.LONG_TTL_S) is ClaimResult.IN_PROGRESS

    async def test_a_done_marker_expires_after_its_ttl(
        self, deduper: Deduper, advance: Advance
    ) -> None:
        """Once the done marker's TTL has passed the key is new again."""
        await deduper.mark_done(KEY, self.SHORT_TTL_S)
        await deduper.mark_done(OTHER_KEY, self.LONG_TTL_S)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.DONE
        await advance(self.PAST_SHORT_TTL_S)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
        assert await deduper.claim(OTHER_KEY, self.LONG_TTL_S) is ClaimResult.DONE

    async def test_mark_done_replaces_the_claim_and_its_ttl(
        self, deduper: Deduper, advance: Advance
    ) -> None:
        """The done marker keeps its own TTL: it outlives the short claim it replaced."""
        assert await deduper.claim(KEY, self.SHORT_TTL_S) is ClaimResult.CLAIMED
        await deduper.mark_done(KEY, self.LONG_TTL_S)
        await advance(self.PAST_SHORT_TTL_S)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.DONE

    async def test_concurrent_claims_have_exactly_one_winner(self, deduper: Deduper) -> None:
        """Workers racing for one key: one CLAIMED, every other IN_PROGRESS."""
        results = await asyncio.gather(
            *(deduper.claim(KEY, self.LONG_TTL_S) for _ in range(self.concurrent_claims))
        )
        assert results.count(ClaimResult.CLAIMED) == 1
        assert results.count(ClaimResult.IN_PROGRESS) == self.concurrent_claims - 1

    @pytest.mark.parametrize("ttl_s", [0.0, -1.0])
    async def test_a_ttl_that_is_not_positive_is_refused(
        self, deduper: Deduper, ttl_s: float
    ) -> None:
        """A zero or negative TTL is a caller's bug, not a marker that never or always expires."""
        with pytest.raises(ValueError, match="ttl_s"):
            await deduper.claim(KEY, ttl_s)
        with pytest.raises(ValueError, match="ttl_s"):
            await deduper.mark_done(KEY, ttl_s)
        assert await deduper.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED


class DeduperDurabilityContract:
    """Markers outlive the adapter: for backends that persist (needs `open_deduper`)."""

    LONG_TTL_S = 60.0

    @pytest.fixture
    async def deduper(self, open_deduper: OpenDeduper) -> AsyncIterator[Deduper]:
        async with open_deduper() as deduper:
            yield deduper

    async def test_markers_survive_close_and_reopen(self, open_deduper: OpenDeduper) -> None:
        """Claims and done markers written by one adapter bind a new one on the same storage."""
        async with open_deduper() as first:
            assert await first.claim(KEY, self.LONG_TTL_S) is ClaimResult.CLAIMED
            await first.mark_done(OTHER_KEY, self.LONG_TTL_S)
        async with open_deduper() as second:
            assert await second.claim(KEY, self.LONG_TTL_S) is ClaimResult.IN_PROGRESS
            assert await second.claim(OTHER_KEY, self.LONG_TTL_S) is ClaimResult.DONE
