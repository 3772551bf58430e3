"""`pyloto replay`: recorded webhooks through the whole pipeline, offline, with a transcript.

Inputs, in the order given (directories expand to their `.json`, `.jsonl` and `.ndjson` files
sorted by path):

- a `.json` file is one webhook body, exactly as Meta posts it;
- a `.jsonl`/`.ndjson` file holds recorded requests, one per line: either a webhook body, or
  an object with a `body` field holding the body (as an object, or as the raw request text);
  other fields of such a line (headers, received_at...) are ignored.

Every request is split into tasks (`split_webhook`) and each task runs through a `Pipeline`
on the runtime's ports, one after another, so the order is the input's. The runtime is opened
once for the whole replay with memory queue, sessions and dedupe, no Graph token (so the
dry-run sender) and, unless `live_llm`, the offline responder: sessions carry from one file to
the next, and a recorded conversation replays as one. Read receipts are off.

The 24-hour window and the stale limit are judged as in production, against the wall clock
(`ReplayClock.WALL`): an old recording's messages are stored and skipped as `message_stale`.
`ReplayClock.RECORDED` judges every message against the newest timestamp in the whole input,
so a recording replays as it happened (the golden transcripts are replayed so).

Each task yields one transcript item (`pyloto_cli.tools.transcript`): `source`, `task_id`,
`kind`, then per kind `message` {id, type, from (masked), text, needs_reply}, `status` {id,
status, error_code} or `field`/`reason` (other events); then `outcome` (done, skipped, retry,
dead; `rejected` for a request that is not a webhook body), `reason`, `event`, `reply` {text,
message_type, overridden, fallbacks}, `sent` [{phone_number_id, type, body, message_id}] with
the Graph bodies as sent but for the recipient, masked like `from` (a transcript is printed,
pasted and committed as a golden: it carries no phone number), and `timings_ms` (split, the LLM
stages, respond, send, total). Ids stay whole.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from pyloto_cli.domain.errors import MalformedPayload
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.task import JsonObject, Task, TaskKind
from pyloto_cli.domain.webhook import (
    event_reason,
    inbound_message,
    needs_reply,
    split_webhook,
    status_update,
)
from pyloto_cli.domain.webhook_content import int_of, obj_of, objs_of
from pyloto_cli.logs import get_logger, log_event, mask_phone, mask_phone_fields
from pyloto_cli.pipeline.process import Outcome, Pipeline, TaskResult
from pyloto_cli.ports import Responder, ResponderRequest, Sender, SendResult
from pyloto_cli.settings import QueueBackend, Settings, StoreBackend
from pyloto_cli.tools import RolesOpener, StoreSet, ToolUsageError
from pyloto_cli.tools.enqueue import parse_body
from pyloto_cli.tools.sources import Source
from pyloto_cli.tools.transcript import (
    check_writable,
    diff_transcripts,
    read_transcript,
    write_transcript,
)

_log = get_logger("tools.replay")

REPLAY_SUFFIXES: Final = (".json", ".jsonl", ".ndjson")
LINE_SUFFIXES: Final = frozenset({".jsonl", ".ndjson"})
FAILED_OUTCOMES: Final = frozenset({"rejected", Outcome.RETRY.value, Outcome.DEAD.value})


class ReplayClock(StrEnum):
    """What "now" is while replaying (the stale limit and the 24-hour window are judged on it)."""

    WALL = "wall"  # the wall clock, as in production
    RECORDED = "recorded"  # the newest message timestamp in the input


def newest_timestamp(requests: Iterable[Request]) -> float | None:
    """The newest `messages[].timestamp` in the requests' bodies (None when there is none)."""
    stamps = [
        stamp
        for request in requests
        if isinstance(request.body, dict)
        for entry in objs_of(request.body, "entry")
        for change in objs_of(entry, "changes")
        for message in objs_of(obj_of(change, "value"), "messages")
        if (stamp := int_of(message.get("timestamp"))) is not None and stamp > 0
    ]
    return float(max(stamps)) if stamps else None


