"""The in-memory task memos: merge, expiry and forget."""

from __future__ import annotations

import pytest

from pyloto_cli.adapters.memos.memory import MemoryTaskMemos


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_fields_merge_and_forget_drops_them() -> None:
    memos = MemoryTaskMemos(clock=Clock())
    assert await memos.get("wamid.A") == {}
    await memos.put("wamid.A", {"reply": "hi"}, ttl_s=60)
    await memos.put("wamid.A", {"sent.0": "wamid.OUT"}, ttl_s=60)
    assert await memos.get("wamid.A") == {"reply": "hi", "sent.0": "wamid.OUT"}
    await memos.forget("wamid.A")
    assert await memos.get("wamid.A") == {}


async def test_a_record_expires_ttl_after_its_last_write() -> None:
    clock = Clock()
    memos = MemoryTaskMemos(clock=clock)
    await memos.put("k", {"a": "1"}, ttl_s=10)
    clock.now += 9
    await memos.put("k", {"b": "2"}, ttl_s=10)
    clock.now += 9
    assert await memos.get("k") == {"a": "1", "b": "2"}
    clock.now += 1
    assert await memos.get("k") == {}


async def test_returned_fields_are_a_copy() -> None:
    memos = MemoryTaskMemos(clock=Clock())
    await memos.put("k", {"a": "1"}, ttl_s=10)
    (await memos.get("k"))["a"] = "changed"
    assert await memos.get("k") == {"a": "1"}


async def test_non_positive_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await MemoryTaskMemos(clock=Clock()).put("k", {"a": "1"}, ttl_s=0)
