"""The `Deduper` contract on `FirestoreDeduper`, against the real Firestore emulator."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from pyloto_cli.adapters.dedupe.firestore import FirestoreDeduper
from pyloto_cli.adapters.firestore_db import FirestoreDatabase, doc_id
from pyloto_cli.ports import ClaimResult
from tests.contract.dedupe_contract import (
    KEY,
    DeduperContract,
    DeduperDurabilityContract,
    FakeClock,
    FakeClockFixtures,
    OpenDeduper,
)

pytestmark = pytest.mark.firestore


class TestFirestoreDeduper(FakeClockFixtures, DeduperContract, DeduperDurabilityContract):
    """The Firestore deduper keeps the whole contract; markers outlive the adapter."""

    @pytest.fixture
    def open_deduper(self, firestore_project: str, clock: FakeClock) -> OpenDeduper:
        return lambda: FirestoreDeduper(firestore_project, clock=clock)


async def test_markers_carry_an_expires_at_timestamp_for_a_ttl_policy(
    firestore_project: str,
) -> None:
    """The document holds `expires_at` as a Firestore timestamp: claim time plus the TTL."""
    clock = FakeClock()
    async with (
        FirestoreDatabase(firestore_project) as db,
        FirestoreDeduper(client=db.client, collection="d", clock=clock) as deduper,
    ):
        await deduper.mark_done(KEY, 3600.0)
        snap = await db.client.collection("d").document(doc_id(KEY)).get()
        data = snap.to_dict() or {}
        assert data["state"] == "done"
        assert isinstance(data["expires_at"], datetime)
        assert data["expires_at"].timestamp() == pytest.approx(clock.now + 3600.0)


async def test_racing_reclaims_of_an_expired_claim_have_one_winner(firestore_project: str) -> None:
    """Many workers finding the same expired claim: exactly one takes it over."""
    clock = FakeClock()
    async with FirestoreDeduper(firestore_project, clock=clock) as deduper:
        assert await deduper.claim(KEY, 1.0) is ClaimResult.CLAIMED
        clock.advance(2.0)
        results = await asyncio.gather(*(deduper.claim(KEY, 60.0) for _ in range(10)))
        assert results.count(ClaimResult.CLAIMED) == 1
        assert results.count(ClaimResult.IN_PROGRESS) == 9
