"""The StatusStore contract, for every adapter: idempotent by (wamid, status), failures listed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyloto_cli.adapters.statuses.common import delivery_status
from pyloto_cli.adapters.statuses.firestore import FirestoreStatusStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.adapters.statuses.redis import RedisStatusStore
from pyloto_cli.adapters.statuses.sqlite import SqliteStatusStore
from pyloto_cli.logs import event_fields
from pyloto_cli.ports import DeliveryStatus, StatusStore


@pytest.fixture(params=["memory", "sqlite", "redis", "firestore"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StatusStore]:
    if request.param == "memory":
        async with MemoryStatusStore() as memory:
            yield memory
    elif request.param == "sqlite":
        async with SqliteStatusStore(tmp_path / "statuses.sqlite3") as sqlite:
            yield sqlite
    elif request.param == "redis":  # the real redis-server, keys under this test's own prefix
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        async with RedisStatusStore(url, prefix=prefix) as redis:
            yield redis
    else:  # Google's Firestore emulator, a project of this test's own
        project = request.getfixturevalue("firestore_project")
        async with FirestoreStatusStore(project) as firestore:
            yield firestore


def status(
    wamid: str, name: str, ts: int, code: int | None = None, title: str | None = None
) -> DeliveryStatus:
    return DeliveryStatus(
        message_id=wamid,
        status=name,
        timestamp=ts,
        phone_number_id="106540352242922",
        recipient="15550001234",
        error_code=code,
        error_title=title,
        callback_data="wamid.IN",
    )


async def test_record_is_idempotent_per_wamid_and_status(store: StatusStore) -> None:
    """The same (wamid, status) twice is stored once; the second record returns False."""
    assert await store.record(status("wamid.A", "sent", 10)) is True
    assert await store.record(status("wamid.A", "sent", 11)) is False
    assert await store.get("wamid.A") == [status("wamid.A", "sent", 10)]


async def test_get_returns_statuses_oldest_first(store: StatusStore) -> None:
    """Statuses of one wamid come back by timestamp, whatever order they arrived in."""
    await store.record(status("wamid.A", "read", 30))
    await store.record(status("wamid.A", "sent", 10))
    await store.record(status("wamid.A", "delivered", 20))
    await store.record(status("wamid.B", "sent", 15))
    assert [s.status for s in await store.get("wamid.A")] == ["sent", "delivered", "read"]
    assert await store.get("wamid.missing") == []


async def test_failed_lists_newest_failures_with_codes(store: StatusStore) -> None:
    """failed() returns failed deliveries, newest first, limited, with Meta's error code."""
    await store.record(status("wamid.A", "failed", 10, 131049, "not delivered"))
    await store.record(status("wamid.B", "delivered", 20))
    await store.record(status("wamid.C", "failed", 30, 131026, "undeliverable"))
    await store.record(status("wamid.D", "failed", 40, 130472, "experiment"))
    failed = await store.failed(limit=2)
    assert [(s.message_id, s.error_code) for s in failed] == [
        ("wamid.D", 130472),
        ("wamid.C", 131026),
    ]
    assert failed[1].error_title == "undeliverable"


async def test_new_status_is_logged_once(
    store: StatusStore, caplog: pytest.LogCaptureFixture
) -> None:
    """message_status is logged for a new status only, with a masked recipient."""
    caplog.set_level(logging.INFO, logger="pyloto")
    await store.record(status("wamid.A", "failed", 10, 131026))
    await store.record(status("wamid.A", "failed", 10, 131026))
    events = [event_fields(r) for r in caplog.records if r.getMessage() == "message_status"]
    assert len(events) == 1
    assert events[0]["error_code"] == 131026
    assert events[0]["recipient"] == "***1234"


async def test_webhook_status_item_round_trips(store: StatusStore) -> None:
    """A webhook `failed` status item keeps its code, title, recipient and callback data."""
    item = {
        "id": "wamid.F",
        "status": "failed",
        "timestamp": "1751142888",
        "recipient_id": "15550001234",
        "biz_opaque_callback_data": "wamid.IN",
        "errors": [{"code": 131049, "title": "Not delivered", "message": "Not delivered"}],
    }
    parsed = delivery_status(item, "106540352242922")
    await store.record(parsed)
    [stored] = await store.get("wamid.F")
    assert stored == parsed
    assert (stored.error_code, stored.timestamp, stored.callback_data) == (
        131049,
        1751142888,
        "wamid.IN",
    )


async def test_redis_keeps_only_the_newest_failures_and_expires_statuses(
    redis_url: str, redis_prefix: str
) -> None:
    import redis.asyncio as aioredis

    async with RedisStatusStore(redis_url, prefix=redis_prefix, ttl_s=60, keep_failed=2) as store:
        for i in range(4):
            await store.record(status(f"wamid.F{i}", "failed", 10 + i, 131026))
        assert [s.message_id for s in await store.failed(10)] == ["wamid.F3", "wamid.F2"]
        client = aioredis.Redis.from_url(redis_url)
        try:
            ttl = await client.pttl(f"{redis_prefix}statuses:msg:wamid.F3")
        finally:
            await client.aclose()
        assert 0 < ttl <= 60_000


async def test_firestore_statuses_carry_expires_at_and_failures_their_own_copy(
    firestore_project: str,
) -> None:
    """A TTL policy can delete on `expires_at`; `failed()` reads a one-field-index collection."""
    from pyloto_cli.adapters.firestore_db import FirestoreDatabase, doc_id

    async with (
        FirestoreDatabase(firestore_project) as db,
        FirestoreStatusStore(client=db.client, collection="st", ttl_s=60) as store,
    ):
        await store.record(status("wamid.X", "failed", 10, 131026))
        await store.record(status("wamid.X", "sent", 5))
        key = doc_id("wamid.X|failed")
        stored = (await db.client.collection("st").document(key).get()).to_dict() or {}
        copy = (await db.client.collection("st_failed").document(key).get()).to_dict() or {}
        sent = await db.client.collection("st_failed").document(doc_id("wamid.X|sent")).get()
    assert stored["expires_at"].timestamp() > stored["recorded_at"]
    assert copy["error_code"] == 131026
    assert not sent.exists
