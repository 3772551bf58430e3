"""The offline Sender: logs and records the exact bodies it would have sent, sends nothing.

The default sender (no Graph token needed), the unit tests' fake, and the source of `replay`:
`records` keeps the last `keep` bodies in order (a long-running `serve` on the defaults must
not grow without bound); wamids are `wamid.dryrun.<n>`, counted from 1. An upload reads
nothing: it records the file's name, type and size in `uploads` and answers a numeric media id
(`DRY_RUN_MEDIA_ID_BASE + n`), so the message that follows passes the same id checks.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pyloto_cli.domain.outbound import mark_read_body
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import SendResult

# the reply's words in `message_sent`: enough to see what was answered, not a whole essay
LOGGED_TEXT_MAX = 200
DRY_RUN_MEDIA_ID_BASE = 900_000_000_000_000


def reply_text(body: JsonObject) -> str | None:
    """The words of a Graph message body (a text's body, an interactive message's body text),
    cut to `LOGGED_TEXT_MAX` characters; None for a body without any."""
    kind = body.get("type")
    part = body.get(kind) if isinstance(kind, str) else None
    text = part.get("body") if isinstance(part, dict) else None
    if isinstance(text, dict):  # interactive: {"body": {"text": ...}}
        text = text.get("text")
    if not isinstance(text, str):
        return None
    if len(text) <= LOGGED_TEXT_MAX:
        return text
    return text[: LOGGED_TEXT_MAX - 1] + "…"


@dataclass(frozen=True, slots=True)
class DryRunRecord:
    """One body the dry-run sender would have posted; `message_id` is None for read receipts."""

    phone_number_id: str
    body: JsonObject
    message_id: str | None


@dataclass(frozen=True, slots=True)
class DryRunUpload:
    """One file the dry-run sender would have uploaded."""

    phone_number_id: str
    filename: str
    mime_type: str
    size: int
    media_id: str


class DryRunSender:
    """A `Sender` that records instead of sending; deterministic wamids."""

    def __init__(self, logger: logging.Logger | None = None, *, keep: int = 1000) -> None:
        self.records: deque[DryRunRecord] = deque(maxlen=keep)
        self.uploads: deque[DryRunUpload] = deque(maxlen=keep)
        self._count = 0
        self._uploaded = 0
        self._log = logger or get_logger("sender.dry_run")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @property
    def bodies(self) -> list[JsonObject]:
        """The message bodies (read receipts excluded), in the order they were sent."""
        return [r.body for r in self.records if r.message_id is not None]

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        """Record `body` and answer like Graph would, with the next fake wamid."""
        self._count += 1
        message_id = f"wamid.dryrun.{self._count}"
        self.records.append(DryRunRecord(phone_number_id, copy.deepcopy(body), message_id))
        peer = body.get("to") or body.get("recipient")
        log_event(
            self._log,
            "message_sent",
            phone_number_id=phone_number_id,
            to=str(peer) if peer else None,
            type=body.get("type"),
            text=reply_text(body),
            sent_message_id=message_id,
            dry_run=True,
        )
        contact = {"input": peer, "wa_id": str(peer or "").lstrip("+")}
        raw: JsonObject = {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [{"id": message_id}],
        }
        return SendResult(message_id=message_id, raw=raw)

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        """Record the mark-as-read body (with the typing indicator when `typing`)."""
        body = mark_read_body(message_id, typing=typing)
        self.records.append(DryRunRecord(phone_number_id, body, None))
        log_event(self._log, "message_marked_read", logging.DEBUG, typing=typing, dry_run=True)

    async def upload_media(self, phone_number_id: str, path: Path, mime_type: str) -> str:
        """Record the upload (the file is not read) and answer the next fake media id."""
        # a missing file fails here as it would for real
        size = (await asyncio.to_thread(path.stat)).st_size
        self._uploaded += 1
        media_id = str(DRY_RUN_MEDIA_ID_BASE + self._uploaded)
        self.uploads.append(DryRunUpload(phone_number_id, path.name, mime_type, size, media_id))
        log_event(
            self._log,
            "media_uploaded",
            phone_number_id=phone_number_id,
            type=mime_type,
            bytes=size,
            media_id=media_id,
            dry_run=True,
        )
        return media_id
