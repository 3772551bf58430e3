"""The conversation state's round trip through a session's meta, and its 24-hour window."""

from __future__ import annotations

import hashlib

import pytest

from pyloto_cli.domain.conversation import (
    WINDOW_SECONDS,
    ConversationState,
    Mode,
    conversation_id,
)


def test_default_state_is_assistant_with_no_clock() -> None:
    state = ConversationState.from_meta({})
    assert state.mode is Mode.ASSISTANT
    assert state.last_inbound_at is None
    assert not state.marketing_opt_out
    assert not state.window_open(now=1_000.0)


def test_round_trip_through_meta() -> None:
    state = ConversationState(
        mode=Mode.OPTED_OUT,
        mode_reason="keyword",
        mode_changed_at=10.5,
        staff_active_at=9.25,
        last_inbound_at=10.0,
        marketing_opt_out=True,
        reengaged_window=3.0,
    )
    assert ConversationState.from_meta(state.to_meta()) == state


def test_reset_fields_are_written_so_a_merge_clears_them() -> None:
    before = ConversationState(mode=Mode.HUMAN, mode_reason="echo", staff_active_at=5.0)
    merged = {**before.to_meta(), **ConversationState().to_meta()}
    assert ConversationState.from_meta(merged) == ConversationState()


@pytest.mark.parametrize("bad", ["robot", ""])
def test_unknown_mode_reads_as_assistant(bad: str) -> None:
    assert ConversationState.from_meta({"mode": bad}).mode is Mode.ASSISTANT


def test_malformed_times_read_as_never() -> None:
    state = ConversationState.from_meta({"last_inbound_at": "soon", "staff_active_at": "1e3"})
    assert state.last_inbound_at is None
    assert state.staff_active_at == 1000.0


def test_window_closes_24_hours_after_the_last_inbound_message() -> None:
    state = ConversationState(last_inbound_at=100.0)
    assert state.window_open(100.0 + WINDOW_SECONDS - 1)
    assert not state.window_open(100.0 + WINDOW_SECONDS)
    assert state.window_closes_at() == 100.0 + WINDOW_SECONDS


def test_with_mode_records_reason_and_time() -> None:
    state = ConversationState().with_mode(Mode.HUMAN, "operator", 42.0)
    assert (state.mode, state.mode_reason, state.mode_changed_at) == (Mode.HUMAN, "operator", 42.0)


def test_conversation_id_is_a_16_hex_prefix_of_sha256() -> None:
    key = "106540352242922:15551234567"
    assert conversation_id(key) == hashlib.sha256(key.encode()).hexdigest()[:16]
    assert conversation_id(key) != conversation_id(key + "8")
