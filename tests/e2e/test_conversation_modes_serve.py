"""Conversation modes through a real `pyloto serve` (SQLite queue, offline LLM, fake Graph).

A message that must get no reply is known to be processed when `serve` logs its session save
(`session_saved` with its hashed wamid), so silence is asserted without sleeping.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyloto_cli.logs import log_id
from tests.e2e.serve_process import ServeProcess
from tests.e2e.test_kill9 import post, serve_env
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

PNID = "900000000000002"
OPTOUT = "You won't receive more messages from us. Reply START to receive them again."
OPTIN = "Welcome back! You'll receive our messages again. How can we help?"
HANDOFF = "Thanks! A person from our team will reply here soon."


def _body(field: str, value: dict[str, Any]) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PNID},
        **value,
    }
    change = {"field": field, "value": value}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    return json.dumps(payload).encode()


def text(user: str, wamid: str, body: str) -> bytes:
    """A text from `user`, stamped now (a fixture's old time would make it a stale message)."""
    message = {
        "from": user,
        "id": wamid,
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": body},
    }
    return _body(
        "messages", {"contacts": [{"profile": {"name": "U"}, "wa_id": user}], "messages": [message]}
    )


def staff_echo(user: str, wamid: str, body: str) -> bytes:
    echo = {
        "from": "15550000000",
        "to": user,
        "id": wamid,
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": body},
    }
    return _body("smb_message_echoes", {"message_echoes": [echo]})


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[ServeProcess, FakeGraphServer]]:
    async with FakeGraphServer() as graph:
        serve = ServeProcess(tmp_path, serve_env(tmp_path / "data", graph.url))
        await serve.start()
        try:
            yield serve, graph
        finally:
            serve.terminate()


def replies_to(graph: FakeGraphServer, user: str) -> list[str]:
    return [
        r.body["text"]["body"]
        if r.body["type"] == "text"
        else r.body["interactive"]["body"]["text"]
        for r in graph.messages()
        if isinstance(r.body, dict) and r.body.get("to") == f"+{user}"
    ]


def events(serve: ServeProcess) -> list[dict[str, Any]]:
    lines = serve.log.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def saved(serve: ServeProcess, wamid: str) -> None:
    """Wait until `serve` has stored the message `wamid` in its session."""
    hashed = log_id(wamid)
    await wait_until(
        lambda: any(
            e["event"] == "session_saved" and e.get("message_id") == hashed for e in events(serve)
        ),
        within=10.0,
        what=f"{wamid} stored",
        details=serve.log_tail,
    )


async def replied(graph: FakeGraphServer, serve: ServeProcess, user: str, count: int) -> list[str]:
    await wait_until(
        lambda: len(replies_to(graph, user)) >= count,
        within=10.0,
        what=f"{count} replies to {user[-4:]}",
        details=serve.log_tail,
    )
    return replies_to(graph, user)


async def test_handoff_opt_out_opt_in_and_echo_through_serve(
    running: tuple[ServeProcess, FakeGraphServer],
) -> None:
    serve, graph = running
    ana, rui, bia = "15550001234", "15550005678", "15550009999"
    async with httpx.AsyncClient() as client:

        async def send(body: bytes) -> None:
            assert await post(client, serve.url, body)

        # ask for a person: one handoff message, then silence
        await send(text(ana, "wamid.e2e.ana.1", "I need a human, please"))
        assert await replied(graph, serve, ana, 1) == [HANDOFF]
        await send(text(ana, "wamid.e2e.ana.2", "hello? anyone there?"))
        await saved(serve, "wamid.e2e.ana.2")

        # STOP: one confirmation, silence; START: one confirmation, answered again
        await send(text(rui, "wamid.e2e.rui.1", "STOP"))
        assert await replied(graph, serve, rui, 1) == [OPTOUT]
        await send(text(rui, "wamid.e2e.rui.2", "are you still there?"))
        await saved(serve, "wamid.e2e.rui.2")
        assert replies_to(graph, rui) == [OPTOUT]
        await send(text(rui, "wamid.e2e.rui.3", "start"))
        assert await replied(graph, serve, rui, 2) == [OPTOUT, OPTIN]
        await send(text(rui, "wamid.e2e.rui.4", "what is the price?"))
        answers = await replied(graph, serve, rui, 3)
        assert answers[2].startswith('You said: "what is the price?"')

        # a staff member answers from the Business app: pyloto stands back
        await send(staff_echo(bia, "wamid.e2e.echo.1", "Hi, Carla here. How can I help?"))
        await send(text(bia, "wamid.e2e.bia.1", "hi Carla, where is my order?"))
        await saved(serve, "wamid.e2e.bia.1")

    assert replies_to(graph, ana) == [HANDOFF]
    assert replies_to(graph, bia) == []
    assert len(replies_to(graph, rui)) == 3
    changes = [e for e in events(serve) if e["event"] == "conversation_mode_changed"]
    assert [(c["new_mode"], c["reason"]) for c in changes] == [
        ("human", "user_request"),
        ("opted_out", "user_opt_out"),
        ("assistant", "user_opt_in"),
        ("human", "staff_echo"),
    ]
    assert all(ana not in json.dumps(c) and rui not in json.dumps(c) for c in changes)
