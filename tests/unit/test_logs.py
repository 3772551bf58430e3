"""Structured log events: stable names, bound task context, masked phones, no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pyloto_cli.logs import (
    LOGGER_NAME,
    ConsoleFormatter,
    JsonFormatter,
    RedactingFilter,
    bind,
    get_logger,
    log_event,
    mask_phone,
)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The pyloto logger writing JSON lines into a buffer; restored afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger(LOGGER_NAME)
    saved = (root.handlers[:], root.level, root.propagate)
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    root.propagate = False
    try:
        yield stream
    finally:
        root.handlers[:], root.level, root.propagate = saved


def events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_phone_numbers_are_masked_to_their_last_four_digits() -> None:
    """A phone keeps only its last four digits; a BSUID keeps its country prefix."""
    assert mask_phone("+5511987654321") == "***4321"
    assert mask_phone("US.13491208655302741918") == "US.***1918"
    assert mask_phone(None) is None
    assert mask_phone("") == ""


def test_event_carries_name_fields_and_bound_context(captured: io.StringIO) -> None:
    """The message is the event name; bound task fields ride along on every event."""
    log = get_logger("test")
    with bind(task_id="wamid.T1", attempt=2):
        log_event(log, "task_processed", outcome="done", duration_ms=1.5)
    log_event(log, "webhook_enqueued", enqueued=3)
    first, second = events(captured)
    assert first["event"] == "task_processed"
    assert (first["task_id"], first["attempt"], first["outcome"]) == ("wamid.T1", 2, "done")
    assert second["event"] == "webhook_enqueued"
    assert "task_id" not in second


def test_phone_fields_and_stray_digits_are_masked(captured: io.StringIO) -> None:
    """Phone-named fields are masked, and long digit runs in any string field too."""
    log_event(
        get_logger("test"),
        "message_sent",
        to="+15550001234",
        wa_id="15550001234",
        reason="could not deliver to 15550001234",
    )
    [event] = events(captured)
    assert event["to"] == "***1234"
    assert event["wa_id"] == "***1234"
    assert "15550001234" not in json.dumps(event)


def test_secret_fields_are_dropped(captured: io.StringIO) -> None:
    """Tokens, secrets, signatures and keys never reach the output."""
    log_event(
        get_logger("test"),
        "graph_auth_error",
        access_token="EAAsecret",
        app_secret="s3cret",
        signature="sha256=abc",
        openai_api_key="sk-secret",
        code=190,
    )
    [event] = events(captured)
    assert event["code"] == 190
    text = json.dumps(event)
    for secret in ("EAAsecret", "s3cret", "sha256=abc", "sk-secret"):
        assert secret not in text


def test_console_format_is_one_readable_line() -> None:
    """The console renderer prints time, level, event and key=value fields."""
    record = logging.makeLogRecord(
        {"msg": "task_retried", "levelname": "INFO", "fields": {"delay_s": 2.0}}
    )
    RedactingFilter().filter(record)
    line = ConsoleFormatter().format(record)
    assert "task_retried" in line
    assert "delay_s=2.0" in line
    assert "\n" not in line


def test_message_and_task_ids_are_kept_whole(captured: io.StringIO) -> None:
    """A wamid with a long digit run is an id, not a phone: it stays greppable."""
    wamid = "wamid.example.47e93c7ee0123456789"
    log_event(get_logger("test"), "task_processed", task_id=wamid, message_id=wamid)
    [event] = events(captured)
    assert event["task_id"] == wamid
    assert event["message_id"] == wamid
