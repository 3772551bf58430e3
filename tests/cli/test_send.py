"""`pyloto send`: an operator's message goes out through the sender `serve` uses, against the
fake Graph on 127.0.0.1 and sessions prepared in the test's data dir; what reached the fake is
asserted byte for byte. Refusals (opt-out, closed window) and Graph errors exit 1, bad input
exits 2, each with one line and nothing sent; phone numbers never appear whole."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli import app
from pyloto_cli.domain.conversation import ConversationState, Mode
from pyloto_cli.domain.outbound_media import MB
from pyloto_cli.domain.session import Role, Turn
from pyloto_cli.settings import Settings
from tests.fakes.graph_server import FakeGraphServer

TOKEN = "graph-token-SECRET-send"
NUMBER = "106540352242922"
USER = "15550001234"
BSUID = "US.13491208655302741918"


@pytest.fixture
async def graph(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGraphServer]:
    """The fake Graph with one token; pyloto configured to send through it from NUMBER."""
    async with FakeGraphServer() as server:
        server.require_token(TOKEN)
        monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", TOKEN)
        monkeypatch.setenv("GRAPH_API_URL", server.url)
        monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", NUMBER)
        yield server


async def conversation(
    data_dir: Path,
    user: str = USER,
    *,
    hours_ago: float = 1.0,
    clock_in_meta: bool = True,
    **state: Any,
) -> None:
    """Store a conversation whose user last wrote `hours_ago` hours ago, as the pipeline
    would (keyed `{number}:{user}`, the state in the session's meta; without
    `clock_in_meta`, only the user's turn dates it)."""
    wrote = time.time() - hours_ago * 3600
    meta = ConversationState(last_inbound_at=wrote if clock_in_meta else None, **state).to_meta()
    meta["wa_id"] = USER
    settings = Settings(_env_file=None, data_dir=data_dir)
    async with open_roles(settings) as roles:
        sessions = (await roles.stores()).sessions
        turn = Turn(Role.USER, "hello", "wamid.IN1", wrote)
        await sessions.append(f"{NUMBER}:{user}", [turn], 50, meta)


async def send(runner: CliRunner, *args: str) -> Result:
    """`pyloto send ...` in a thread (the fake serves on this loop)."""
    return await asyncio.to_thread(lambda: runner.invoke(app, ["send", *args]))


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def no_full_number(result: Result) -> None:
    assert USER not in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr


# --- sent ------------------------------------------------------------------------------------


async def test_text_inside_the_window_is_sent_and_its_wamid_printed(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path
) -> None:
    await conversation(cli_env)
    result = await send(runner, "--to", f"+{USER}", "--text", "Your order has shipped")
    assert result.exit_code == 0, result.output
    (message,) = graph.messages()
    assert message.phone_number_id == NUMBER
    assert message.authorization == f"Bearer {TOKEN}"
    assert message.body["to"] == f"+{USER}"
    assert message.body["text"]["body"] == "Your order has shipped"
    assert result.stdout.strip() == f"sent text to ***1234 from {NUMBER}: wamid.fake.00000001"
    no_full_number(result)


async def test_an_image_is_uploaded_byte_for_byte_then_sent_by_id(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path, tmp_path: Path
) -> None:
    await conversation(cli_env)
    photo = tmp_path / "shelf.JPG"
    data = os.urandom(200_000)
    photo.write_bytes(data)
    result = await send(
        runner, "--to", USER, "--image", str(photo), "--caption", "In stock", "--json"
    )
    assert result.exit_code == 0, result.output
    (upload,) = graph.uploads
    assert upload.data == data
    assert (upload.type, upload.content_type, upload.filename) == (
        "image/jpeg",
        "image/jpeg",
        "shelf.JPG",
    )
    assert upload.phone_number_id == NUMBER
    (message,) = graph.messages()
    assert message.body["image"] == {"id": upload.media_id, "caption": "In stock"}
    out = json.loads(result.stdout)
    assert out == {
        "sent": True,
        "message_id": "wamid.fake.00000001",
        "to": "***1234",
        "from": NUMBER,
        "type": "image",
        "media_id": upload.media_id,
        "dry_run": False,
    }


async def test_a_document_goes_with_its_filename(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path, tmp_path: Path
) -> None:
    await conversation(cli_env)
    pdf = tmp_path / "invoice-0042.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + os.urandom(5000))
    result = await send(runner, "--to", USER, "--document", str(pdf))
    assert result.exit_code == 0, result.output
    assert graph.uploads[0].data == pdf.read_bytes()
    assert graph.uploads[0].type == "application/pdf"
    assert graph.messages()[0].body["document"] == {
        "id": graph.uploads[0].media_id,
        "filename": "invoice-0042.pdf",
    }


async def test_a_template_with_parameters_needs_no_open_window(
    runner: CliRunner, graph: FakeGraphServer
) -> None:
    """No conversation stored at all: a template still goes, its parameters in order."""
    result = await send(
        runner,
        "--to",
        "+1 (555) 000-1234",
        "--template",
        "order_update",
        "--lang",
        "pt_BR",
        "--param",
        "Ana",
        "--param",
        "#42",
    )
    assert result.exit_code == 0, result.output
    (message,) = graph.messages()
    assert message.body["type"] == "template"
    assert message.body["template"] == {
        "name": "order_update",
        "language": {"code": "pt_BR"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#42"}],
            }
        ],
    }
    assert message.body["to"] == "+15550001234"


