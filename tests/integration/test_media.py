"""Inbound media end to end on the fakes: what really went out to the fake Graph API and the fake
OpenAI server, what reached the prompts, and what the user got back."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli import backends
from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.memos.memory import MemoryTaskMemos
from pyloto_cli.adapters.sessions.memory import MemorySessionStore
from pyloto_cli.adapters.statuses.memory import MemoryStatusStore
from pyloto_cli.domain.conversation import ConversationState, Mode
from pyloto_cli.domain.errors import TransientError
from pyloto_cli.domain.media import IMAGE_WITHOUT_CAPTION, RESEND_REPLY, VIDEO_REPLY
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.fakes.openai_server import FakeAnswer, FakeOpenAIServer, RecordedRequest
from pyloto_cli.logs import event_fields
from pyloto_cli.pipeline.conversation import ConversationRules
from pyloto_cli.pipeline.media import MEDIA_DIR, TRANSCRIPT_TYPE
from pyloto_cli.pipeline.process import Outcome, Pipeline, TaskResult
from pyloto_cli.settings import Settings
from tests.unit.pipeline_support import RecordingSender, webhook

TOKEN = "media-test-token"
VOICE = b"OggS\x00\x02" + bytes(range(256)) * 40  # not real opus: the bytes only travel
JPEG = b"\xff\xd8\xff\xe0" + b"fake jpeg body " * 100


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        server.require_token(TOKEN)
        yield server


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@dataclass
class Rig:
    pipeline: Pipeline
    sender: RecordingSender
    sessions: MemorySessionStore
    settings: Settings

    async def deliver(self, message: JsonObject) -> TaskResult:
        (task,) = split_webhook(json.loads(json.dumps(webhook([message]))), 1767225600.0)
        return await self.pipeline.process(task)

    def replies(self) -> list[str]:
        return [body["text"]["body"] for _, body in self.sender.sent if body["type"] == "text"]


@pytest.fixture
async def rig(
    make_settings: Callable[..., Settings],
    graph: FakeGraphServer,
    openai_fake: FakeOpenAIServer,
) -> Callable[..., contextlib.AbstractAsyncContextManager[Rig]]:
    @contextlib.asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[Rig]:
        values: dict[str, Any] = {
            "whatsapp_access_token": TOKEN,
            "graph_api_url": graph.url,
            "openai_api_key": "test-key",
            "openai_base_url": openai_fake.base_url,
            "llm_max_retries": 0,
            "llm_stage_timeout": 3.0,
        }
        settings = make_settings(**{**values, **overrides})
        async with contextlib.AsyncExitStack() as stack:
            shared = backends.Shared(settings, stack)
            media = await backends.open_media(shared)
            responder = await backends.open_responder(shared)
            sender = RecordingSender()
            sessions = MemorySessionStore()
            pipeline = Pipeline(
                sessions=sessions,
                deduper=MemoryDeduper(),
                responder=responder,
                sender=sender,
                statuses=MemoryStatusStore(),
                memos=MemoryTaskMemos(),
                media=media,
            )
            yield Rig(pipeline, sender, sessions, settings)

    return build


def media_message(
    type_: str, media_id: str, sha256: str, mime: str, wamid: str = "wamid.MEDIA_1", **extra: Any
) -> JsonObject:
    return {
        "from": "15550001234",
        "id": wamid,
        "timestamp": "1767225600",
        "type": type_,
        type_: {"id": media_id, "mime_type": mime, "sha256": sha256, **extra},
    }


def user_texts(request: RecordedRequest) -> list[Any]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "user"]


def media_files(settings: Settings) -> list[Path]:
    directory = settings.data_dir / MEDIA_DIR
    return list(directory.iterdir()) if directory.exists() else []


def pdf_bytes(lines: list[str], pages: int = 1) -> bytes:
    """A small valid PDF whose pages show `lines` (Helvetica), offsets computed."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    font_ref = 3 + 2 * pages
    for i in range(pages):
        shown = " Tj T* ".join(f"({line})" for line in lines)
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R"
            f" /Resources << /Font << /F1 {font_ref} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


