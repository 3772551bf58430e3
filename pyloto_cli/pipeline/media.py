"""Inbound media, in the worker: what a voice note, a photo, a PDF, a place or a card says.

Before the responder is asked, `read_media` turns each message of the turn into words the
three stages can read:

- a voice note or audio file: downloaded, transcribed; the transcript is the message text for
  the stages and the session (whose user turn is marked `voice_transcript`). The transcript is
  kept in the task memos under the wamid, so a retry neither downloads nor transcribes again;
- an image or sticker: downloaded; the response stage gets it as a data URL beside the caption,
  the event and message-type stages get the caption or `[image without caption]`;
- a PDF of at most `document_max_pages` pages: its text (pypdf, in a thread, under a timeout)
  with the filename; any other document, or a longer PDF: a polite reply naming what pyloto
  can read, without asking the model;
- a video: its caption, else a polite reply; a location or shared contacts: readable text.

A download that cannot succeed (`MediaUnavailable`) is answered from the caption when there is
one, else with a short reply asking to send it again: never a dead letter. A `TransientError`
(5xx, a timeout) is raised: the queue retries. A failed transcription is a failed LLM stage:
the safe reply, the stage named in `Reply.errors`. A conversation a person has taken over, or
whose user opted out, downloads nothing: the pipeline's mode rules stop its turn before this
step, judged on the mode as this turn leaves it (a handoff that has timed out is the
assistant's again). Downloaded files live under `<data dir>/media` and
are deleted when the reply is decided, unless `keep_s` keeps them that long.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from pyloto_cli.domain.errors import TransientError
from pyloto_cli.domain.llm import LLMCallError
from pyloto_cli.domain.media import (
    IMAGE_WITHOUT_CAPTION,
    PDF_MIME,
    RESEND_REPLY,
    VIDEO_REPLY,
    MediaRef,
    MediaUnavailable,
    base_mime,
    max_bytes,
    media_ref,
    meta_failed,
    readable_text,
    unreadable_document_reply,
)
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.webhook import InboundMessage, MessageType
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import FetchedMedia, MediaFetcher, TaskMemos, Transcriber

TRANSCRIPT_TYPE: Final = "voice_transcript"
TRANSCRIPTION_STAGE: Final = "transcription"
MEDIA_DIR: Final = "media"
DOCUMENT_TEXT_MAX_CHARS: Final = 30_000
_MEMO_TRANSCRIPT: Final = "transcript"
_log = get_logger("media")


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The media step's knobs (from Settings, at the edge)."""

    data_dir: Path
    max_bytes: int | None = None  # one cap for every type; None: Meta's limit per type
    keep_s: float = 0.0
    document_max_pages: int = 10
    document_timeout_s: float = 10.0
    memo_ttl_s: float = 7 * 24 * 3600.0
    safe_reply: str = "Sorry, I can't answer right now. We'll get back to you shortly."

    @property
    def directory(self) -> Path:
        """Where downloads go."""
        return self.data_dir / MEDIA_DIR


@dataclass(frozen=True, slots=True)
class MediaRead:
    """A turn's messages with their media turned into words, the images for the response
    stage, and the reply when the media alone decides it (a polite refusal, a failure)."""

    messages: tuple[InboundMessage, ...]
    last: InboundMessage
    images: tuple[str, ...] = ()
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class _Read:
    message: InboundMessage
    image: str | None = None
    reply: Reply | None = None