def replay_settings(settings: Settings, *, live_llm: bool = False) -> Settings:
    """`settings` for a replay: memory backends, dry-run sender, offline LLM unless `live_llm`."""
    if live_llm and settings.openai_api_key is None:
        raise ToolUsageError("--live-llm needs OPENAI_API_KEY")
    update: dict[str, Any] = {
        "queue_backend": QueueBackend.MEMORY,
        "session_store_backend": StoreBackend.MEMORY,
        "dedupe_backend": StoreBackend.MEMORY,
        "whatsapp_access_token": None,
        "mark_read": False,
        "typing_indicator": False,
        "openai_enabled": live_llm,
    }
    if not live_llm:
        update["openai_api_key"] = None
    return settings.model_copy(update=update)


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One webhook request to replay: its parsed body, or why it cannot be one."""

    name: str
    body: Any = None
    error: str | None = None


def _line_request(name: str, line: str) -> Request:
    try:
        value = json.loads(line)
        if isinstance(value, dict) and "body" in value and "entry" not in value:
            value = value["body"]
            if isinstance(value, str):
                value = json.loads(value)
    except ValueError as exc:
        return Request(name, error=f"not JSON: {exc}")
    return Request(name, body=value)


def requests_of(source: Source) -> list[Request]:
    """The requests a source holds: one body, or one per non-blank line of a JSON-lines file."""
    try:
        raw = source.read()
    except OSError as exc:
        return [Request(source.name, error=f"cannot read: {exc.strerror or exc}")]
    if source.path is None or source.path.suffix.lower() not in LINE_SUFFIXES:
        try:
            return [Request(source.name, body=parse_body(raw))]
        except MalformedPayload as exc:
            return [Request(source.name, error=str(exc))]
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        return [Request(source.name, error=f"not UTF-8: {exc}")]
    return [
        _line_request(f"{source.name}:{number}", line)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


# --- probes around the responder and the sender ---------------------------------------------


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 3)


@dataclass(slots=True)
class _Probe:
    """What the current task sent, and how long the responder and the sender took."""

    sent: list[JsonObject] = field(default_factory=list)
    respond_ms: float = 0.0
    send_ms: float = 0.0

    def reset(self) -> None:
        """Start a new task."""
        self.sent = []
        self.respond_ms = self.send_ms = 0.0


class _TimedResponder:
    def __init__(self, inner: Responder, probe: _Probe) -> None:
        self._inner, self._probe = inner, probe

    async def respond(self, request: ResponderRequest) -> Reply:
        started = time.perf_counter()
        try:
            return await self._inner.respond(request)
        finally:
            self._probe.respond_ms += _ms(started)


class _RecordingSender:
    def __init__(self, inner: Sender, probe: _Probe) -> None:
        self._inner, self._probe = inner, probe

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        started = time.perf_counter()
        try:
            result = await self._inner.send(phone_number_id, body)
        finally:
            self._probe.send_ms += _ms(started)
        self._probe.sent.append(
            {
                "phone_number_id": phone_number_id,
                "type": body.get("type"),
                "body": mask_phone_fields(body),  # a copy, the recipient masked
                "message_id": result.message_id,
            }
        )
        return result

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        await self._inner.mark_read(phone_number_id, message_id, typing)

    async def upload_media(self, phone_number_id: str, path: Path, mime_type: str) -> str:
        return await self._inner.upload_media(phone_number_id, path, mime_type)


# --- one task -------------------------------------------------------------------------------


def describe_task(task: Task) -> JsonObject:
    """What the pipeline parsed from a task, for the transcript (sender masked)."""
    if task.kind is TaskKind.MESSAGE:
        msg = inbound_message(task)
        sender = mask_phone(msg.wa_id or msg.user_id)
        return {
            "message": {
                "id": msg.id,
                "type": msg.raw_type,
                "from": sender,
                "text": msg.text,
                "needs_reply": needs_reply(msg),
            }
        }
    if task.kind is TaskKind.STATUS:
        update = status_update(task)
        code = update.errors[0].code if update.errors else None
        return {"status": {"id": update.id, "status": update.raw_status, "error_code": code}}
    return {"field": task.field, "reason": event_reason(task)}


def _reply_json(reply: Reply) -> JsonObject:
    return {
        "text": reply.text,
        "message_type": reply.kind.value,
        "overridden": reply.overridden,
        "fallbacks": list(reply.errors),
    }


class Replayer:
    """Runs requests through a copy of `pipeline` on `stores`, recording each task."""

    def __init__(
        self, pipeline: Pipeline, stores: StoreSet, clock: Callable[[], float] = time.time
    ) -> None:
        self._probe = _Probe()
        self.pipeline = Pipeline(
            sessions=stores.sessions,
            deduper=stores.deduper,
            responder=_TimedResponder(pipeline.responder, self._probe),
            sender=_RecordingSender(pipeline.sender, self._probe),
            statuses=stores.statuses,
            config=pipeline.config,
            clock=clock,
        )

    async def replay(self, request: Request) -> list[JsonObject]:
        """The transcript items of one request (one `rejected` item when it is no webhook)."""
        if request.error is not None:
            return [_rejected(request.name, request.error)]
        started = time.perf_counter()
        try:
            tasks = split_webhook(request.body, time.time())
        except MalformedPayload as exc:
            return [_rejected(request.name, str(exc))]
        split_ms = _ms(started)
        return [await self._task(request.name, task, split_ms) for task in tasks]

    async def _task(self, name: str, task: Task, split_ms: float) -> JsonObject:
        probe = self._probe
        probe.reset()
        started = time.perf_counter()
        details: JsonObject = {}
        try:
            details = describe_task(task)
            result = await self.pipeline.process(task)
        except Exception as exc:  # as in the worker: a bug fails this item, not the replay
            result = TaskResult(Outcome.RETRY, reason=f"{type(exc).__name__}: {exc}")
        item: JsonObject = {"source": name, "task_id": task.task_id, "kind": task.kind.value}
        item.update(details)
        item["outcome"] = result.outcome.value
        if result.reason is not None:
            item["reason"] = result.reason
        if result.reply is not None:
            item["event"] = result.reply.event
            item["reply"] = _reply_json(result.reply)
        item["sent"] = list(probe.sent)
        stages = result.reply.timings_ms if result.reply is not None else {}
        item["timings_ms"] = {
            "split": split_ms,
            **{f"llm_{stage}": ms for stage, ms in stages.items()},
            "respond": round(probe.respond_ms, 3),
            "send": round(probe.send_ms, 3),
            "total": _ms(started),
        }
        return item


def _rejected(name: str, reason: str) -> JsonObject:
    return {"source": name, "kind": "request", "outcome": "rejected", "reason": reason}


# --- the whole replay -----------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    """Every transcript item in order, and the diff against `--expect` (None when not asked)."""

    items: list[JsonObject] = field(default_factory=list)
    diff: str | None = None
    recorded: Path | None = None

    @property
    def failures(self) -> list[JsonObject]:
        """Items that were rejected, left for a retry or dead-lettered."""
        return [i for i in self.items if i.get("outcome") in FAILED_OUTCOMES]

    @property
    def ok(self) -> bool:
        """No failed item and no difference from the expected transcript."""
        return not self.failures and not self.diff

    def to_json(self) -> JsonObject:
        """The report as one JSON object (`--json`)."""
        return {
            "items": self.items,
            "failed": len(self.failures),
            "recorded": str(self.recorded) if self.recorded else None,
            "matched": None if self.diff is None else not self.diff,
            "diff": self.diff,
        }


async def run_replay(
    settings: Settings,
    open_roles: RolesOpener,
    sources: Sequence[Source],
    *,
    live_llm: bool = False,
    record: Path | None = None,
    expect: Path | None = None,
    on_item: Callable[[JsonObject], None] | None = None,
    now: ReplayClock = ReplayClock.WALL,
) -> ReplayReport:
    """Replay `sources` in order on one offline runtime; record and/or compare the transcript.

    `now` says what the stale limit and the window are judged against (`ReplayClock`)."""
    expected = _expected(expect)
    if record is not None:  # before the replay, not after it: a long run is not thrown away
        check_writable(record)
    report = ReplayReport()
    requests = [request for source in sources for request in requests_of(source)]
    recorded = newest_timestamp(requests) if now is ReplayClock.RECORDED else None
    clock = time.time if recorded is None else (lambda: recorded)
    async with open_roles(replay_settings(settings, live_llm=live_llm)) as roles:
        replayer = Replayer(await roles.pipeline(), await roles.stores(), clock)
        for request in requests:
            for item in await replayer.replay(request):
                report.items.append(item)
                if on_item is not None:
                    on_item(item)
    if record is not None:
        write_transcript(record, report.items)
        report.recorded = record
    if expect is not None and expected is not None:
        report.diff = diff_transcripts(expected, report.items, expected_name=str(expect))
    log_event(_log, "replay_finished", items=len(report.items), failed=len(report.failures))
    return report


def _expected(expect: Path | None) -> list[JsonObject] | None:
    if expect is None:
        return None
    try:
        return read_transcript(expect)
    except OSError as exc:
        raise ToolUsageError(f"cannot read --expect {expect}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ToolUsageError(f"--expect {expect} is not a transcript: {exc}") from exc
