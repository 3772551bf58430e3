"""The `TaskMemos` contract on `FirestoreTaskMemos`, against the real Firestore emulator."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from google.cloud import firestore

from pyloto_cli.adapters.firestore_db import FirestoreDatabase, close_client, doc_id
from pyloto_cli.adapters.memos.firestore import FirestoreTaskMemos
from pyloto_cli.domain.errors import BackendUnavailable, TransientError
from tests.contract.dedupe_contract import KEY, FakeClock, FakeClockFixtures
from tests.contract.memos_contract import (
    OpenMemos,
    TaskMemosContract,
    TaskMemosDurabilityContract,
)

pytestmark = pytest.mark.firestore


class TestFirestoreTaskMemos(FakeClockFixtures, TaskMemosContract, TaskMemosDurabilityContract):
    """Firestore keeps the whole contract; records outlive the adapter."""

    @pytest.fixture
    def open_memos(self, firestore_project: str, clock: FakeClock) -> OpenMemos:
        return lambda: FirestoreTaskMemos(firestore_project, clock=clock)


async def test_a_record_is_one_document_with_a_ttl_timestamp(firestore_project: str) -> None:
    """The document holds the fields in one map and `expires_at` as a Firestore timestamp
    (last write plus its TTL), for a TTL policy to delete on; its id is the key's sha256."""
    clock = FakeClock()
    async with (
        FirestoreDatabase(firestore_project) as db,
        FirestoreTaskMemos(client=db.client, collection="m", clock=clock) as memos,
    ):
        await memos.put(KEY, {"reply": "r"}, 60.0)
        clock.advance(10.0)
        await memos.put(KEY, {"sent.0": "wamid.X"}, 3600.0)
        await memos.put(KEY, {}, 3600.0)  # an empty put only pushes the expiry
        snap = await db.client.collection("m").document(doc_id(KEY)).get()
    data = snap.to_dict() or {}
    assert data["key"] == KEY
    assert data["fields"] == {"reply": "r", "sent.0": "wamid.X"}
    assert isinstance(data["expires_at"], datetime)
    assert data["expires_at"].timestamp() == pytest.approx(clock.now + 3600.0)


async def test_a_refused_write_is_a_transient_error(firestore_project: str) -> None:
    """What Firestore refuses (here a document over its 1 MiB limit) reaches the caller as the
    error the pipeline retries on; the record keeps what it had."""
    async with FirestoreTaskMemos(firestore_project) as memos:
        await memos.put(KEY, {"reply": "kept"}, 60.0)
        with pytest.raises(TransientError, match="task_memos_unavailable: firestore"):
            await memos.put(KEY, {"transcript": "x" * 1_100_000}, 60.0)
        assert await memos.get(KEY) == {"reply": "kept"}


async def test_an_unreachable_server_fails_each_call_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    """Firestore gone after start: each call gives up after `call_timeout_s` with the error
    the pipeline retries on, instead of retrying for as long as the outage lasts."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{unused_tcp_port}")
    client = firestore.AsyncClient(project="pyloto-test")
    try:
        async with FirestoreTaskMemos(client=client, call_timeout_s=0.3) as memos:
            for call in (
                memos.get(KEY),
                memos.put(KEY, {"reply": "r"}, 60.0),
                memos.forget(KEY),
            ):
                started = time.monotonic()
                with pytest.raises(TransientError, match="task_memos_unavailable: firestore"):
                    await call
                assert time.monotonic() - started < 5.0
    finally:
        await close_client(client)


async def test_closed_memos_refuse_calls(firestore_project: str) -> None:
    async with FirestoreTaskMemos(firestore_project) as memos:
        await memos.put(KEY, {"reply": "r"}, 30.0)
    with pytest.raises(BackendUnavailable, match="not open"):
        await memos.get(KEY)
