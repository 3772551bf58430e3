"""What media WhatsApp accepts from a business, checked before anything is uploaded. Pure.

Meta's limits per kind (DOMAIN.md §9): image 5 MB (JPEG, PNG), audio 16 MB (AAC, AMR, MP3,
M4A, OGG/Opus), video 16 MB (MP4, 3GPP), document 100 MB (PDF, plain text, Office formats);
captions (image, video, document) at most 1024 characters; a document carries its filename.
A megabyte is counted as 1024 * 1024 bytes. The MIME type comes from the file's extension,
through this closed table rather than the platform's `mimetypes` database, whose answers for
`.m4a` or `.amr` differ from machine to machine.

Each check raises `MediaRejected`, whose message is one line naming the file's problem and
what would be accepted: an operator fixes the input, nothing was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from types import MappingProxyType
from typing import Final

from pyloto_cli.domain.errors import PermanentError

MB: Final = 1024 * 1024
CAPTION_MAX: Final = 1024
FILENAME_MAX: Final = 240  # a filename longer than this is cut (keeping its extension)


class MediaKind(StrEnum):
    """The Graph message types that carry an uploaded file."""

    IMAGE = "image"
    DOCUMENT = "document"
    AUDIO = "audio"
    VIDEO = "video"


@dataclass(frozen=True, slots=True)
class MediaRule:
    """One kind's limits: the most bytes, the accepted types by extension, a caption or not."""

    kind: MediaKind
    max_bytes: int
    types: Mapping[str, str]  # lower-case extension with its dot -> MIME type
    caption: bool

    def accepted(self) -> str:
        """The extensions this kind accepts, for an error message."""
        return ", ".join(sorted(self.types))


_WORD = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_EXCEL = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_POWERPOINT = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

MEDIA_RULES: Final[Mapping[MediaKind, MediaRule]] = MappingProxyType(
    {
        MediaKind.IMAGE: MediaRule(
            MediaKind.IMAGE,
            5 * MB,
            {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"},
            caption=True,
        ),
        MediaKind.AUDIO: MediaRule(
            MediaKind.AUDIO,
            16 * MB,
            {
                ".aac": "audio/aac",
                ".amr": "audio/amr",
                ".mp3": "audio/mpeg",
                ".m4a": "audio/mp4",
                ".ogg": "audio/ogg",
                ".opus": "audio/ogg",
            },
            caption=False,
        ),
        MediaKind.VIDEO: MediaRule(
            MediaKind.VIDEO, 16 * MB, {".mp4": "video/mp4", ".3gp": "video/3gpp"}, caption=True
        ),
        MediaKind.DOCUMENT: MediaRule(
            MediaKind.DOCUMENT,
            100 * MB,
            {
                ".pdf": "application/pdf",
                ".txt": "text/plain",
                ".doc": "application/msword",
                ".docx": _WORD,
                ".xls": "application/vnd.ms-excel",
                ".xlsx": _EXCEL,
                ".ppt": "application/vnd.ms-powerpoint",
                ".pptx": _POWERPOINT,
            },
            caption=True,
        ),
    }
)


class MediaRejected(PermanentError):
    """A file or caption WhatsApp would refuse; the message says which and why, on one line."""


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A file checked against its kind's rule: what the upload and the message need."""

    kind: MediaKind
    mime_type: str
    size: int
    filename: str
    caption: str | None = None


def mime_type_for(kind: MediaKind, name: str) -> str:
    """The MIME type of file `name` for `kind`, from its extension; MediaRejected if the kind
    does not take that extension."""
    rule = MEDIA_RULES[kind]
    suffix = PurePath(name).suffix.lower()
    mime = rule.types.get(suffix)
    if mime is None:
        shown = f"type {suffix!r}" if suffix else "no extension"
        raise MediaRejected(
            f"{PurePath(name).name}: {shown} cannot be sent as {kind.value} "
            f"(accepted: {rule.accepted()})"
        )
    return mime


def check_caption(kind: MediaKind, caption: str | None) -> str | None:
    """The caption to send (None when empty); MediaRejected when `kind` takes none or it is
    longer than `CAPTION_MAX` characters."""
    text = (caption or "").strip()
    if not text:
        return None
    if not MEDIA_RULES[kind].caption:
        raise MediaRejected(f"{kind.value} messages carry no caption")
    length = len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)  # UTF-16 units, as Meta counts
    if length > CAPTION_MAX:
        raise MediaRejected(f"caption is {length} characters; the most is {CAPTION_MAX}")
    return text


def check_media(kind: MediaKind, name: str, size: int, caption: str | None = None) -> MediaFile:
    """Check a file of `size` bytes called `name` (and its caption) against `kind`'s limits."""
    rule = MEDIA_RULES[kind]
    mime = mime_type_for(kind, name)
    base = PurePath(name).name
    if size <= 0:
        raise MediaRejected(f"{base}: the file is empty")
    if size > rule.max_bytes:
        raise MediaRejected(
            f"{base}: {size / MB:.1f} MB is over the {rule.max_bytes // MB} MB limit "
            f"for {kind.value} messages"
        )
    return MediaFile(kind, mime, size, _fit_filename(base), check_caption(kind, caption))


def _fit_filename(name: str) -> str:
    if len(name) <= FILENAME_MAX:
        return name
    suffix = PurePath(name).suffix[:16]
    return name[: FILENAME_MAX - len(suffix)] + suffix
