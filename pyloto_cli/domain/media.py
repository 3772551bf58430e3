"""Inbound media in the domain's terms: Meta's limits, ids, checksums, and readable text.

Pure functions the worker's media step (pipeline/media.py), the Graph download adapter
(adapters/media/graph.py) and the offline responder share: what a message holds, how large it
may be, whether the bytes are the ones the webhook announced, what the stages read for a
location or a contact card, and the polite replies for what pyloto cannot read.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from pyloto_cli.domain.webhook import InboundMessage
from pyloto_cli.domain.webhook_content import (
    LocationContent,
    MediaContent,
    MessageType,
    SharedContactsContent,
    obj_of,
    objs_of,
    text_of,
)

MB: Final = 1024 * 1024
# The most a user can send per type (Meta's media limits); a sticker's is the animated one.
META_MAX_BYTES: Final[dict[MessageType, int]] = {
    MessageType.IMAGE: 5 * MB,
    MessageType.VIDEO: 16 * MB,
    MessageType.AUDIO: 16 * MB,
    MessageType.DOCUMENT: 100 * MB,
    MessageType.STICKER: 500 * 1024,
}
MEDIA_TYPES: Final = frozenset(META_MAX_BYTES)
# Meta could not download the user's media itself: nothing to fetch, ask them to resend.
META_MEDIA_FAILED: Final = 131052
IMAGE_WITHOUT_CAPTION: Final = "[image without caption]"
PDF_MIME: Final = "application/pdf"

RESEND_REPLY: Final = (
    "Sorry, I could not open what you sent. Could you send it again, or type your question?"
)
VIDEO_REPLY: Final = (
    "I cannot watch videos yet. Could you tell me in a message, a voice note or a photo?"
)
_MEDIA_ID: Final = re.compile(r"[0-9]{1,32}")
_HEX_DIGEST: Final = re.compile(r"[0-9a-fA-F]{64}")


class MediaUnavailable(Exception):
    """The media cannot be had, and asking again will not change that (an unknown id, a 4xx
    after one fresh URL, over the cap, a checksum mismatch). `reason` is short and stable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MediaRef:
    """What the webhook says about one media message: enough to fetch and check it."""

    type: MessageType
    media_id: str | None
    mime_type: str
    sha256: str | None
    caption: str | None
    filename: str | None
    voice: bool

    @property
    def label(self) -> str:
        """How a reply names it: `voice note`, `audio`, `image`, `sticker`, `video`, ..."""
        if self.type is MessageType.AUDIO and self.voice:
            return "voice note"
        return self.type.value


def media_ref(msg: InboundMessage) -> MediaRef | None:
    """The media of an image/video/audio/document/sticker message, else None."""
    content = msg.message.content if msg.message is not None else None
    if msg.type not in MEDIA_TYPES or not isinstance(content, MediaContent):
        return None
    return MediaRef(
        type=msg.type,
        media_id=content.id,
        mime_type=content.mime_type or "application/octet-stream",
        sha256=content.sha256,
        caption=content.caption,
        filename=content.filename,
        voice=content.voice,
    )


def meta_failed(msg: InboundMessage) -> bool:
    """Whether the webhook says Meta itself could not download the media (131052)."""
    errors = msg.message.errors if msg.message is not None else ()
    return any(error.code == META_MEDIA_FAILED for error in errors)


def valid_media_id(media_id: str | None) -> bool:
    """A Graph media id is digits: anything else never goes into a URL."""
    return media_id is not None and _MEDIA_ID.fullmatch(media_id) is not None


def max_bytes(type_: MessageType, configured: int | None) -> int:
    """The cap for one type: the configured one, else Meta's limit."""
    return configured if configured is not None else META_MAX_BYTES.get(type_, 16 * MB)


def expected_digest(sha256: str | None) -> bytes | None:
    """The 32-byte digest the webhook announced, written in hex or base64; None when absent
    or unreadable (then the bytes cannot be checked)."""
    if not sha256:
        return None
    if _HEX_DIGEST.fullmatch(sha256):
        return bytes.fromhex(sha256)
    try:
        raw = base64.b64decode(sha256, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(sha256)
        except (binascii.Error, ValueError):
            return None
    return raw if len(raw) == 32 else None


def base_mime(mime_type: str) -> str:
    """`audio/ogg; codecs=opus` -> `audio/ogg`."""
    return mime_type.split(";", 1)[0].strip().lower()


def location_text(content: LocationContent) -> str:
    """A location as the stages read it: name, address, coordinates, each on a line."""
    lines = ["[location]"]
    lines += [part for part in (content.name, content.address) if part]
    if content.latitude is not None and content.longitude is not None:
        lines.append(f"coordinates: {content.latitude:.6f}, {content.longitude:.6f}")
    if content.url:
        lines.append(content.url)
    return "\n".join(lines)


def contacts_text(content: SharedContactsContent) -> str:
    """Shared contact cards as the stages read them: name, organisation, phones, emails."""
    lines = ["[shared contacts]"]
    for card in content.cards:
        name = text_of(obj_of(card, "name"), "formatted_name") or "(no name)"
        org = text_of(obj_of(card, "org"), "company")
        phones = [p for item in objs_of(card, "phones") if (p := text_of(item, "phone"))]
        emails = [e for item in objs_of(card, "emails") if (e := text_of(item, "email"))]
        parts = [name, *([org] if org else []), *phones, *emails]
        lines.append(" - " + ", ".join(parts))
    return "\n".join(lines)


def readable_text(msg: InboundMessage) -> str | None:
    """The words a location or contacts message gives the stages; None for other types."""
    content = msg.message.content if msg.message is not None else None
    if isinstance(content, LocationContent):
        return location_text(content)
    if isinstance(content, SharedContactsContent):
        return contacts_text(content)
    return None


def unreadable_document_reply(filename: str | None, *, max_pages: int, too_long: bool) -> str:
    """The polite answer to a document pyloto cannot read, naming what it can."""
    name = f" {filename}" if filename else ""
    if too_long:
        return (
            f"Your document{name} is longer than I can read ({max_pages} pages at most)."
            " Could you send the part that matters, or type your question?"
        )
    return (
        f"I cannot open the document{name}. I can read PDFs of up to {max_pages} pages,"
        " photos, voice notes and text messages."
    )


def offline_reply(msg: InboundMessage) -> str | None:
    """What the offline responder says to a media, location or contacts message (None for
    other types): deterministic, from the webhook alone."""
    readable = readable_text(msg)
    if readable is not None:
        return f"I got your {readable.splitlines()[0].strip('[]')}:\n" + "\n".join(
            readable.splitlines()[1:]
        )
    ref = media_ref(msg)
    if ref is None:
        return None
    if ref.type is MessageType.DOCUMENT:
        said = f"I got your document {ref.filename or f'({base_mime(ref.mime_type)})'}"
    else:
        said = f"I got your {ref.label} ({base_mime(ref.mime_type)})"
    return f'{said}: "{ref.caption}"' if ref.caption else said
