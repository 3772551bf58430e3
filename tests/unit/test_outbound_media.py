"""Meta's limits on media a business sends, and the message bodies that carry uploaded media."""

from __future__ import annotations

import pytest

from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.errors import PermanentError
from pyloto_cli.domain.outbound_media import (
    CAPTION_MAX,
    FILENAME_MAX,
    MB,
    MEDIA_RULES,
    MediaKind,
    MediaRejected,
    check_media,
    mime_type_for,
)
from pyloto_cli.domain.webhook import Recipient

PEER = Recipient(to="+15550001234")

LIMITS = {
    MediaKind.IMAGE: ("photo.jpg", 5 * MB),
    MediaKind.AUDIO: ("note.ogg", 16 * MB),
    MediaKind.VIDEO: ("clip.mp4", 16 * MB),
    MediaKind.DOCUMENT: ("report.pdf", 100 * MB),
}


@pytest.mark.parametrize(
    ("kind", "name", "mime"),
    [
        (MediaKind.IMAGE, "a.jpeg", "image/jpeg"),
        (MediaKind.IMAGE, "A.PNG", "image/png"),
        (MediaKind.AUDIO, "v.ogg", "audio/ogg"),
        (MediaKind.AUDIO, "song.m4a", "audio/mp4"),
        (MediaKind.AUDIO, "x.mp3", "audio/mpeg"),
        (MediaKind.VIDEO, "c.3gp", "video/3gpp"),
        (MediaKind.DOCUMENT, "dir/sheet.xlsx", MEDIA_RULES[MediaKind.DOCUMENT].types[".xlsx"]),
        (MediaKind.DOCUMENT, "notes.txt", "text/plain"),
    ],
)
def test_the_type_comes_from_the_extension(kind: MediaKind, name: str, mime: str) -> None:
    assert mime_type_for(kind, name) == mime


@pytest.mark.parametrize(
    ("kind", "name", "words"),
    [
        (MediaKind.IMAGE, "anim.gif", "type '.gif' cannot be sent as image (accepted: .jpeg,"),
        (MediaKind.IMAGE, "doc.pdf", "cannot be sent as image"),
        (MediaKind.AUDIO, "clip.wav", "cannot be sent as audio"),
        (MediaKind.VIDEO, "movie.mov", "cannot be sent as video"),
        (MediaKind.DOCUMENT, "Makefile", "Makefile: no extension cannot be sent as document"),
    ],
)
def test_a_type_the_kind_does_not_take_is_refused(kind: MediaKind, name: str, words: str) -> None:
    with pytest.raises(MediaRejected) as info:
        mime_type_for(kind, name)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", list(MediaKind))
def test_each_kind_takes_up_to_its_limit_and_not_a_byte_more(kind: MediaKind) -> None:
    name, limit = LIMITS[kind]
    assert MEDIA_RULES[kind].max_bytes == limit
    assert check_media(kind, name, limit).size == limit
    with pytest.raises(MediaRejected) as info:
        check_media(kind, name, limit + 1)
    assert f"over the {limit // MB} MB limit for {kind.value} messages" in str(info.value)


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(MediaRejected, match="empty"):
        check_media(MediaKind.IMAGE, "a.png", 0)


def test_captions_fit_1024_utf16_units_and_audio_takes_none() -> None:
    assert check_media(MediaKind.IMAGE, "a.png", 10, "x" * CAPTION_MAX).caption == "x" * 1024
    with pytest.raises(MediaRejected, match="caption is 1025 characters; the most is 1024"):
        check_media(MediaKind.VIDEO, "a.mp4", 10, "x" * 1025)
    emoji = "😀" * 513  # two UTF-16 units each, as Meta counts
    with pytest.raises(MediaRejected, match="1026 characters"):
        check_media(MediaKind.DOCUMENT, "a.pdf", 10, emoji)
    assert check_media(MediaKind.DOCUMENT, "a.pdf", 10, "😀" * 512).caption == "😀" * 512
    with pytest.raises(MediaRejected, match="audio messages carry no caption"):
        check_media(MediaKind.AUDIO, "a.ogg", 10, "hello")
    assert check_media(MediaKind.AUDIO, "a.ogg", 10, "   ").caption is None


def test_a_long_filename_is_cut_keeping_its_extension() -> None:
    name = "r" * 300 + ".pdf"
    media = check_media(MediaKind.DOCUMENT, f"files/{name}", 10)
    assert len(media.filename) == FILENAME_MAX
    assert media.filename.endswith("r.pdf")
    assert check_media(MediaKind.DOCUMENT, "files/x/Q1 report.pdf", 10).filename == "Q1 report.pdf"


def test_media_bodies_by_kind() -> None:
    image = check_media(MediaKind.IMAGE, "a.png", 10, " In stock ")
    assert ob.media_body(PEER, image, "1234567890") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+15550001234",
        "type": "image",
        "image": {"id": "1234567890", "caption": "In stock"},
    }
    doc = check_media(MediaKind.DOCUMENT, "/x/Invoice.pdf", 10)
    assert ob.media_body(PEER, doc, "42")["document"] == {"id": "42", "filename": "Invoice.pdf"}
    audio = check_media(MediaKind.AUDIO, "v.ogg", 10)
    assert ob.media_body(PEER, audio, "43")["audio"] == {"id": "43"}
    video = check_media(MediaKind.VIDEO, "v.mp4", 10, "clip")
    body = ob.media_body(Recipient(recipient="US.13491208655302741918"), video, "44")
    assert body["recipient"] == "US.13491208655302741918"
    assert body["video"] == {"id": "44", "caption": "clip"}


def test_a_media_id_that_is_not_digits_is_never_sent() -> None:
    image = check_media(MediaKind.IMAGE, "a.png", 10)
    with pytest.raises(PermanentError, match="media id"):
        ob.media_body(PEER, image, "../1")


def test_template_parameters_keep_their_order() -> None:
    assert ob.template_body_parameters([]) == []
    assert ob.template_body_parameters(["Ana", "#42"]) == [
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#42"}],
        }
    ]
