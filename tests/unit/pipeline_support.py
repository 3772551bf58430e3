"""What the pipeline tests share: a recording sender, a counting responder, webhook builders."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyloto_cli.adapters.dedupe.memory import MemoryDeduper
from pyloto_cli.adapters.llm.offline import OfflineResponder
from pyloto_cli.domain.errors import TransientError
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.ports import ResponderRequest, SendResult

PNID = "900000000000002"


@dataclass
class RecordingSender:
    """A Sender that records bodies and can fail on demand."""

    fail_with: Callable[[int], Exception | None] = lambda n: None
    sent: list[tuple[str, JsonObject]] = field(default_factory=list)
    calls: int = 0

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        self.calls += 1
        error = self.fail_with(self.calls)
        if error is not None:
            raise error
        self.sent.append((phone_number_id, body))
        return SendResult(message_id=f"wamid.out.{len(self.sent)}")

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        return None

    async def upload_media(self, phone_number_id: str, path: Path, mime_type: str) -> str:
        raise AssertionError("this test uploads no media")

    def callbacks(self) -> list[str]:
        """The inbound wamid each reply answered, in send order."""
        return [body["biz_opaque_callback_data"] for _, body in self.sent]


def message(wamid: str, text: str, *, sender: str = "15550001234", **extra: Any) -> JsonObject:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": str(int(time.time())),  # a fresh message: inside its retry horizon
        "type": "text",
        "text": {"body": text},
        **extra,
    }


def webhook(
    messages: Sequence[JsonObject] = (),
    *,
    pnid: str = PNID,
    statuses: Sequence[JsonObject] = (),
    contacts: Sequence[JsonObject] | None = None,
) -> JsonObject:
    value: JsonObject = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid},
    }
    if messages:
        value["contacts"] = (
            list(contacts)
            if contacts is not None
            else [{"profile": {"name": "Ana"}, "wa_id": "15550001234"}]
        )
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "900000000000001", "changes": [{"field": "messages", "value": value}]}],
    }


class FlakyDeduper(MemoryDeduper):
    """Fails the first mark_done: a crash between the session save and the done markers."""

    failed = False

    async def mark_done(self, key: str, ttl_s: float) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("crash after save, before done")
        await super().mark_done(key, ttl_s)


@dataclass
class CountingResponder:
    """The offline responder, or a fixed text, counting the calls (what the LLM would cost);
    `fail_first` raises that many transient LLM failures first."""

    text: str | None = None
    fail_first: int = 0
    calls: int = 0
    inner: OfflineResponder = field(default_factory=OfflineResponder)

    async def respond(self, request: ResponderRequest) -> Reply:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise TransientError("llm_unavailable: http_500")
        if self.text is not None:
            return Reply(text=self.text)
        return await self.inner.respond(request)
