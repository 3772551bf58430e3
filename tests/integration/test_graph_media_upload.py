"""GraphSender uploads media on the production client (httpx on aiohttp) to the fake Graph on
127.0.0.1, then sends the message by the id Meta answered: the fake records the exact bytes,
the multipart fields and the message body that went out; errors follow the send's policy."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from pyloto_cli.adapters.sender.dry_run import DryRunSender
from pyloto_cli.adapters.sender.graph import GraphSender, open_graph_client
from pyloto_cli.adapters.sender.limiter import SendLimiter
from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.errors import PermanentError, SendPaused, TransientError
from pyloto_cli.domain.outbound_media import MediaKind, check_media
from pyloto_cli.domain.webhook import Recipient
from pyloto_cli.settings import Settings
from tests.fakes.graph_server import FakeGraphServer

NUMBER = "106540352242922"
PEER = Recipient(to="+15550001234")


@pytest.fixture
async def fake_graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        server.require_token("good-token")
        yield server


@pytest.fixture
async def sender(
    make_settings: Callable[..., Settings], fake_graph: FakeGraphServer
) -> AsyncIterator[GraphSender]:
    async with open_graph_client(make_settings()) as client:
        yield GraphSender(
            client,
            access_token="good-token",
            api_version="v25.0",
            base_url=fake_graph.url,
            limiter=SendLimiter(1000.0),
        )


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def test_an_image_is_uploaded_whole_then_sent_by_its_id(
    sender: GraphSender, fake_graph: FakeGraphServer, tmp_path: Path
) -> None:
    """Three megabytes of a PNG reach `/media` byte for byte with Meta's three form fields; the
    message names the id Graph answered and carries the caption."""
    photo = tmp_path / "photo.png"
    data = write(photo, 3 * 1024 * 1024 + 17)
    media = check_media(MediaKind.IMAGE, photo.name, photo.stat().st_size, "the receipt")
    media_id = await sender.upload_media(NUMBER, photo, media.mime_type)
    result = await sender.send(NUMBER, ob.media_body(PEER, media, media_id))

    (upload,) = fake_graph.uploads
    assert upload.data == data
    assert (upload.messaging_product, upload.type) == ("whatsapp", "image/png")
    assert (upload.filename, upload.content_type) == ("photo.png", "image/png")
    assert upload.authorization == "Bearer good-token"
    assert upload.media_id == media_id
    assert media_id.isdigit()
    (message,) = fake_graph.messages()
    assert message.path == f"/v25.0/{NUMBER}/messages"
    assert message.body["type"] == "image"
    assert message.body["image"] == {"id": media_id, "caption": "the receipt"}
    assert message.body["to"] == "+15550001234"
    assert result.message_id.startswith("wamid.fake.")


async def test_a_document_message_carries_its_filename(
    sender: GraphSender, fake_graph: FakeGraphServer, tmp_path: Path
) -> None:
    pdf = tmp_path / "Invoice March.pdf"
    data = write(pdf, 2048)
    media = check_media(MediaKind.DOCUMENT, str(pdf), pdf.stat().st_size)
    media_id = await sender.upload_media(NUMBER, pdf, media.mime_type)
    await sender.send(NUMBER, ob.media_body(PEER, media, media_id))
    assert fake_graph.uploads[0].data == data
    assert fake_graph.uploads[0].type == "application/pdf"
    assert fake_graph.messages()[0].body["document"] == {
        "id": media_id,
        "filename": "Invoice March.pdf",
    }


async def test_upload_errors_follow_the_send_policy(
    sender: GraphSender, fake_graph: FakeGraphServer, tmp_path: Path
) -> None:
    """131053 (Meta could not take our media) is permanent, a 503 is retried later, and a
    rejected token pauses sends and uploads alike."""
    clip = tmp_path / "note.ogg"
    write(clip, 1000)
    fake_graph.fail(131053)
    with pytest.raises(PermanentError) as permanent:
        await sender.upload_media(NUMBER, clip, "audio/ogg")
    assert permanent.value.code == 131053
    fake_graph.fail(http_status=503)
    with pytest.raises(TransientError):
        await sender.upload_media(NUMBER, clip, "audio/ogg")
    assert fake_graph.messages() == []
    fake_graph.require_token("another-token")
    with pytest.raises(SendPaused):
        await sender.upload_media(NUMBER, clip, "audio/ogg")
    with pytest.raises(SendPaused):  # fails fast now, without a request
        await sender.send(NUMBER, ob.text_body(PEER, "hi"))
    assert [u.answered for u in fake_graph.uploads] == [400, 503, 401]


async def test_a_number_that_is_not_an_id_uploads_nothing(
    sender: GraphSender, fake_graph: FakeGraphServer, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    write(clip, 10)
    with pytest.raises(PermanentError):
        await sender.upload_media("../me", clip, "video/mp4")
    assert fake_graph.uploads == []


async def test_dry_run_upload_reads_nothing_and_answers_an_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photo = tmp_path / "a.jpg"
    write(photo, 1234)
    sender = DryRunSender()
    with caplog.at_level(logging.INFO):
        first = await sender.upload_media(NUMBER, photo, "image/jpeg")
        second = await sender.upload_media(NUMBER, photo, "image/jpeg")
    assert first.isdigit()
    assert second == str(int(first) + 1)
    assert [(u.filename, u.mime_type, u.size) for u in sender.uploads] == [
        ("a.jpg", "image/jpeg", 1234)
    ] * 2
    assert any("media_uploaded" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError):
        await sender.upload_media(NUMBER, tmp_path / "missing.jpg", "image/jpeg")


async def test_the_fake_refuses_an_upload_without_meta_s_fields(
    fake_graph: FakeGraphServer,
) -> None:
    async with httpx.AsyncClient(base_url=fake_graph.url) as http:
        answer = await http.post(
            f"/v25.0/{NUMBER}/media",
            headers={"Authorization": "Bearer good-token"},
            data={"type": "image/png"},
            files={"file": ("x.png", b"123", "image/png")},
        )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == 100
