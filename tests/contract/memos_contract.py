"""The `TaskMemos` contract: one behaviour suite every task-memo backend must pass.

A backend's test module subclasses the contract and provides the fixtures:

    class TestMemoryTaskMemos(FakeClockFixtures, TaskMemosContract):
        @pytest.fixture
        async def memos(self, clock):
            async with MemoryTaskMemos(clock=clock) as memos:
                yield memos

Fixtures:
- `memos` (required): an async fixture yielding an opened adapter over an empty namespace of
  its own (a fresh file, a uuid key prefix or project), cleaned up afterwards.
- `advance` (required): `async advance(seconds)` makes `seconds` pass for the adapter: a
  `FakeClock`'s `advance_async` where the backend takes a clock (`FakeClockFixtures` provides
  both), `asyncio.sleep` where the server expires by its own (Redis). The suite advances
  `PAST_SHORT_TTL_S` three times in all.
- `open_memos` (required by `TaskMemosDurabilityContract` only): a plain callable returning a
  new, unopened adapter on the same storage and clock; that contract then opens `memos` from it
  unless the subclass provides its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from pyloto_cli.ports import TaskMemos
from tests.contract.dedupe_contract import KEY, OTHER_KEY

Advance = Callable[[float], Awaitable[None]]
OpenMemos = Callable[[], AbstractAsyncContextManager[TaskMemos]]

# What the pipeline keeps: a computed reply (up to WhatsApp's 4,096 characters per text part,
# several parts), and the wamids Meta gave the parts it accepted.
REPLY = '¡Hola, Zoë! Ваш заказ 42 отправлен 🚚 — 配送は明日です.\nLine two\t"quoted" \\ done'
SENT_WAMID = "wamid.HBgLMTU1NTAwMDEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"


class TaskMemosContract:
    """Behaviour every `TaskMemos` adapter shares (see the module docstring for fixtures)."""

    SHORT_TTL_S = 0.15
    PAST_SHORT_TTL_S = 0.25
    LONG_TTL_S = 60.0
    concurrent_puts = 12

    async def test_an_unknown_key_has_no_fields(self, memos: TaskMemos) -> None:
        assert await memos.get(KEY) == {}

    async def test_puts_merge_field_by_field(self, memos: TaskMemos) -> None:
        """A later put adds its fields and replaces only the ones it names."""
        await memos.put(KEY, {"reply": "first", "parts": "2"}, self.LONG_TTL_S)
        await memos.put(KEY, {"sent.0": SENT_WAMID}, self.LONG_TTL_S)
        await memos.put(KEY, {"reply": "second"}, self.LONG_TTL_S)
        assert await memos.get(KEY) == {"reply": "second", "parts": "2", "sent.0": SENT_WAMID}
        assert await memos.get(OTHER_KEY) == {}

    async def test_forget_drops_the_record_and_only_it(self, memos: TaskMemos) -> None:
        await memos.put(KEY, {"reply": "r"}, self.LONG_TTL_S)
        await memos.put(OTHER_KEY, {"reply": "o"}, self.LONG_TTL_S)
        await memos.forget(KEY)
        await memos.forget("wamid.never-stored")  # nothing there: no error
        assert await memos.get(KEY) == {}
        assert await memos.get(OTHER_KEY) == {"reply": "o"}
        await memos.put(KEY, {"transcript": "t"}, self.LONG_TTL_S)
        assert await memos.get(KEY) == {"transcript": "t"}

    async def test_a_record_expires_ttl_after_its_last_write(
        self, memos: TaskMemos, advance: Advance
    ) -> None:
        """A short-lived record is gone after its TTL; a later put with a long TTL keeps the
        whole record (the earlier fields too) past the first expiry."""
        await memos.put(KEY, {"reply": "r"}, self.SHORT_TTL_S)
        await memos.put(OTHER_KEY, {"reply": "o"}, self.SHORT_TTL_S)
        await memos.put(OTHER_KEY, {"sent.0": SENT_WAMID}, self.LONG_TTL_S)
        await advance(self.PAST_SHORT_TTL_S)
        assert await memos.get(KEY) == {}
        assert await memos.get(OTHER_KEY) == {"reply": "o", "sent.0": SENT_WAMID}

    async def test_fields_of_an_expired_record_never_come_back(
        self, memos: TaskMemos, advance: Advance
    ) -> None:
        """A put after the expiry starts a new record: a stale reply is not merged into it."""
        await memos.put(KEY, {"reply": "stale", "parts": "3"}, self.SHORT_TTL_S)
        await advance(self.PAST_SHORT_TTL_S)
        await memos.put(KEY, {"transcript": "fresh"}, self.LONG_TTL_S)
        assert await memos.get(KEY) == {"transcript": "fresh"}

    async def test_unicode_and_punctuation_survive_in_names_and_values(
        self, memos: TaskMemos
    ) -> None:
        fields = {
            "reply": REPLY,
            "sent.0": SENT_WAMID,
            "transcrição": "olá 👋",
            "a`b c:d/e": "",
            "json": '{"parts": ["a", "b"], "n": 1}',
        }
        await memos.put(KEY, fields, self.LONG_TTL_S)
        assert await memos.get(KEY) == fields

    async def test_large_values_round_trip(self, memos: TaskMemos) -> None:
        """A long multi-part reply and a long voice-note transcript come back byte for byte."""
        reply = ("Paragraph with ünïcødé and emoji 🙂. " * 120)[:4096]
        transcript = "".join(f"word{i} " for i in range(20_000))  # ~150 kB
        parts = {f"part.{i}": reply for i in range(4)}
        await memos.put(KEY, parts, self.LONG_TTL_S)
        await memos.put(KEY, {"transcript": transcript}, self.LONG_TTL_S)
        assert await memos.get(KEY) == {**parts, "transcript": transcript}

    async def test_concurrent_puts_of_different_fields_are_all_kept(self, memos: TaskMemos) -> None:
        """Reply parts recorded at the same time by concurrent calls: none is lost."""
        count = self.concurrent_puts
        await asyncio.gather(
            *(memos.put(KEY, {f"sent.{i}": f"wamid.out{i}"}, self.LONG_TTL_S) for i in range(count))
        )
        assert await memos.get(KEY) == {f"sent.{i}": f"wamid.out{i}" for i in range(count)}

    async def test_the_returned_fields_are_a_copy(self, memos: TaskMemos) -> None:
        await memos.put(KEY, {"reply": "r"}, self.LONG_TTL_S)
        (await memos.get(KEY))["reply"] = "changed"
        assert await memos.get(KEY) == {"reply": "r"}

    @pytest.mark.parametrize("ttl_s", [0.0, -1.0])
    async def test_a_ttl_that_is_not_positive_is_refused(
        self, memos: TaskMemos, ttl_s: float
    ) -> None:
        """A zero or negative TTL is a caller's bug; nothing is stored."""
        with pytest.raises(ValueError, match="ttl_s"):
            await memos.put(KEY, {"reply": "r"}, ttl_s)
        assert await memos.get(KEY) == {}


class TaskMemosDurabilityContract:
    """Records outlive the adapter: for backends that persist (needs `open_memos`)."""

    LONG_TTL_S = 60.0

    @pytest.fixture
    async def memos(self, open_memos: OpenMemos) -> AsyncIterator[TaskMemos]:
        async with open_memos() as memos:
            yield memos

    async def test_records_survive_close_and_reopen(self, open_memos: OpenMemos) -> None:
        """What one process paid for is read by the next one on the same storage."""
        async with open_memos() as first:
            await first.put(KEY, {"reply": REPLY}, self.LONG_TTL_S)
            await first.put(KEY, {"sent.0": SENT_WAMID}, self.LONG_TTL_S)
            await first.put(OTHER_KEY, {"reply": "gone"}, self.LONG_TTL_S)
            await first.forget(OTHER_KEY)
        async with open_memos() as second:
            assert await second.get(KEY) == {"reply": REPLY, "sent.0": SENT_WAMID}
            assert await second.get(OTHER_KEY) == {}