class MediaReader:
    """Downloads and reads a turn's media through the ports it is given (see the module
    docstring). Without a fetcher nothing is downloaded (the message keeps its caption);
    without a transcriber, audio is not downloaded either."""

    def __init__(
        self,
        config: MediaConfig,
        *,
        fetcher: MediaFetcher | None = None,
        transcriber: Transcriber | None = None,
    ) -> None:
        self.config = config
        self.fetcher = fetcher
        self.transcriber = transcriber

    async def read(
        self,
        msgs: Sequence[InboundMessage],
        last: InboundMessage,
        files: contextlib.AsyncExitStack,
        memos: TaskMemos | None = None,
    ) -> MediaRead:
        """Each message of the turn, read; downloaded files are deleted when `files` closes."""
        # each message's words (a location, contacts) or media, worked out once
        parts = [(msg, readable_text(msg), media_ref(msg)) for msg in msgs]
        if all(readable is None and ref is None for _, readable, ref in parts):
            return MediaRead(tuple(msgs), last)  # most turns: text alone, nothing to read
        if self.config.keep_s > 0:
            await asyncio.to_thread(_sweep, self.config.directory, self.config.keep_s)
        reads: list[_Read] = []
        for msg, readable, ref in parts:
            reads.append(await self._one(msg, readable, ref, files, memos))
        messages = tuple(r.message for r in reads)
        last_read = reads[[m.id for m in msgs].index(last.id)]
        replies = [r.reply for r in reads if r.reply is not None]
        # the media decides the reply when nothing else in the turn asks the model
        only_media = len(replies) == len(reads) or (
            last_read.reply is not None and all(r.message.text is None for r in reads)
        )
        return MediaRead(
            messages=messages,
            last=last_read.message,
            images=tuple(r.image for r in reads if r.image is not None),
            reply=last_read.reply if only_media else None,
        )

    async def _one(
        self,
        msg: InboundMessage,
        readable: str | None,
        ref: MediaRef | None,
        files: contextlib.AsyncExitStack,
        memos: TaskMemos | None,
    ) -> _Read:
        if readable is not None:
            return _Read(replace(msg, text=readable))
        if ref is None:
            return _Read(msg)
        if self.fetcher is None:  # no access token: nothing is downloaded
            return _Read(msg)
        if ref.type is MessageType.VIDEO:
            return _Read(msg) if ref.caption else _Read(msg, reply=Reply(VIDEO_REPLY))
        try:
            return await self._download_and_read(msg, ref, files, memos)
        except MediaUnavailable as exc:
            log_event(
                _log,
                "media_unavailable",
                logging.WARNING,
                message_id=msg.id,
                type=ref.type.value,
                reason=exc.reason,
                caption=ref.caption is not None,
            )
            if ref.caption:
                return _Read(msg)
            return _Read(msg, reply=Reply(RESEND_REPLY, event="media_unavailable"))

    async def _download_and_read(
        self,
        msg: InboundMessage,
        ref: MediaRef,
        files: contextlib.AsyncExitStack,
        memos: TaskMemos | None,
    ) -> _Read:
        if meta_failed(msg):
            raise MediaUnavailable("meta_131052")
        if ref.type is MessageType.AUDIO:
            return await self._voice(msg, ref, files, memos)
        if ref.type is MessageType.DOCUMENT:
            return await self._document(msg, ref, files)
        fetched = await self._fetch(ref, files)
        mime = base_mime(fetched.mime_type or ref.mime_type)
        data = await asyncio.to_thread(fetched.path.read_bytes)
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        log_event(_log, "media_read", message_id=msg.id, type=ref.type.value, bytes=fetched.size)
        return _Read(replace(msg, text=ref.caption or IMAGE_WITHOUT_CAPTION), image=url)

    async def _voice(
        self,
        msg: InboundMessage,
        ref: MediaRef,
        files: contextlib.AsyncExitStack,
        memos: TaskMemos | None,
    ) -> _Read:
        marked = replace(msg, raw_type=TRANSCRIPT_TYPE)
        kept = (await memos.get(msg.id)).get(_MEMO_TRANSCRIPT) if memos is not None else None
        if kept is not None:
            log_event(_log, "media_transcript_reused", message_id=msg.id)
            return _Read(replace(marked, text=kept))
        if self.transcriber is None:
            return _Read(msg)
        fetched = await self._fetch(ref, files)
        started = time.perf_counter()
        try:
            transcript = await self.transcriber.transcribe(fetched.path, fetched.mime_type)
        except LLMCallError as exc:
            log_event(
                _log,
                "llm_error",
                logging.WARNING,
                stage=TRANSCRIPTION_STAGE,
                reason=exc.reason,
                message_id=msg.id,
            )
            if exc.service:  # the service is down, as a failed LLM stage: retry, say nothing yet
                raise TransientError(
                    f"llm_unavailable: {TRANSCRIPTION_STAGE}: {exc.reason}"
                ) from exc
            reply = Reply(self.config.safe_reply, errors=(TRANSCRIPTION_STAGE,))
            return _Read(msg, reply=reply)
        log_event(
            _log,
            "media_transcribed",
            message_id=msg.id,
            bytes=fetched.size,
            chars=len(transcript),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if memos is not None:
            await memos.put(msg.id, {_MEMO_TRANSCRIPT: transcript}, self.config.memo_ttl_s)
        text = f"{transcript}\n{ref.caption}" if ref.caption else transcript
        return _Read(replace(marked, text=text))

    async def _document(
        self, msg: InboundMessage, ref: MediaRef, files: contextlib.AsyncExitStack
    ) -> _Read:
        pages = self.config.document_max_pages
        if base_mime(ref.mime_type) != PDF_MIME:
            reply = unreadable_document_reply(ref.filename, max_pages=pages, too_long=False)
            return _Read(msg, reply=Reply(reply, event="document_unreadable"))
        fetched = await self._fetch(ref, files)
        try:
            async with asyncio.timeout(self.config.document_timeout_s):
                text = await asyncio.to_thread(pdf_text, fetched.path, pages)
        except _TooManyPages:
            reply = unreadable_document_reply(ref.filename, max_pages=pages, too_long=True)
            return _Read(msg, reply=Reply(reply, event="document_unreadable"))
        except Exception as exc:
            log_event(
                _log,
                "document_unreadable",
                logging.WARNING,
                message_id=msg.id,
                error=type(exc).__name__,
            )
            reply = unreadable_document_reply(ref.filename, max_pages=pages, too_long=False)
            return _Read(msg, reply=Reply(reply, event="document_unreadable"))
        log_event(_log, "media_read", message_id=msg.id, type="document", chars=len(text))
        name = ref.filename or "document.pdf"
        text = text.strip()
        if len(text) > DOCUMENT_TEXT_MAX_CHARS:  # ten dense pages stay within a prompt's budget
            text = text[:DOCUMENT_TEXT_MAX_CHARS] + " [...]"
        parts = [f"[document {name}]", text or "(no text in the document)"]
        if ref.caption:
            parts.append(ref.caption)
        return _Read(replace(msg, text="\n".join(parts)))

    async def _fetch(self, ref: MediaRef, files: contextlib.AsyncExitStack) -> FetchedMedia:
        if self.fetcher is None or ref.media_id is None:
            raise MediaUnavailable("no_media_id")
        fetched = await self.fetcher.fetch(
            ref.media_id,
            sha256=ref.sha256,
            max_bytes=max_bytes(ref.type, self.config.max_bytes),
            directory=self.config.directory,
        )
        if self.config.keep_s <= 0:
            files.callback(fetched.path.unlink, missing_ok=True)
        return fetched


async def read_media(
    reader: MediaReader | None,
    msgs: Sequence[InboundMessage],
    last: InboundMessage,
    files: contextlib.AsyncExitStack,
    memos: TaskMemos | None = None,
) -> MediaRead:
    """The pipeline's hook: `reader.read(...)`, or the turn as it is when there is no reader."""
    if reader is None:
        return MediaRead(tuple(msgs), last)
    try:
        return await reader.read(msgs, last, files, memos)
    except TransientError:
        raise
    except OSError as exc:  # the data dir cannot hold the download: try again later
        raise TransientError(f"media storage: {type(exc).__name__}") from exc


class _TooManyPages(Exception):
    pass


def pdf_text(path: Path, max_pages: int) -> str:
    """The text of a PDF of at most `max_pages` pages (blocking: run it in a thread)."""
    from pypdf import PdfReader  # imported on first use: most processes never read a PDF

    reader = PdfReader(path)
    if len(reader.pages) > max_pages:
        raise _TooManyPages
    return "\n".join(page.extract_text() or "" for page in reader.pages)


def _sweep(directory: Path, keep_s: float) -> None:
    """Delete downloads older than `keep_s` seconds."""
    if not directory.is_dir():
        return
    cutoff = time.time() - keep_s
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
