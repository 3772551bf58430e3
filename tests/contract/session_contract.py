"""The `SessionStore` contract: one behaviour suite every session backend must pass.

A backend's test module subclasses the contract and provides the fixtures:

    class TestSqliteSessionStore(SessionStoreContract, SessionDurabilityContract):
        @pytest.fixture
        def open_store(self, tmp_path): return lambda: SqliteSessionStore(tmp_path / "s.db")

        @pytest.fixture
        async def store(self, open_store):
            async with open_store() as store:
                yield store

Fixtures:
- `store` (required by `SessionStoreContract`): an async fixture yielding an opened adapter over
  an empty namespace of its own (a fresh file, a uuid key prefix or collection), cleaned up
  afterwards. Tests use fixed keys such as `KEY`, so the namespace is what isolates them.
- `open_store` (required by `SessionDurabilityContract`, for backends that keep data across
  restarts): a plain callable returning a new, unopened adapter (an async context manager) on
  the same storage each time it is called.

Class attributes a subclass may lower for a backend with costly contended writes:
`concurrent_writers` (default 20).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

import pytest

from pyloto_cli.domain.conversation import ConversationState, Mode
from pyloto_cli.domain.session import Role, Session, Turn
from pyloto_cli.pipeline.conversation import STAFF, ConversationTracker, mode_history
from pyloto_cli.ports import SessionStore

OpenStore = Callable[[], AbstractAsyncContextManager[SessionStore]]

KEY = "106540352242922:15550001234"
OTHER_KEY = "106540352242922:US.8431092275"


def user_turn(message_id: str, text: str = "hi", at: float = 1_700_000_000.0) -> Turn:
    """A user turn with the given wamid."""
    return Turn(role=Role.USER, text=text, message_id=message_id, at=at)


def bot_turn(message_id: str, reply_to: str, text: str = "hello") -> Turn:
    """An assistant turn answering `reply_to`."""
    return Turn(
        role=Role.ASSISTANT,
        text=text,
        message_id=message_id,
        at=1_700_000_001.5,
        message_type="text",
        reply_to=reply_to,
    )


def ids(session: Session | None) -> list[str]:
    """The message ids of a session's turns, oldest first."""
    assert session is not None
    return [t.message_id for t in session.turns]


