"""`pyloto serve` with the fake Graph and the fake OpenAI: a 9,000-character answer goes as three
text messages, one after the other; a voice note is downloaded, transcribed, answered and its
file deleted."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from pyloto_cli.cli import app
from pyloto_cli.domain.outbound import TEXT_MAX, wa_len
from pyloto_cli.domain.signature import sign
from pyloto_cli.fakes.graph_server import FakeGraphServer, RecordedRequest
from pyloto_cli.fakes.openai_server import FakeAnswer, FakeOpenAIServer
from pyloto_cli.logs import LOGGER_NAME
from pyloto_cli.pipeline.media import MEDIA_DIR
from tests.e2e.serve_process import ServeProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

SECRET = "e2e-app-secret"
TOKEN = "e2e-graph-token"
PNID = "900000000000002"
USER = "15550004321"
GRAPH_DELAY_S = 0.1  # every Graph answer waits this long: a send made before it would show
VOICE = b"OggS\x00\x02" + bytes(range(256)) * 40  # not real opus: the bytes only travel
TRANSCRIPT = "do you deliver to the harbour on saturdays"


def long_answer() -> str:
    """About 9,000 characters in numbered paragraphs of ~600, so a lost or reordered piece shows."""
    paragraphs = []
    for n in range(1, 16):
        sentence = f"Paragraph {n} explains step {n} of the order, in plain words. "
        paragraphs.append((sentence * 10).strip())
    text = "\n\n".join(paragraphs)
    assert 8_800 <= len(text) <= 9_300, len(text)
    return text


def webhook(message: dict[str, Any]) -> bytes:
    """One inbound message from USER, stamped now (an old stamp would make it stale)."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PNID},
        "contacts": [{"profile": {"name": "U"}, "wa_id": USER}],
        "messages": [{"from": USER, "timestamp": str(int(time.time())), **message}],
    }
    change = {"field": "messages", "value": value}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    return json.dumps(payload).encode()


@dataclass
class Served:
    """A running `pyloto serve`, the fakes it talks to, and its settings."""

    serve: ServeProcess
    graph: FakeGraphServer
    openai: FakeOpenAIServer
    env: dict[str, str]
    data_dir: Path

    async def post(self, body: bytes) -> None:
        headers = {"X-Hub-Signature-256": sign(SECRET.encode(), body)}
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"{self.serve.url}/webhooks/whatsapp", content=body, headers=headers
            )
        assert answer.status_code == 200

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.serve.log.read_text(errors="replace").splitlines()
        events = (json.loads(line) for line in lines if line.startswith("{"))
        return [event for event in events if event["event"] == name]

    async def processed(self) -> dict[str, Any]:
        """The one task's `task_processed` event, once `serve` logged it."""
        found = await wait_until(
            lambda: self.events("task_processed"),
            within=15.0,
            what="the task processed",
            details=self.serve.log_tail,
        )
        [event] = found
        return event

    def texts_to_user(self) -> list[RecordedRequest]:
        """Accepted text sends to USER, in the order Graph answered them."""
        return [
            r
            for r in self.graph.messages()
            if r.body.get("to") == f"+{USER}" and r.body.get("type") == "text"
        ]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI commands configure the `pyloto` logger on the runner's streams: undo it after."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with FakeGraphServer() as graph, FakeOpenAIServer() as openai:
        graph.require_token(TOKEN)
        graph.delay_s = GRAPH_DELAY_S
        data_dir = tmp_path / "data"
        env = {
            "PYLOTO_DATA_DIR": str(data_dir),
            "WHATSAPP_APP_SECRET": SECRET,
            "WHATSAPP_VERIFY_TOKEN": "e2e-verify",
            "WHATSAPP_ACCESS_TOKEN": TOKEN,
            "GRAPH_API_URL": graph.url,
            "OPENAI_ENABLED": "true",
            "OPENAI_API_KEY": "e2e-openai-key",
            "OPENAI_BASE_URL": openai.base_url,
            "PYLOTO_TRANSCRIBE_MODEL": "e2e-transcriber",
            "PYLOTO_RETRY_BASE_SECONDS": "0.1",
        }
        serve = ServeProcess(tmp_path, env)
        await serve.start()
        try:
            yield Served(serve, graph, openai, env, data_dir)
        finally:
            serve.terminate()


@pytest.mark.usefixtures("restore_logging")
async def test_a_9000_character_answer_goes_as_three_messages_in_order(served: Served) -> None:
    answer = long_answer()
    served.openai.script("text", FakeAnswer(content=answer))
    await served.post(
        webhook({"id": "wamid.e2e.long", "type": "text", "text": {"body": "explain it all"}})
    )
    assert (await served.processed())["outcome"] == "done"

    sent = served.texts_to_user()
    parts = [r.body["text"]["body"] for r in sent]
    assert len(parts) == 3
    assert all(wa_len(part) <= TEXT_MAX for part in parts)
    assert " ".join(parts).split() == answer.split()  # all of it, in order, once
    assert "\n\n".join(parts) == answer  # cut at paragraph breaks
    # each part arrived only once Graph had answered the one before (it waits GRAPH_DELAY_S)
    arrivals = [r.at for r in sent]
    assert all(b - a >= GRAPH_DELAY_S for a, b in itertools.pairwise(arrivals))
    assert len(served.graph.messages()) == 3  # nothing else went out

    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["conversations", "show", USER, "--json"], env=served.env
    )
    assert result.exit_code == 0, result.output
    turns = json.loads(result.stdout)["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[1]["text"] == answer
    assert turns[1]["reply_to"] == "wamid.e2e.long"


async def test_a_voice_note_is_transcribed_answered_and_its_file_deleted(served: Served) -> None:
    graph, openai = served.graph, served.openai
    media_id = graph.add_media(VOICE, "audio/ogg")
    openai.script("transcription", FakeAnswer(content=TRANSCRIPT))
    audio = {
        "id": media_id,
        "mime_type": "audio/ogg; codecs=opus",
        "sha256": graph.media_sha256(media_id),
        "voice": True,
    }
    await served.post(webhook({"id": "wamid.e2e.voice", "type": "audio", "audio": audio}))
    assert (await served.processed())["outcome"] == "done"

    [upload] = openai.by_route("transcription")
    assert upload.body["file"] == VOICE
    assert upload.body["model"] == "e2e-transcriber"
    [response] = openai.by_route("text")
    said = [m["content"] for m in response.body["messages"] if m["role"] == "user"]
    assert said[-1] == TRANSCRIPT
    [reply] = served.texts_to_user()
    assert reply.body["text"]["body"] == "Thanks for your message! How can I help?"
    assert [d.answered for d in graph.downloads()] == [200]
    media = served.data_dir / MEDIA_DIR
    assert media.is_dir()  # where the download was written
    assert list(media.rglob("*")) == []  # and deleted once the reply was decided
