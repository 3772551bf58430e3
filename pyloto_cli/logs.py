"""Structured log events on stdlib logging: an event name plus fields, redacted, JSON or console.

    log_event(logger, "webhook_enqueued", count=3)

Event names are stable (users grep for them): webhook_received, webhook_enqueued,
webhook_rejected, task_dequeued, task_processed, task_retried, task_dead_lettered,
duplicate_skipped, llm_error, session_saved, message_sent, message_status, ...
Per-task fields are bound with `bind()` (a contextvar) and added to every event in that task.
A filter, the last line of defence, masks phone numbers to their last four digits, drops
secret-named fields and logs message and task ids as `log_id(id)`, the first 12 hex digits of
their SHA-256: Meta's wamids are base64 that decodes to the sender's number, so a whole wamid
in a log line is a phone number in the clear. The hash is stable, so every line of one message
still shares it (`pyloto queue dead-letter list` and `pyloto replay` print it next to the id).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

LOGGER_NAME: Final = "pyloto"

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "pyloto_log_context", default=_EMPTY
)
_PHONE_FIELDS: Final = frozenset(
    {
        "wa_id",
        "from",
        "to",
        "phone",
        "recipient_id",
        "display_phone_number",
        "user_id",
        "from_user_id",
        "parent_user_id",
        "recipient_user_id",
        "recipient",
    }
)
_SECRET_FIELDS: Final = frozenset(
    {"token", "access_token", "app_secret", "secret", "signature", "authorization", "api_key"}
)
# fields that carry a wamid or a task id (a wamid, `wamid:status` or an event hash)
_MESSAGE_ID_FIELDS: Final = frozenset(
    {"task_id", "wamid", "context_id", "callback_data", "biz_opaque_callback_data", "status_id"}
)
_LONG_DIGITS: Final = re.compile(r"\+?\d{8,}")
# a wamid inside free text (an error message, a traceback): base64, dots and dashes
_WAMID: Final = re.compile(r"wamid\.[A-Za-z0-9+/=_.\-]*[A-Za-z0-9+/=_\-]")
# a status task id is `<wamid>:<status>`: the status stays readable, the wamid is hashed alone
_STATUS_SUFFIX: Final = re.compile(r":[a-z_]{1,32}$")
LOG_ID_CHARS: Final = 12
# libraries that log a server's failures on loggers of their own (see `configure_logging`)
SERVER_LOGGERS: Final = ("uvicorn", "asyncio")


def mask_phone(value: str | None) -> str | None:
    """`+5511987654321` -> `***4321`; BSUIDs keep their country prefix: `US.***8`."""
    if not value:
        return value
    if "." in value:
        head, _, tail = value.rpartition(".")
        return f"{head.split('.')[0]}.***{tail[-4:]}"
    return f"***{value[-4:]}"


@functools.lru_cache(maxsize=4096)  # one task logs its ids several times
def log_id(value: str) -> str:
    """How a message or task id appears in logs: the first 12 hex digits of its SHA-256.

    `wamid.HBgL...` -> `3f9a0c1b2d4e`; a status task id keeps its status:
    `wamid.HBgL...:delivered` -> `3f9a0c1b2d4e:delivered`, so it matches the sent message's
    `sent_message_id`. By hand: `printf %s ID | sha256sum | cut -c1-12` (README, Logs).
    """
    suffix = _STATUS_SUFFIX.search(value)
    head, tail = (value[: suffix.start()], suffix.group(0)) if suffix else (value, "")
    digest = hashlib.sha256(head.encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:LOG_ID_CHARS] + tail


def mask_digits(text: str, *, wamids: bool = True) -> str:
    """`text` with every run of 8+ digits (a phone number) cut to its last four, and (unless
    not `wamids`, for operator commands that show ids whole) every wamid as `wamid#<log_id>`."""
    if wamids and "wamid." in text:
        text = _WAMID.sub(lambda m: f"wamid#{log_id(m.group(0))}", text)
    if len(text) < 8:  # too short to hold a phone number
        return text
    return _LONG_DIGITS.sub(lambda m: f"***{m.group(0)[-4:]}", text)


def mask_phone_fields(value: Any) -> Any:
    """A copy of a stored item (JSON) with every phone-named field masked, at any depth, and
    everything else (ids included) as it was: what operator commands print."""
    if isinstance(value, dict):
        return {
            key: mask_phone(item)
            if isinstance(item, str) and _field_kind(str(key)) == _PHONE
            else mask_phone_fields(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_phone_fields(item) for item in value]
    return value


def get_logger(name: str = "") -> logging.Logger:
    """A child of the `pyloto` logger."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with `fields` (plus the bound task context).

    The record is made directly, without `Logger.log`'s caller lookup (a walk up the stack per
    event): the events carry their own names, so file and line are not recorded.
    """
    if logger.isEnabledFor(level):
        record = logger.makeRecord(
            logger.name, level, "(unknown file)", 0, event, (), None, extra={"fields": fields}
        )
        logger.handle(record)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add `fields` to every event logged in this context (task_id, message_id, attempt)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


_DROP, _PHONE, _TEXT, _ID, _MESSAGE_ID = range(5)


@functools.cache
def _field_kind(key: str) -> int:
    """_DROP: secret-named; _PHONE: a phone number (masked); _MESSAGE_ID: a wamid or task id
    (hashed, `log_id`); _ID: another id (kept whole: a phone number id, a trace id); _TEXT:
    free text (digit runs masked, wamids hashed)."""
    lowered = key.lower()
    if lowered in _SECRET_FIELDS or lowered.endswith(("_token", "_secret", "_key")):
        return _DROP
    if lowered in _PHONE_FIELDS:
        return _PHONE
    if lowered in _MESSAGE_ID_FIELDS or lowered.endswith(("message_id", "wamid")):
        return _MESSAGE_ID
    return _ID if lowered.endswith("_id") else _TEXT


def _clean(kind: int, value: Any) -> Any:
    """`value` of a field of `kind`, redacted (lists and nested objects too)."""
    if isinstance(value, str):
        if kind == _MESSAGE_ID:
            return log_id(value)
        if kind == _PHONE:
            return mask_phone(value)
        if kind == _ID:  # kept whole, unless it holds a wamid after all
            return mask_digits(value) if "wamid." in value else value
        return mask_digits(value)
    if isinstance(value, list | tuple):
        return [_clean(kind, item) for item in value]
    if isinstance(value, dict):
        return redact(value)
    return value


def redact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` as logs show them: secret-named keys dropped, phone numbers masked, message and
    task ids hashed, digit runs and wamids in free text masked; nested objects alike."""
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        kind = _field_kind(str(key))
        if kind != _DROP:
            clean[key] = _clean(kind, value)
    return clean


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The redacted fields of a record: bound context, then the event's own."""
    return redact({**_context.get(), **getattr(record, "fields", {})})