class TestVoiceNotes:
    async def test_the_upload_carries_the_exact_bytes_and_model_and_the_transcript_is_the_turn(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        openai_fake.script("transcription", FakeAnswer(content="what time do you open on sunday"))
        async with rig(transcribe_model="whisper-1") as r:
            msg = media_message(
                "audio",
                media_id,
                graph.media_sha256(media_id),
                "audio/ogg; codecs=opus",
                voice=True,
            )
            result = await r.deliver(msg)
            assert result.outcome is Outcome.DONE
            (upload,) = openai_fake.by_route("transcription")
            assert upload.body["file"] == VOICE
            assert upload.body["model"] == "whisper-1"
            assert upload.body["filename"].endswith(".ogg")
            for route in ("event", "text"):
                (chat,) = openai_fake.by_route(route)
                assert user_texts(chat)[-1] == "what time do you open on sunday"
            session = await r.sessions.load("900000000000002:15550001234")
            assert session is not None
            user_turn = session.turns[0]
            assert user_turn.text == "what time do you open on sunday"
            assert user_turn.message_type == TRANSCRIPT_TYPE
            assert media_files(r.settings) == []  # deleted once the reply was decided
            downloads = graph.downloads()
            assert [d.authorization for d in downloads] == [f"Bearer {TOKEN}"]

    async def test_a_retry_neither_downloads_nor_transcribes_again(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        async with rig() as r:
            r.sender.fail_with = lambda n: TransientError("graph 500") if n == 1 else None
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            first = await r.deliver(msg)
            assert first.outcome is Outcome.RETRY
            second = await r.deliver(msg)
            assert second.outcome is Outcome.DONE
            assert len(graph.downloads()) == 1
            assert len(openai_fake.by_route("transcription")) == 1
            # the reply computed on the first attempt is sent again: no second LLM call
            assert len(openai_fake.by_route("text")) == 1
            expected = f"transcript of {len(VOICE)} bytes"
            assert user_texts(openai_fake.by_route("text")[0])[-1] == expected

    async def test_a_failed_transcription_is_retried_like_a_failed_llm_stage(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        openai_fake.script("transcription", FakeAnswer(status=500))
        async with rig() as r:
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            first = await r.deliver(msg)  # the service is down: nothing said, tried again
            assert first.outcome is Outcome.RETRY
            assert first.reply is None
            assert openai_fake.by_route("text") == []
            second = await r.deliver(msg)  # back: the voice note is really answered, once
            assert second.outcome is Outcome.DONE
            assert second.reply is not None
            assert second.reply.text != r.settings.safe_reply
            assert len(openai_fake.by_route("transcription")) == 2
            assert len(openai_fake.by_route("text")) == 1


class TestImages:
    async def test_the_response_stage_sees_the_exact_image_on_the_vision_model(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(JPEG, "image/jpeg")
        async with rig(openai_model="gpt-4o-mini", vision_model="gpt-4o") as r:
            msg = media_message("image", media_id, graph.media_sha256(media_id), "image/jpeg")
            assert (await r.deliver(msg)).outcome is Outcome.DONE
            (response,) = openai_fake.by_route("text")
            assert response.body["model"] == "gpt-4o"
            parts = user_texts(response)[-1]
            assert parts[0] == {"type": "text", "text": IMAGE_WITHOUT_CAPTION}
            url = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
            assert parts[1] == {"type": "image_url", "image_url": {"url": url}}
            for route in ("event", "message_type"):
                (other,) = openai_fake.by_route(route)
                assert "image_url" not in json.dumps(other.body)
                assert other.body["model"] == "gpt-4o-mini"
            assert user_texts(openai_fake.by_route("event")[0])[-1] == IMAGE_WITHOUT_CAPTION

    async def test_a_captioned_sticker_goes_with_its_caption(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(b"RIFF....WEBPVP8 sticker", "image/webp")
        async with rig() as r:
            msg = media_message(
                "image", media_id, graph.media_sha256(media_id), "image/webp", caption="is it open?"
            )
            await r.deliver(msg)
            parts = user_texts(openai_fake.by_route("text")[0])[-1]
            assert parts[0]["text"] == "is it open?"
            assert parts[1]["image_url"]["url"].startswith("data:image/webp;base64,")


class TestDocuments:
    async def test_the_text_of_a_pdf_reaches_the_response_stage_with_its_filename(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(pdf_bytes(["Receipt 2026-118", "Total due 42.50 EUR"]), "x")
        async with rig() as r:
            msg = media_message(
                "document",
                media_id,
                graph.media_sha256(media_id),
                "application/pdf",
                filename="receipt.pdf",
                caption="is this right?",
            )
            assert (await r.deliver(msg)).outcome is Outcome.DONE
            text = user_texts(openai_fake.by_route("text")[0])[-1]
            assert text.splitlines()[0] == "[document receipt.pdf]"
            assert "Total due 42.50 EUR" in text
            assert text.splitlines()[-1] == "is this right?"

    async def test_a_pdf_over_the_page_limit_gets_a_polite_reply(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(pdf_bytes(["page"], pages=3), "application/pdf")
        async with rig(document_max_pages=2) as r:
            msg = media_message(
                "document", media_id, graph.media_sha256(media_id), "application/pdf"
            )
            await r.deliver(msg)
            (reply,) = r.replies()
            assert "2 pages at most" in reply
            assert openai_fake.requests == []

    async def test_a_pdf_that_cannot_be_parsed_gets_a_polite_reply(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(b"%PDF-1.4 not really a pdf", "application/pdf")
        async with rig() as r:
            msg = media_message(
                "document",
                media_id,
                graph.media_sha256(media_id),
                "application/pdf",
                filename="broken.pdf",
            )
            assert (await r.deliver(msg)).outcome is Outcome.DONE
            (reply,) = r.replies()
            assert reply.startswith("I cannot open the document broken.pdf.")
            assert openai_fake.requests == []
            assert media_files(r.settings) == []

    async def test_another_type_is_not_downloaded_and_the_reply_names_what_is_read(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(b"PK\x03\x04 docx", "application/msword")
        async with rig() as r:
            msg = media_message(
                "document", media_id, "x", "application/msword", filename="notes.doc"
            )
            await r.deliver(msg)
            (reply,) = r.replies()
            assert "notes.doc" in reply
            assert "PDFs of up to 10 pages" in reply
            assert graph.requests == []
            assert openai_fake.requests == []


class TestOtherTypes:
    async def test_location_and_contacts_are_readable_text_for_the_stages(
        self, rig: Any, openai_fake: FakeOpenAIServer
    ) -> None:
        async with rig() as r:
            await r.deliver(
                {
                    "from": "15550001234",
                    "id": "wamid.LOC",
                    "timestamp": "1767225600",
                    "type": "location",
                    "location": {"latitude": 38.7223, "longitude": -9.1393, "name": "Test Cafe"},
                }
            )
            card = {
                "name": {"formatted_name": "Rui Test"},
                "phones": [{"phone": "+1 (555) 000-5678", "wa_id": "15550005678"}],
            }
            await r.deliver(
                {
                    "from": "15550001234",
                    "id": "wamid.CARD",
                    "timestamp": "1767225601",
                    "type": "contacts",
                    "contacts": [card],
                }
            )
            first, second = (user_texts(c)[-1] for c in openai_fake.by_route("text"))
            assert first == "[location]\nTest Cafe\ncoordinates: 38.722300, -9.139300"
            assert second == "[shared contacts]\n - Rui Test, +1 (555) 000-5678"

    async def test_a_video_without_caption_gets_a_polite_reply_and_is_not_downloaded(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        async with rig() as r:
            await r.deliver(media_message("video", "4000000000009", "x", "video/mp4"))
            assert r.replies() == [VIDEO_REPLY]
            assert graph.requests == []
            assert openai_fake.requests == []


class TestFailures:
    async def test_an_unknown_id_asks_to_send_again_and_is_never_a_dead_letter(
        self, rig: Any, graph: FakeGraphServer
    ) -> None:
        graph.own_numbers("900000000000002")  # any other id: error 100
        async with rig() as r:
            result = await r.deliver(media_message("audio", "4999", "x", "audio/ogg"))
            assert result.outcome is Outcome.DONE
            assert r.replies() == [RESEND_REPLY]

    async def test_with_a_caption_it_is_answered_from_the_caption(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        graph.own_numbers("900000000000002")
        async with rig() as r:
            msg = media_message("image", "4999", "x", "image/jpeg", caption="price of this?")
            assert (await r.deliver(msg)).outcome is Outcome.DONE
            assert user_texts(openai_fake.by_route("text")[0])[-1] == "price of this?"

    async def test_meta_s_own_download_failure_fetches_nothing(
        self, rig: Any, graph: FakeGraphServer
    ) -> None:
        async with rig() as r:
            msg = media_message("audio", "4000000000001", "x", "audio/ogg")
            msg["errors"] = [{"code": 131052, "title": "Media download error"}]
            await r.deliver(msg)
            assert r.replies() == [RESEND_REPLY]
            assert graph.requests == []

    async def test_a_checksum_mismatch_is_refused_and_the_file_removed(
        self, rig: Any, graph: FakeGraphServer
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        wrong = base64.b64encode(b"\x01" * 32).decode()
        async with rig() as r:
            await r.deliver(media_message("audio", media_id, wrong, "audio/ogg"))
            assert r.replies() == [RESEND_REPLY]
            assert media_files(r.settings) == []

    async def test_hex_checksums_are_read_too(self, rig: Any, graph: FakeGraphServer) -> None:
        import hashlib

        media_id = graph.add_media(VOICE, "audio/ogg")
        async with rig() as r:
            hexed = hashlib.sha256(VOICE).hexdigest()
            await r.deliver(media_message("audio", media_id, hexed, "audio/ogg"))
            assert r.replies() != [RESEND_REPLY]

    async def test_a_5xx_from_graph_is_retried_under_the_queue_s_policy(
        self, rig: Any, graph: FakeGraphServer
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        graph.fail_downloads(503)
        async with rig() as r:
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            assert (await r.deliver(msg)).outcome is Outcome.RETRY
            assert r.sender.sent == []
            assert (await r.deliver(msg)).outcome is Outcome.DONE

    async def test_an_expired_url_is_fetched_again_from_the_id_once(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        graph.fail_downloads(404)
        async with rig() as r:
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            assert (await r.deliver(msg)).outcome is Outcome.DONE
            assert [d.answered for d in graph.downloads()] == [404, 200]
            assert openai_fake.by_route("transcription")[0].body["file"] == VOICE

    async def test_a_refused_download_after_the_fresh_url_asks_to_send_again(
        self, rig: Any, graph: FakeGraphServer
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        graph.fail_downloads(403, 403)
        async with rig() as r:
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            assert (await r.deliver(msg)).outcome is Outcome.DONE
            assert [d.answered for d in graph.downloads()] == [403, 403]
            assert r.replies() == [RESEND_REPLY]

    async def test_a_17_mb_voice_note_is_refused_before_it_is_downloaded(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(b"\x00" * (17 * 1024 * 1024), "audio/ogg")
        async with rig() as r:
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            await r.deliver(msg)
            assert r.replies() == [RESEND_REPLY]
            assert graph.downloads() == []  # the announced size was enough
            assert openai_fake.requests == []

    async def test_a_download_that_grows_past_the_cap_is_stopped_and_removed(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        media_id = graph.add_media(b"\x00" * (3 * 1024 * 1024), "audio/ogg", chunked=True)
        async with rig(media_max_bytes=1024 * 1024) as r:
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            await r.deliver(msg)
            assert r.replies() == [RESEND_REPLY]
            assert len(graph.downloads()) == 1
            assert media_files(r.settings) == []
            assert openai_fake.requests == []

    @pytest.mark.parametrize(
        ("mode", "downloads"), [(Mode.HUMAN, 0), (Mode.OPTED_OUT, 0), (Mode.ASSISTANT, 1)]
    )
    async def test_a_conversation_a_person_took_over_or_left_downloads_nothing(
        self, rig: Any, graph: FakeGraphServer, mode: Mode, downloads: int
    ) -> None:
        media_id = graph.add_media(VOICE, "audio/ogg")
        async with rig() as r:
            state = ConversationState().with_mode(mode, "test", time.time())  # a handoff now
            await r.sessions.append("900000000000002:15550001234", (), 50, state.to_meta())
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            await r.deliver(msg)
            assert len(graph.downloads()) == downloads

    async def test_a_handoff_that_timed_out_reads_the_voice_note_again(
        self, rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
    ) -> None:
        """The mode that counts is the one this turn leaves with: a person's conversation idle
        past the handoff timeout is the assistant's again, and its voice note is transcribed."""
        media_id = graph.add_media(VOICE, "audio/ogg")
        openai_fake.script("transcription", FakeAnswer(content="are you open today"))
        async with rig() as r:
            idle_since = time.time() - 2 * ConversationRules().handoff_timeout_s
            state = ConversationState().with_mode(Mode.HUMAN, "test", idle_since)
            await r.sessions.append("900000000000002:15550001234", (), 50, state.to_meta())
            msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
            result = await r.deliver(msg)
            assert result.outcome is Outcome.DONE
            assert len(graph.downloads()) == 1
            (chat,) = openai_fake.by_route("text")
            assert user_texts(chat)[-1] == "are you open today"
            session = await r.sessions.load("900000000000002:15550001234")
            assert session is not None
            assert ConversationState.from_meta(session.meta).mode is Mode.ASSISTANT


async def test_logs_hold_no_media_bytes_no_token_and_no_download_url(
    rig: Any,
    graph: FakeGraphServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pyloto")  # what `configure_logging` writes
    media_id = graph.add_media(VOICE, "audio/ogg")
    image_id = graph.add_media(JPEG, "image/jpeg")
    graph.fail_downloads(404)
    async with rig() as r:
        await r.deliver(media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg"))
        await r.deliver(
            media_message(
                "image", image_id, graph.media_sha256(image_id), "image/jpeg", wamid="wamid.M2"
            )
        )
        card = {"name": {"formatted_name": "Rui"}, "phones": [{"phone": "+1 (555) 000-5678"}]}
        await r.deliver(
            {
                "from": "15550001234",
                "id": "wamid.M3",
                "timestamp": "1767225600",
                "type": "contacts",
                "contacts": [card],
            }
        )
    assert len(r.replies()) == 3
    ours = [rec for rec in caplog.records if rec.name.startswith("pyloto")]
    logged = "\n".join(rec.getMessage() for rec in ours)
    logged += json.dumps([event_fields(rec) for rec in ours], default=str)
    assert "media_fetched" in logged
    assert TOKEN not in logged
    assert "/_media/" not in logged
    assert "hash=ATfake" not in logged
    assert base64.b64encode(JPEG).decode()[:40] not in logged
    assert base64.b64encode(VOICE).decode()[:40] not in logged
    assert "000-5678" not in logged


async def test_a_media_id_that_is_not_digits_never_reaches_a_url(
    rig: Any, graph: FakeGraphServer
) -> None:
    async with rig() as r:
        await r.deliver(media_message("audio", "../../me", "x", "audio/ogg"))
        assert r.replies() == [RESEND_REPLY]
        assert graph.requests == []


async def test_keep_seconds_keeps_the_download_until_it_is_older(
    rig: Any, graph: FakeGraphServer
) -> None:
    media_id = graph.add_media(VOICE, "audio/ogg")
    async with rig(media_keep_seconds=3600) as r:
        msg = media_message("audio", media_id, graph.media_sha256(media_id), "audio/ogg")
        await r.deliver(msg)
        (kept,) = media_files(r.settings)
        assert kept.read_bytes() == VOICE
        assert kept.stat().st_mode & 0o777 == 0o600


async def test_offline_nothing_is_read_and_without_a_token_nothing_is_downloaded(
    make_settings: Callable[..., Settings],
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        assert await backends.open_media(backends.Shared(make_settings(), stack)) is None
        keyed = backends.Shared(make_settings(openai_api_key="k"), stack)
        reader = await backends.open_media(keyed)
        assert reader is not None
        assert reader.fetcher is None
        assert reader.transcriber is None


async def test_a_burst_s_voice_note_joins_the_turn_as_its_transcript(
    rig: Any, graph: FakeGraphServer, openai_fake: FakeOpenAIServer
) -> None:
    media_id = graph.add_media(VOICE, "audio/ogg")
    openai_fake.script("transcription", FakeAnswer(content="and do you deliver?"))
    text = {
        "from": "15550001234",
        "id": "wamid.B1",
        "timestamp": "1767225600",
        "type": "text",
        "text": {"body": "hi, a question"},
    }
    voice = media_message(
        "audio", media_id, graph.media_sha256(media_id), "audio/ogg", wamid="wamid.B2"
    )
    tasks = split_webhook(webhook([text, voice]), 1767225600.0)
    async with rig() as r:
        result = await r.pipeline.process_batch(tasks)
        assert result.outcome is Outcome.DONE
        (response,) = openai_fake.by_route("text")
        assert user_texts(response)[-1] == "hi, a question\nand do you deliver?"
        assert r.sender.callbacks() == ["wamid.B2"]


async def test_the_fake_takes_media_over_http_for_a_serve_run(
    graph: FakeGraphServer, tmp_path: Path
) -> None:
    """`pyloto serve` against the fakes from a shell: media is added over the fake's HTTP API."""
    import httpx

    from pyloto_cli.adapters.media.graph import GraphMediaFetcher

    async with httpx.AsyncClient() as client:
        added = await client.post(
            f"{graph.url}/_fake/media", params={"mime_type": "audio/ogg"}, content=VOICE
        )
        media_id, sha256 = added.json()["id"], added.json()["sha256"]
        fetcher = GraphMediaFetcher(
            client, access_token=TOKEN, api_version="v25.0", base_url=graph.url
        )
        fetched = await fetcher.fetch(media_id, sha256=sha256, max_bytes=10**6, directory=tmp_path)
    assert fetched.path.read_bytes() == VOICE
    assert fetched.mime_type == "audio/ogg"
