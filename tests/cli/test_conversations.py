"""`pyloto conversations list|show|handoff|resume` on the SQLite session store."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli import app
from pyloto_cli.domain.conversation import ConversationState, Mode, conversation_id
from pyloto_cli.domain.session import Role, Session, Turn
from pyloto_cli.settings import Settings

PNID = "106540352242922"
ANA = f"{PNID}:5511987654321"  # a phone user
BIA = f"{PNID}:US.8431092275"  # a BSUID user
OPTED = f"{PNID}:5511911112222"


def put(data_dir: Path, *sessions: Session) -> None:
    async def go() -> None:
        async with open_roles(Settings(_env_file=None, data_dir=data_dir)) as roles:
            for session in sessions:
                await (await roles.stores()).sessions.save(session)

    asyncio.run(go())


def stored(data_dir: Path, key: str) -> Session:
    async def go() -> Session | None:
        async with open_roles(Settings(_env_file=None, data_dir=data_dir)) as roles:
            return await (await roles.stores()).sessions.load(key)

    session = asyncio.run(go())
    assert session is not None
    return session


@pytest.fixture
def three(cli_env: Path) -> Path:
    """Three conversations: Ana (assistant, newest), Bia (human), one opted out (oldest)."""
    turn = Turn(Role.USER, "oi", "wamid.A1", 1_767_225_600.0)
    put(
        cli_env,
        Session(ANA, (turn,), 30.0, {"wa_id": "5511987654321", "last_inbound_at": "1767225600.0"}),
        Session(BIA, (), 20.0, {"user_id": "US.8431092275", "mode": "human"}),
        Session(OPTED, (), 10.0, {"wa_id": "5511911112222", "mode": "opted_out"}),
    )
    return cli_env


def invoke(runner: CliRunner, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["conversations", *args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 else result


def test_list_shows_every_conversation_newest_first_numbers_masked(
    runner: CliRunner, three: Path
) -> None:
    """Each conversation once, its opaque id and mode; no full number in the output."""
    rows = invoke(runner, "list")["conversations"]
    assert [(r["id"], r["mode"]) for r in rows] == [
        (conversation_id(ANA), "assistant"),
        (conversation_id(BIA), "human"),
        (conversation_id(OPTED), "opted_out"),
    ]
    assert rows[0]["wa_id"] == "***4321"
    assert rows[0]["window_closes_at"] == 1_767_225_600.0 + 86_400
    table = runner.invoke(app, ["conversations", "list"])
    assert table.exit_code == 0, table.output
    assert conversation_id(ANA) in table.stdout
    for full in ("5511987654321", "8431092275", "5511911112222"):
        assert full not in table.stdout
        assert full not in json.dumps(rows)


def test_list_filters_by_mode_and_refuses_an_unknown_one(runner: CliRunner, three: Path) -> None:
    """`--mode human` lists only the human conversation; a mode that is not one exits 2."""
    rows = invoke(runner, "list", "--mode", "human")["conversations"]
    assert [r["id"] for r in rows] == [conversation_id(BIA)]
    result = runner.invoke(app, ["conversations", "list", "--mode", "robot"])
    assert result.exit_code == 2
    assert "unknown mode 'robot'" in result.stderr


@pytest.mark.parametrize("ident", ["id", "5511987654321", "+5511987654321"])
def test_show_finds_a_conversation_by_id_or_wa_id(
    runner: CliRunner, three: Path, ident: str
) -> None:
    """The opaque id and the user's number (with or without +) name the same conversation."""
    data = invoke(runner, "show", conversation_id(ANA) if ident == "id" else ident)
    assert data["id"] == conversation_id(ANA)
    assert [t["text"] for t in data["turns"]] == ["oi"]


def test_show_finds_a_conversation_by_bsuid(runner: CliRunner, three: Path) -> None:
    """A BSUID user is found by the BSUID."""
    assert invoke(runner, "show", "US.8431092275")["id"] == conversation_id(BIA)


def test_handoff_then_resume_change_the_mode_in_the_store_and_log_it(
    runner: CliRunner, three: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """handoff -> human, resume -> assistant, each kept in the session with reason and staff
    activity, and logged as `conversation_mode_changed`; the turns are untouched."""
    caplog.set_level(logging.INFO, logger="pyloto")
    assert invoke(runner, "handoff", conversation_id(ANA)) == {
        "id": conversation_id(ANA),
        "old": "assistant",
        "new": "human",
    }
    state = ConversationState.from_meta(stored(three, ANA).meta)
    assert (state.mode, state.mode_reason) == (Mode.HUMAN, "operator")
    assert state.staff_active_at is not None
    assert state.last_inbound_at == 1_767_225_600.0  # the rest of the state is kept
    assert invoke(runner, "resume", "5511987654321")["new"] == "assistant"
    session = stored(three, ANA)
    assert ConversationState.from_meta(session.meta).mode is Mode.ASSISTANT
    assert [t.message_id for t in session.turns] == ["wamid.A1"]


def test_handoff_of_an_opted_out_conversation_is_refused(runner: CliRunner, three: Path) -> None:
    """Only the user opts back in: handoff and resume exit 1 with one line, nothing changed."""
    before = stored(three, OPTED)
    for command in ("handoff", "resume"):
        result = runner.invoke(app, ["conversations", command, conversation_id(OPTED)])
        assert result.exit_code == 1
        assert "opted_out: only the user can opt back in" in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1
    assert stored(three, OPTED) == before


@pytest.mark.parametrize("command", ["show", "handoff", "resume"])
def test_an_unknown_id_is_one_line_and_exit_1(runner: CliRunner, three: Path, command: str) -> None:
    """An id nobody answers to: one red line, exit 1, nothing written."""
    before = stored(three, ANA)
    result = runner.invoke(app, ["conversations", command, "5511000000000"])
    assert result.exit_code == 1
    assert "no conversation ***0000" in result.stderr
    assert "5511000000000" not in result.stderr
    assert stored(three, ANA) == before


def test_a_memory_session_store_is_refused(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conversations kept inside one serve process cannot be seen from another: exit 2."""
    monkeypatch.setenv("SESSION_STORE_BACKEND", "memory")
    result = runner.invoke(app, ["conversations", "list"])
    assert result.exit_code == 2
    assert "SESSION_STORE_BACKEND=memory" in result.stderr