class SessionStoreContract:
    """Behaviour every `SessionStore` adapter shares (see the module docstring for fixtures)."""

    concurrent_writers = 20

    async def test_load_of_a_missing_key_is_none(self, store: SessionStore) -> None:
        """A key never written loads as None and does not exist."""
        assert await store.load(KEY) is None
        assert await store.exists(KEY) is False

    async def test_save_then_load_round_trips_every_field_and_unicode(
        self, store: SessionStore
    ) -> None:
        """Every turn field, optional ones included, and non-ASCII text come back unchanged."""
        session = Session(
            key=KEY,
            turns=(
                Turn(
                    Role.USER,
                    "Olá! Quero 2 cafés ☕ — 中文 ok?",
                    "wamid.IN1",
                    1_700_000_000.25,
                    event="order",
                ),
                Turn(
                    Role.ASSISTANT,
                    "Claro 🙂\nAnything else?",
                    "wamid.OUT1",
                    1_700_000_002.0,
                    message_type="interactive",
                    reply_to="wamid.IN1",
                ),
                Turn(Role.ASSISTANT, "", "", 1_700_000_003.0),
            ),
            updated_at=1_700_000_003.5,
            meta={"profile_name": "Zoë Ñandú", "wa_id": "15550001234"},
        )
        await store.save(session)
        assert await store.load(KEY) == session
        assert await store.exists(KEY) is True

    async def test_unencodable_text_is_stored_with_replacement_characters(
        self, store: SessionStore
    ) -> None:
        """Lone surrogates (a JSON "\\ud800" escape in a message) in a turn's text and id are
        stored as U+FFFD by append and save alike, beside the turns around them."""
        hostile = Turn(Role.USER, "a\ud800b\udfff", "wamid.\udc00", 1_700_000_000.0)
        assert (hostile.text, hostile.message_id) == ("a\ufffdb\ufffd", "wamid.\ufffd")
        await store.append(KEY, (user_turn("wamid.before"), hostile, user_turn("wamid.after")), 10)
        assert ids(await store.load(KEY)) == ["wamid.before", "wamid.\ufffd", "wamid.after"]
        loaded = await store.load(KEY)
        assert loaded is not None
        assert loaded.turns[1] == hostile
        await store.save(Session(OTHER_KEY, (hostile,), 1.0))
        other = await store.load(OTHER_KEY)
        assert other is not None
        assert other.turns == (hostile,)

    async def test_save_replaces_the_stored_session(self, store: SessionStore) -> None:
        """A second save overwrites turns and meta rather than merging them."""
        await store.save(Session(KEY, (user_turn("a"), user_turn("b")), 1.0, {"x": "1"}))
        replacement = Session(KEY, (user_turn("c"),), 2.0, {"y": "2"})
        await store.save(replacement)
        assert await store.load(KEY) == replacement

    async def test_delete_removes_and_reports_whether_it_existed(self, store: SessionStore) -> None:
        """Delete is True once, then False; the key then neither exists nor loads."""
        await store.save(Session(KEY, (user_turn("a"),)))
        await store.save(Session(OTHER_KEY, (user_turn("b"),)))
        assert await store.delete(KEY) is True
        assert await store.delete(KEY) is False
        assert await store.exists(KEY) is False
        assert await store.load(KEY) is None
        assert ids(await store.load(OTHER_KEY)) == ["b"]

    async def test_append_creates_the_session(self, store: SessionStore) -> None:
        """Appending to a missing key creates it; what append returns is what loads."""
        appended = await store.append(
            KEY, [user_turn("in1"), bot_turn("out1", "in1")], max_turns=10, meta={"n": "1"}
        )
        assert appended.key == KEY
        assert ids(appended) == ["in1", "out1"]
        assert appended.meta == {"n": "1"}
        assert appended.updated_at > 0
        assert await store.load(KEY) == appended

    async def test_append_extends_a_saved_session(self, store: SessionStore) -> None:
        """Turns go after those already stored, and meta from the save is kept."""
        await store.save(Session(KEY, (user_turn("a"),), meta={"lang": "pt"}))
        appended = await store.append(KEY, [user_turn("b")], max_turns=10)
        assert ids(appended) == ["a", "b"]
        assert appended.meta == {"lang": "pt"}

    async def test_append_keeps_only_the_newest_max_turns(self, store: SessionStore) -> None:
        """History is bounded: the oldest turns fall off, within one call and across calls."""
        await store.append(KEY, [user_turn("1"), user_turn("2")], max_turns=3)
        await store.append(KEY, [user_turn("3"), user_turn("4")], max_turns=3)
        assert ids(await store.load(KEY)) == ["2", "3", "4"]
        appended = await store.append(KEY, [user_turn(str(i)) for i in range(5, 10)], max_turns=3)
        assert ids(appended) == ["7", "8", "9"]
        assert ids(await store.load(KEY)) == ["7", "8", "9"]

    async def test_append_rejects_a_bound_below_one(self, store: SessionStore) -> None:
        """`max_turns` of 0 would mean "keep everything" in slicing; it is refused."""
        with pytest.raises(ValueError, match="max_turns"):
            await store.append(KEY, [user_turn("a")], max_turns=0)
        assert await store.exists(KEY) is False

    async def test_append_merges_meta(self, store: SessionStore) -> None:
        """New meta keys are added, repeated keys overwritten, and no meta keeps what is there."""
        await store.append(KEY, [user_turn("a")], 10, meta={"name": "Ana", "lang": "pt"})
        await store.append(KEY, [user_turn("b")], 10, meta={"lang": "es", "tier": "gold"})
        appended = await store.append(KEY, [user_turn("c")], 10)
        assert appended.meta == {"name": "Ana", "lang": "es", "tier": "gold"}
        assert (await store.load(KEY)) == appended

    async def test_keys_are_independent(self, store: SessionStore) -> None:
        """Appends to one conversation never show up in another."""
        await store.append(KEY, [user_turn("a")], 10)
        await store.append(OTHER_KEY, [user_turn("b")], 10)
        assert ids(await store.load(KEY)) == ["a"]
        assert ids(await store.load(OTHER_KEY)) == ["b"]

    async def test_concurrent_appends_lose_nothing_and_keep_each_writers_order(
        self, store: SessionStore
    ) -> None:
        """Writers racing on one session: every turn lands, each call's turns stay together,
        and each writer's calls stay in the order it made them."""

        async def writer(w: int) -> None:
            for call in range(2):
                question = f"w{w}-c{call}-in"
                await store.append(
                    KEY,
                    [user_turn(question), bot_turn(f"{question}-out", question)],
                    max_turns=1000,
                )

        await asyncio.gather(*(writer(w) for w in range(self.concurrent_writers)))
        stored = ids(await store.load(KEY))
        assert len(stored) == self.concurrent_writers * 4
        for w in range(self.concurrent_writers):
            positions = [stored.index(f"w{w}-c{c}-in") for c in range(2)]
            assert positions[0] < positions[1]
            for c, position in enumerate(positions):
                assert stored[position + 1] == f"w{w}-c{c}-in-out"

    async def test_concurrent_appends_respect_the_bound(self, store: SessionStore) -> None:
        """However appends interleave, the stored history never exceeds `max_turns`."""
        await asyncio.gather(
            *(store.append(KEY, [user_turn(f"m{i}")], max_turns=5) for i in range(12))
        )
        assert len(ids(await store.load(KEY))) == 5

    async def test_a_staff_turn_round_trips_by_append_and_save(self, store: SessionStore) -> None:
        """The author of a turn a person wrote (a Business app echo) is kept by every path."""
        staff = Turn(
            Role.ASSISTANT, "Carla here", "wamid.ECHO1", 1.5, message_type="text", author=STAFF
        )
        appended = await store.append(KEY, [user_turn("a"), staff], 10)
        assert appended.turns[-1] == staff
        assert (await store.load(KEY)) == appended
        await store.save(Session(OTHER_KEY, (staff,), 2.0))
        other = await store.load(OTHER_KEY)
        assert other is not None
        assert other.turns == (staff,)

    async def test_conversation_state_changes_in_the_append_that_records_the_turns(
        self, store: SessionStore
    ) -> None:
        """Mode, its reason and time, the mode history, marketing opt-out and last inbound time
        are written by the same append as the turns: what it returns holds both, and they load
        back as they were written."""
        await store.append(KEY, [user_turn("in1"), bot_turn("out1", "in1")], 10, {"wa_id": "1"})
        tracker = ConversationTracker.of(KEY, await store.load(KEY))
        tracker.inbound(1_700_000_100)
        tracker.staff_active(1_700_000_105.5)
        tracker.change(Mode.HUMAN, "staff_echo", 1_700_000_105.5)
        tracker.state = replace(tracker.state, marketing_opt_out=True)
        appended = await store.append(KEY, [user_turn("in2")], 10, tracker.meta())
        assert ids(appended) == ["in1", "out1", "in2"]
        assert ConversationState.from_meta(appended.meta) == tracker.state
        loaded = await store.load(KEY)
        assert loaded == appended
        assert loaded is not None
        assert loaded.meta["wa_id"] == "1"
        state = ConversationState.from_meta(loaded.meta)
        assert (state.mode, state.mode_reason, state.mode_changed_at) == (
            Mode.HUMAN,
            "staff_echo",
            1_700_000_105.5,
        )
        assert (state.last_inbound_at, state.staff_active_at) == (1_700_000_100.0, 1_700_000_105.5)
        assert state.marketing_opt_out is True
        assert mode_history(loaded.meta) == [
            {"at": 1_700_000_105.5, "from": "assistant", "to": "human", "reason": "staff_echo"}
        ]

    async def test_a_later_append_changes_only_the_fields_it_writes(
        self, store: SessionStore
    ) -> None:
        """A task that only saw a new message writes its last inbound time; the mode another
        writer set meanwhile, and the history, stay as they were; a mode back to default and a
        marketing resume are written too, not dropped as empty."""
        first = ConversationTracker.of(KEY, None)
        first.change(Mode.OPTED_OUT, "user_opt_out", 10.0)
        first.state = replace(first.state, marketing_opt_out=True)
        await store.append(KEY, [user_turn("a")], 10, first.meta())
        stale = ConversationTracker.of(KEY, None)  # loaded before the change above
        stale.inbound(1_700_000_200)
        after = await store.append(KEY, [user_turn("b")], 10, stale.meta())
        state = ConversationState.from_meta(after.meta)
        assert (state.mode, state.marketing_opt_out) == (Mode.OPTED_OUT, True)
        assert state.last_inbound_at == 1_700_000_200.0
        back = ConversationTracker.of(KEY, after)
        back.change(Mode.ASSISTANT, "user_opt_in", 20.0)
        back.state = replace(back.state, marketing_opt_out=False)
        loaded = await store.append(KEY, [], 10, back.meta())
        state = ConversationState.from_meta(loaded.meta)
        assert (state.mode, state.marketing_opt_out) == (Mode.ASSISTANT, False)
        assert [e["to"] for e in mode_history(loaded.meta)] == ["opted_out", "assistant"]
        assert ids(await store.load(KEY)) == ["a", "b"]

    async def test_head_is_the_session_without_its_turns(self, store: SessionStore) -> None:
        """`head` gives what `load` gives but the turns, and None for a missing key."""
        assert await store.head(KEY) is None
        await store.append(KEY, [user_turn("a")], 10, meta={"mode": "human", "name": "Zoë"})
        appended = await store.append(KEY, [], 10, meta={"last_inbound_at": "1767225600.0"})
        head = await store.head(KEY)
        assert head is not None
        assert (head.key, head.updated_at, dict(head.meta)) == (
            KEY,
            appended.updated_at,
            {"mode": "human", "name": "Zoë", "last_inbound_at": "1767225600.0"},
        )
        await store.save(Session(OTHER_KEY, (user_turn("b"),), 5.0))
        other = await store.head(OTHER_KEY)
        assert other is not None
        assert (other.updated_at, dict(other.meta)) == (5.0, {})

    async def test_list_of_an_empty_store_is_empty(self, store: SessionStore) -> None:
        """No session stored, none listed."""
        assert list(await store.list()) == []

    async def test_list_gives_every_session_with_its_meta_newest_first(
        self, store: SessionStore
    ) -> None:
        """Each stored conversation once, with its meta and no turns, most recently updated
        first; `limit` keeps the newest."""
        await store.save(Session(KEY, (user_turn("a"),), 10.0, {"mode": "human", "wa_id": "1"}))
        await store.save(Session(OTHER_KEY, (user_turn("b"), user_turn("c")), 30.0, {"n": "2"}))
        third = "106540352242922:15550009999"
        await store.save(Session(third, (), 20.0, {}))
        heads = list(await store.list())
        assert [(h.key, h.updated_at, dict(h.meta)) for h in heads] == [
            (OTHER_KEY, 30.0, {"n": "2"}),
            (third, 20.0, {}),
            (KEY, 10.0, {"mode": "human", "wa_id": "1"}),
        ]
        assert [h.key for h in await store.list(limit=2)] == [OTHER_KEY, third]
        await store.delete(third)
        assert [h.key for h in await store.list()] == [OTHER_KEY, KEY]

    async def test_list_shows_meta_merged_by_append(self, store: SessionStore) -> None:
        """A mode changed by an append with no turns is what the listing shows."""
        await store.append(KEY, [user_turn("a")], 10, meta={"mode": "assistant"})
        await store.append(KEY, [], 10, meta={"mode": "human", "mode_reason": "operator"})
        (head,) = await store.list()
        assert (head.key, head.meta["mode"], head.meta["mode_reason"]) == (KEY, "human", "operator")
        assert ids(await store.load(KEY)) == ["a"]


class SessionDurabilityContract:
    """Sessions outlive the adapter: for backends that persist (needs the `open_store` fixture)."""

    async def test_sessions_survive_close_and_reopen(self, open_store: OpenStore) -> None:
        """What one adapter wrote, a new adapter on the same storage reads back."""
        async with open_store() as first:
            await first.save(Session(OTHER_KEY, (user_turn("x"),), 5.0, {"k": "v"}))
            written = await first.append(KEY, [user_turn("a"), bot_turn("b", "a")], 10, {"m": "1"})
            assert await first.delete(OTHER_KEY) is True
        async with open_store() as second:
            assert await second.load(KEY) == written
            assert await second.exists(OTHER_KEY) is False
            appended = await second.append(KEY, [user_turn("c")], max_turns=2)
            assert ids(appended) == ["b", "c"]
