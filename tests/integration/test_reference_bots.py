"""The reference bots of `benchmarks/reference/`, each a real process answering signed webhooks.

Each bot starts as the benchmark starts it (`python -m benchmarks.reference.<bot> --port N`,
configured by pyloto's environment variables) against the fake OpenAI server and the fake
Graph API, both on 127.0.0.1 in the test's event loop. A signed text message must give three
sequential LLM calls with pyloto's prompts and schemas, then one Graph send that carries the
inbound wamid as `biz_opaque_callback_data`; a bad signature must be refused with no call made.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from benchmarks.systems import webhooks as compare_webhooks
from pyloto_cli.bench.runner import BenchConfig
from pyloto_cli.domain.signature import sign
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.fakes.openai_server import DEFAULT_CONTENT, FakeAnswer, FakeOpenAIServer
from pyloto_cli.pipeline.llm_output import load_prompts

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
BOTS = {"inline": "benchmarks.reference.inline_bot", "background": "benchmarks.reference.pywa_bot"}
SECRET = "reference-bot-secret"
TOKEN = "reference-bot-token"
MODEL = "gpt-test-mini"
PHONE_NUMBER_ID = "109000000000777"
WA_ID = "15550001234"
BSUID = "US.13491208655300000777"  # contacts[].user_id, always sent since April 2026
LLM_LATENCY_MS = 100.0  # three sequential calls: a background send lands >= 300 ms after the ack
START_WITHIN_S = 30.0


@dataclass
class Bot:
    """A running reference bot and the fakes it talks to."""

    kind: str
    url: str
    llm: FakeOpenAIServer
    graph: FakeGraphServer
    client: httpx.AsyncClient
    log: Path

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def webhook(wamid: str, text: str) -> bytes:
    """A `messages` webhook with one inbound text message (fictional numbers)."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550100777", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Test User"}, "wa_id": WA_ID, "user_id": BSUID}],
        "messages": [
            {
                "from": WA_ID,
                "from_user_id": BSUID,
                "id": wamid,
                "timestamp": str(int(time.time())),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "209000000000777", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(payload).encode()


def bot_env(port: int, llm: FakeOpenAIServer, graph: FakeGraphServer) -> dict[str, str]:
    proxies = {"http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    env = {k: v for k, v in os.environ.items() if k not in proxies}
    env.update(
        {
            "WHATSAPP_APP_SECRET": SECRET,
            "WHATSAPP_ACCESS_TOKEN": TOKEN,
            "GRAPH_API_URL": graph.url,
            "GRAPH_API_VERSION": "v25.0",
            "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_MODEL": MODEL,
            "PORT": str(port),
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    return env


async def wait_ready(proc: asyncio.subprocess.Process, bot: Bot) -> None:
    deadline = time.monotonic() + START_WITHIN_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            pytest.fail(f"{bot.kind} bot exited ({proc.returncode}):\n{bot.tail()}")
        try:
            if (await bot.client.get(f"{bot.url}/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail(f"{bot.kind} bot not ready within {START_WITHIN_S:.0f} s:\n{bot.tail()}")


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=list(BOTS))
async def bot(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Bot]:
    kind: str = request.param
    port = free_port()
    log = tmp_path_factory.mktemp(kind) / "bot.log"
    async with (
        FakeOpenAIServer(latency_ms=LLM_LATENCY_MS) as llm,
        FakeGraphServer() as graph,
        httpx.AsyncClient(trust_env=False, timeout=10.0) as client,
    ):
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                BOTS[kind],
                "--port",
                str(port),
                cwd=ROOT,
                env=bot_env(port, llm, graph),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        running = Bot(kind, f"http://127.0.0.1:{port}", llm, graph, client, log)
        try:
            await wait_ready(proc, running)
            yield running
        finally:
            await stop(proc)


@pytest.fixture(autouse=True)
def fresh(bot: Bot) -> None:
    """Each test sees only its own requests."""
    bot.llm.requests.clear()
    bot.graph.reset()


async def post(bot: Bot, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return await bot.client.post(f"{bot.url}/webhooks/whatsapp", content=body, headers=headers)


async def one_send(bot: Bot, phone_number_id: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    """The single Graph message the bot sends from `phone_number_id` (waits for it)."""
    try:
        await bot.graph.wait_for_requests(1, within_s=10.0)
    except TimeoutError:
        pytest.fail(f"no Graph send from the {bot.kind} bot:\n{bot.tail()}")
    messages = bot.graph.messages()
    assert len(messages) == 1, bot.graph.requests
    request = messages[0]
    assert request.path == f"/v25.0/{phone_number_id}/messages"
    assert request.authorization == f"Bearer {TOKEN}"
    assert isinstance(request.body, dict)
    return request.body


async def test_signed_text_message_gets_three_llm_calls_then_one_send(bot: Bot) -> None:
    """Event, response and message type in order with pyloto's prompts; then one text reply."""
    body = webhook("wamid.ref.0001", "How much is the large pizza?")
    response = await post(bot, body, sign(SECRET.encode(), body))
    assert response.status_code == 200, bot.tail()
    if bot.kind == "inline":
        assert len(bot.graph.messages()) == 1  # the tutorial design answers after the send
    else:
        assert bot.graph.messages() == []  # pywa answers first, the handler runs after

    sent = await one_send(bot)
    if bot.kind == "inline":
        assert sent["to"] == WA_ID  # the tutorial replies to `from`
    else:
        assert sent["recipient"] == BSUID  # pywa prefers the BSUID by default
    assert sent["biz_opaque_callback_data"] == "wamid.ref.0001"
    assert sent["type"] == "text"
    assert sent["text"]["body"] == DEFAULT_CONTENT["text"]

    calls = bot.llm.requests
    assert [c.route for c in calls] == ["event", "text", "message_type"]
    for earlier, later in itertools.pairwise(calls):  # sequential: each after the last answer
        assert earlier.finished is not None
        assert later.arrived >= earlier.finished
    prompts = load_prompts()
    systems = [prompts.event, prompts.response, prompts.message_type]
    users = ["How much is the large pizza?"] * 2 + [DEFAULT_CONTENT["text"]]
    for call, system, user in zip(calls, systems, users, strict=True):
        assert call.body["model"] == MODEL
        assert call.body["messages"] == [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
    assert calls[0].body["response_format"]["json_schema"]["strict"] is True


async def test_buttons_choice_is_sent_as_reply_buttons(bot: Bot) -> None:
    """LLM#3 choosing buttons gives an interactive button message with ids btn-1, btn-2."""
    shape = {
        "kind": "buttons",
        "buttons": [{"title": "Yes"}, {"title": "No"}],
        "list_button": "",
        "sections": [],
    }
    bot.llm.script("message_type", FakeAnswer(content=json.dumps(shape)))
    body = webhook("wamid.ref.0002", "Can I change my order?")
    assert (await post(bot, body, sign(SECRET.encode(), body))).status_code == 200

    sent = await one_send(bot)
    assert sent["biz_opaque_callback_data"] == "wamid.ref.0002"
    assert sent["type"] == "interactive"
    interactive = sent["interactive"]
    assert interactive["type"] == "button"
    assert interactive["body"]["text"] == DEFAULT_CONTENT["text"]
    assert interactive["action"]["buttons"] == [
        {"type": "reply", "reply": {"id": "btn-1", "title": "Yes"}},
        {"type": "reply", "reply": {"id": "btn-2", "title": "No"}},
    ]


async def test_list_choice_is_sent_as_a_list(bot: Bot) -> None:
    """LLM#3 choosing a list gives an interactive list with numbered row ids."""
    rows = [{"title": f"Plan {n}", "description": "" if n > 1 else "The cheapest"} for n in (1, 2)]
    shape = {
        "kind": "list",
        "buttons": [],
        "list_button": "See plans",
        "sections": [{"title": "Plans", "rows": rows}],
    }
    bot.llm.script("message_type", FakeAnswer(content=json.dumps(shape)))
    body = webhook("wamid.ref.0003", "Which plans do you have?")
    assert (await post(bot, body, sign(SECRET.encode(), body))).status_code == 200

    sent = await one_send(bot)
    action = sent["interactive"]["action"]
    assert sent["interactive"]["type"] == "list"
    assert action["button"] == "See plans"
    assert action["sections"] == [
        {
            "title": "Plans",
            "rows": [
                {"id": "row-1", "title": "Plan 1", "description": "The cheapest"},
                {"id": "row-2", "title": "Plan 2"},
            ],
        }
    ]


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "not-a-signature"])
async def test_bad_signature_is_rejected_and_nothing_is_called(
    bot: Bot, signature: str | None
) -> None:
    """A missing or wrong signature gets a 4xx; only the valid webhook after it is answered."""
    forged = webhook("wamid.ref.forged", "Send me everything")
    response = await post(bot, forged, signature)
    assert 400 <= response.status_code < 500

    wamid = f"wamid.ref.valid.{uuid.uuid4().hex}"  # pywa skips a body it has seen before
    valid = webhook(wamid, "Hello")
    assert (await post(bot, valid, sign(SECRET.encode(), valid))).status_code == 200
    sent = await one_send(bot)
    assert sent["biz_opaque_callback_data"] == wamid
    assert len(bot.llm.requests) == 3
    assert all("Send me everything" not in json.dumps(c.body) for c in bot.llm.requests)


async def test_the_comparison_webhooks_are_answered(bot: Bot) -> None:
    """The webhooks `benchmarks/compare.py` sends (the bench's, with BSUIDs) get one reply."""
    hook = compare_webhooks(BenchConfig(messages=1), SECRET.encode(), uuid.uuid4().hex[:8])[0]
    response = await post(bot, hook.body, hook.signature)
    assert response.status_code == 200, bot.tail()
    sent = await one_send(
        bot, json.loads(hook.body)["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"]
    )
    assert sent["biz_opaque_callback_data"] == hook.wamid
    assert len(bot.llm.requests) == 3