async def test_a_bsuid_is_sent_to_the_phone_its_conversation_knows(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path
) -> None:
    await conversation(cli_env, BSUID)
    result = await send(runner, "--to", BSUID, "--text", "hi", "--from", NUMBER)
    assert result.exit_code == 0, result.output
    body = graph.messages()[0].body
    assert body["to"] == f"+{USER}"
    assert "US.***1918" in result.stdout


async def test_without_a_token_it_is_a_dry_run(
    runner: CliRunner, cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `serve` does: no WHATSAPP_ACCESS_TOKEN, the dry-run sender; nothing leaves."""
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", NUMBER)
    await conversation(cli_env)
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG" + os.urandom(100))
    result = await send(runner, "--to", USER, "--image", str(photo), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dry_run"] is True
    assert out["message_id"] == "wamid.dryrun.1"
    assert out["media_id"].isdigit()
    text = await send(runner, "--to", USER, "--text", "hi")
    assert text.exit_code == 0, text.output
    assert text.stdout.strip() == (
        f"dry run (no WHATSAPP_ACCESS_TOKEN): would send text to ***1234 from {NUMBER}: "
        "wamid.dryrun.1"
    )


# --- refused ---------------------------------------------------------------------------------


async def test_an_opted_out_user_gets_nothing_not_even_a_template(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path
) -> None:
    await conversation(cli_env, mode=Mode.OPTED_OUT)
    for args in (["--text", "hi"], ["--template", "order_update", "--lang", "en_US"]):
        result = await send(runner, "--to", USER, *args)
        assert result.exit_code == 1, result.output
        assert "opted out" in one_error_line(result)
        no_full_number(result)
    assert graph.requests == []


async def test_outside_the_window_only_a_template_goes(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path, tmp_path: Path
) -> None:
    await conversation(cli_env, hours_ago=25)
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG" + os.urandom(100))
    for args in (["--text", "hi"], ["--image", str(photo)]):
        result = await send(runner, "--to", USER, *args)
        assert result.exit_code == 1, result.output
        line = one_error_line(result)
        assert "24-hour window is closed (the user last wrote 25 h ago)" in line
        assert "only --template" in line
    assert graph.requests == []
    assert graph.uploads == []
    result = await send(runner, "--to", USER, "--template", "hello_again", "--lang", "en")
    assert result.exit_code == 0, result.output
    assert [m.body["type"] for m in graph.messages()] == ["template"]


@pytest.mark.parametrize(("hours_ago", "code"), [(23.5, 0), (24.5, 1)])
async def test_without_the_clock_in_meta_the_newest_user_turn_dates_the_window(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path, hours_ago: float, code: int
) -> None:
    await conversation(cli_env, hours_ago=hours_ago, clock_in_meta=False)
    result = await send(runner, "--to", USER, "--text", "hi")
    assert result.exit_code == code, result.output
    assert len(graph.messages()) == 1 - code


async def test_no_stored_conversation_allows_only_a_template(
    runner: CliRunner, graph: FakeGraphServer
) -> None:
    result = await send(runner, "--to", USER, "--text", "hi")
    assert result.exit_code == 1, result.output
    assert "no conversation with this user" in one_error_line(result)
    assert graph.requests == []


async def test_a_graph_error_is_one_line_in_words(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path
) -> None:
    """Meta refuses (131047: its own idea of the window): exit 1, the code and reason."""
    await conversation(cli_env)
    graph.fail(131047)
    result = await send(runner, "--to", USER, "--text", "hi")
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert "not sent: graph error 131047 (outside 24h window)" in line
    no_full_number(result)


async def test_a_failed_upload_sends_no_message(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path, tmp_path: Path
) -> None:
    await conversation(cli_env)
    clip = tmp_path / "note.ogg"
    clip.write_bytes(os.urandom(300))
    graph.fail(131053)
    result = await send(runner, "--to", USER, "--audio", str(clip))
    assert result.exit_code == 1, result.output
    assert "131053 (media upload failed)" in one_error_line(result)
    assert graph.messages() == []


# --- bad input -------------------------------------------------------------------------------


def _big_png(tmp_path: Path) -> str:
    path = tmp_path / "big.png"
    with path.open("wb") as file:
        file.truncate(5 * MB + 1)  # sparse: one byte over the limit, nothing written
    return str(path)


def _file(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(b"data")
    return str(path)


BAD_INPUT = {
    "two contents": (["--text", "hi", "--template", "t", "--lang", "en"], "exactly one"),
    "no content": ([], "exactly one of"),
    "two files": (
        ["--image", "{tmp}/a.png", "--document", "{tmp}/b.pdf"],
        "give one file",
    ),
    "missing file": (["--image", "{tmp}/nope.png"], "no such file"),
    "unknown type": (["--image", "{gif}"], "type '.gif' cannot be sent as image"),
    "too large": (["--image", "{big}"], "over the 5 MB limit"),
    "caption on audio": (["--audio", "{ogg}", "--caption", "x"], "carry no caption"),
    "caption on text": (["--text", "hi", "--caption", "x"], "--caption goes with"),
    "long caption": (["--image", "{png}", "--caption", "x" * 1025], "the most is 1024"),
    "template without lang": (["--template", "order_update"], "needs --lang"),
    "param without template": (["--text", "hi", "--param", "x"], "go with --template"),
    "bad template name": (["--template", "Order Update", "--lang", "en"], "not a template"),
    "empty text": (["--text", "  "], "--text is empty"),
    "long text": (["--text", "x" * 4097], "the most is 4096"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
async def test_bad_content_is_one_line_exit_2_nothing_sent(
    runner: CliRunner, graph: FakeGraphServer, tmp_path: Path, case: str
) -> None:
    args, expected = BAD_INPUT[case]
    files = {
        "tmp": str(tmp_path),
        "gif": _file(tmp_path, "x.gif"),
        "big": _big_png(tmp_path),
        "ogg": _file(tmp_path, "v.ogg"),
        "png": _file(tmp_path, "a.png"),
    }
    _file(tmp_path, "b.pdf")
    result = await send(runner, "--to", USER, *[a.format(**files) for a in args])
    assert result.exit_code == 2, result.output
    assert expected in one_error_line(result)
    assert graph.requests == []
    assert graph.uploads == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to", "12345", "--text", "hi"], "is neither a phone number"),
        (["--to", "+0015550001234", "--text", "hi"], "is neither a phone number"),
        (["--to", "us.123", "--text", "hi"], "is neither a phone number"),
        (["--to", USER, "--from", "12/../34", "--text", "hi"], "is not a phone number id"),
    ],
)
async def test_bad_numbers_are_one_line_exit_2(
    runner: CliRunner, graph: FakeGraphServer, args: list[str], expected: str
) -> None:
    result = await send(runner, *args)
    assert result.exit_code == 2, result.output
    assert expected in one_error_line(result)
    assert graph.requests == []
    no_full_number(result)


async def test_without_from_or_the_setting_it_says_which_to_give(runner: CliRunner) -> None:
    result = await send(runner, "--to", USER, "--text", "hi")
    assert result.exit_code == 2, result.output
    assert "pass --from or set WHATSAPP_PHONE_NUMBER_ID" in one_error_line(result)


async def test_a_rejected_token_names_the_setting_and_never_prints_it(
    runner: CliRunner, graph: FakeGraphServer, cli_env: Path
) -> None:
    await conversation(cli_env)
    graph.require_token("the-rotated-token")
    result = await send(runner, "--to", USER, "--text", "hi")
    assert result.exit_code == 1, result.output
    assert "WHATSAPP_ACCESS_TOKEN is rejected by Graph" in one_error_line(result)
    no_full_number(result)
    assert graph.messages() == []