class RedactingFilter(logging.Filter):
    """Attaches the redacted fields to each record (`record.pyloto_fields`); masks the message
    of a record with arguments, or from another library's logger (a sentence, not an event)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.pyloto_fields = event_fields(record)
        if record.args or not str(record.name).startswith(LOGGER_NAME):
            record.msg = mask_digits(record.getMessage())
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, logger, fields."""

    def __init__(self) -> None:
        super().__init__()
        # made once: `json.dumps` with options builds a new encoder for every line
        self._encoder = json.JSONEncoder(ensure_ascii=False, default=str)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
            **getattr(record, "pyloto_fields", {}),
        }
        if record.exc_info:
            payload["exc"] = mask_digits(self.formatException(record.exc_info))
        return self._encoder.encode(payload)


class ConsoleFormatter(logging.Formatter):
    """`12:00:00 info  webhook_enqueued count=3` for people."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "pyloto_fields", {}).items())
        line = f"{stamp} {record.levelname.lower():<7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + mask_digits(self.formatException(record.exc_info))
        return line


def configure_logging(fmt: str = "console", level: str = "INFO", *, server: bool = False) -> None:
    """Configure the `pyloto` logger once, from the CLI.

    With `server` (`pyloto serve`, `pyloto worker`), the loggers through which uvicorn and
    asyncio report a failure (a traceback, the repr of a task and its exception) write through
    the same handler, so their lines are redacted too and in the same format.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    if server:
        for name in SERVER_LOGGERS:
            library = logging.getLogger(name)
            library.handlers[:] = [handler]
            library.propagate = False
