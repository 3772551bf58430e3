"""Structured log events on stdlib logging: an event name plus fields, redacted, JSON or console.

    log_event(logger, "webhook_enqueued", count=3)

Event names are stable (users grep for them): webhook_received, webhook_enqueued,
webhook_rejected, task_dequeued, task_processed, task_retried, task_dead_lettered,
duplicate_skipped, llm_error, session_saved, message_sent, message_status, ...
Per-task fields are bound with `bind()` (a contextvar) and added to every event in that task.
Phone numbers are masked to their last four digits and secret-named fields are dropped by a
filter, the last line of defence.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
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
_LONG_DIGITS: Final = re.compile(r"\+?\d{8,}")


def mask_phone(value: str | None) -> str | None:
    """`+5511987654321` -> `***4321`; BSUIDs keep their country prefix: `US.***8`."""
    if not value:
        return value
    if "." in value:
        head, _, tail = value.rpartition(".")
        return f"{head.split('.')[0]}.***{tail[-4:]}"
    return f"***{value[-4:]}"


def _mask_digits(text: str) -> str:
    if len(text) < 8:  # too short to hold a phone number
        return text
    return _LONG_DIGITS.sub(lambda m: f"***{m.group(0)[-4:]}", text)


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


_DROP, _PHONE, _TEXT, _ID = range(4)


@functools.cache
def _field_kind(key: str) -> int:
    """_DROP: secret-named; _PHONE: a phone number (masked); _TEXT: free text (digit runs
    masked); _ID: a wamid, a task id (kept whole, so users can grep for it)."""
    lowered = key.lower()
    if lowered in _SECRET_FIELDS or lowered.endswith(("_token", "_secret", "_key")):
        return _DROP
    if lowered in _PHONE_FIELDS:
        return _PHONE
    return _ID if lowered.endswith("_id") else _TEXT


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The redacted fields of a record: bound context, then the event's own."""
    merged: dict[str, Any] = {**_context.get(), **getattr(record, "fields", {})}
    clean: dict[str, Any] = {}
    for key, value in merged.items():
        kind = _field_kind(key)
        if kind == _DROP:
            continue
        if isinstance(value, str) and kind != _ID:
            value = mask_phone(value) if kind == _PHONE else _mask_digits(value)
        clean[key] = value
    return clean


class RedactingFilter(logging.Filter):
    """Attaches the redacted fields to each record (`record.pyloto_fields`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.pyloto_fields = event_fields(record)
        if record.args:
            record.msg = _mask_digits(record.getMessage())
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
            payload["exc"] = _mask_digits(self.formatException(record.exc_info))
        return self._encoder.encode(payload)


class ConsoleFormatter(logging.Formatter):
    """`12:00:00 info  webhook_enqueued count=3` for people."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "pyloto_fields", {}).items())
        line = f"{stamp} {record.levelname.lower():<7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + _mask_digits(self.formatException(record.exc_info))
        return line


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    """Configure the `pyloto` logger once, from the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
