"""The pure media helpers: checksums in hex or base64, media ids, readable text, offline words."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from pyloto_cli.domain.media import (
    MB,
    META_MAX_BYTES,
    expected_digest,
    max_bytes,
    offline_reply,
    valid_media_id,
)
from pyloto_cli.domain.webhook import MessageType, inbound_message, split_webhook
from tests.conftest import load_fixture

DIGEST = hashlib.sha256(b"voice").digest()


@pytest.mark.parametrize(
    "written",
    [
        DIGEST.hex(),
        DIGEST.hex().upper(),
        base64.b64encode(DIGEST).decode(),
        base64.urlsafe_b64encode(DIGEST).decode(),
    ],
)
def test_the_webhook_s_sha256_is_read_in_hex_or_base64(written: str) -> None:
    assert expected_digest(written) == DIGEST


@pytest.mark.parametrize("written", [None, "", "PYLOTO_FAKE_SHA256_7", "abcd", "zz" * 32])
def test_an_unreadable_sha256_cannot_be_checked(written: str | None) -> None:
    assert expected_digest(written) is None


@pytest.mark.parametrize("media_id", ["1", "400000000000007", "9" * 32])
def test_graph_media_ids_are_digits(media_id: str) -> None:
    assert valid_media_id(media_id)


@pytest.mark.parametrize(
    "media_id", [None, "", "../me", "12/messages", "1 2", "9" * 33, "\uff11\uff12"]
)
def test_anything_else_never_goes_into_a_url(media_id: str | None) -> None:
    assert not valid_media_id(media_id)


def test_caps_default_to_meta_s_limits_and_one_setting_replaces_them() -> None:
    assert max_bytes(MessageType.AUDIO, None) == 16 * MB
    assert max_bytes(MessageType.IMAGE, None) == 5 * MB
    assert max_bytes(MessageType.DOCUMENT, None) == 100 * MB
    assert max_bytes(MessageType.IMAGE, 1234) == 1234
    assert set(META_MAX_BYTES) == {
        MessageType.IMAGE,
        MessageType.VIDEO,
        MessageType.AUDIO,
        MessageType.DOCUMENT,
        MessageType.STICKER,
    }


def offline(name: str) -> str | None:
    payload: Any = load_fixture(f"webhooks/{name}.json")
    (task,) = split_webhook(payload, 1767225600.0)
    return offline_reply(inbound_message(task))


def test_offline_words_come_from_the_webhook_alone() -> None:
    assert offline("audio_voice") == "I got your voice note (audio/ogg)"
    assert offline("image") == "I got your image (image/jpeg)"
    document = offline("document_caption")
    assert document is not None
    assert document.startswith("I got your document ")
    location = offline("location")
    assert location is not None
    assert location.startswith("I got your location:\n")
    contacts = offline("contacts")
    assert contacts is not None
    assert contacts.startswith("I got your shared contacts:\n - ")
    assert offline("text") is None
