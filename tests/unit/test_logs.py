"""Structured log events: stable names, bound task context, masked phones, no secrets."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from pyloto_cli.logs import (
    LOGGER_NAME,
    SERVER_LOGGERS,
    ConsoleFormatter,
    JsonFormatter,
    RedactingFilter,
    bind,
    configure_logging,
    get_logger,
    log_event,
    log_id,
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
    assert (first["task_id"], first["attempt"], first["outcome"]) == (log_id("wamid.T1"), 2, "done")
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


WAMID = "wamid.HBgLMTU1NTAwMDEyMzQVAgASGBQzQTdCQ0Q3RjFGNjU4RUFFRDY3RQA="  # decodes to a number


def test_a_wamid_decodes_to_the_senders_number() -> None:
    """Why wamids are hashed: the base64 after `wamid.` holds the sender's phone number."""
    assert b"15550001234" in base64.b64decode(WAMID.removeprefix("wamid."))


def test_message_and_task_ids_are_logged_as_a_stable_short_hash(captured: io.StringIO) -> None:
    """Every field that carries a wamid shows the first 12 hex of its SHA-256, the same on
    every line, so an operator can still follow one message."""
    expected = hashlib.sha256(WAMID.encode()).hexdigest()[:12]
    log = get_logger("test")
    with bind(task_id=WAMID):
        log_event(log, "task_processed", message_id=WAMID, sent_message_id=WAMID)
    log_event(log, "message_status", wamid=WAMID, context_id=WAMID, inbound_message_id=WAMID)
    first, second = events(captured)
    assert log_id(WAMID) == expected
    assert {first[k] for k in ("task_id", "message_id", "sent_message_id")} == {expected}
    assert {second[k] for k in ("wamid", "context_id", "inbound_message_id")} == {expected}
    assert WAMID not in captured.getvalue()


def test_a_status_task_id_keeps_its_status_and_matches_the_sent_message() -> None:
    """`<wamid>:<status>` hashes the wamid alone: it greps like the `sent_message_id`."""
    assert log_id(f"{WAMID}:delivered") == f"{log_id(WAMID)}:delivered"
    event_id = "evt:" + "ab" * 32  # an event's content hash: hashed whole
    assert len(log_id(event_id)) == 12


def test_wamids_in_free_text_tracebacks_and_nested_fields_are_hashed(
    captured: io.StringIO,
) -> None:
    """A wamid in an error message, a nested object or a traceback is hashed too; other ids
    (a phone number id) stay whole."""
    log = get_logger("test")
    log_event(
        log,
        "task_retried",
        reason=f"KeyError: {WAMID!r} not found.",
        phone_number_id="200000000000001",
        details={"message_id": WAMID, "to": "+15550001234"},
        ids=[WAMID],
    )
    try:
        raise LookupError(f"no session for {WAMID}")
    except LookupError:
        log.exception("task_failed")
    retried, failed = events(captured)
    text = captured.getvalue()
    assert WAMID not in text
    assert "15550001234" not in text
    assert f"wamid#{log_id(WAMID)}" in str(retried["reason"])
    assert retried["phone_number_id"] == "200000000000001"
    assert retried["details"] == {"message_id": log_id(WAMID), "to": "***1234"}
    assert f"wamid#{log_id(WAMID)}" in str(failed["exc"])


def test_an_unencodable_id_is_still_logged() -> None:
    """A lone surrogate in an id (hostile input) hashes instead of failing the log call."""
    assert len(log_id("wamid.\ud800")) == 12


@pytest.fixture
def server_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """`configure_logging(server=True)` writing into a buffer; every logger it set restored."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    names = (LOGGER_NAME, *SERVER_LOGGERS)
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    level = logging.getLogger(LOGGER_NAME).level
    try:
        configure_logging("json", "INFO", server=True)
        yield stream
    finally:
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
        logging.getLogger(LOGGER_NAME).setLevel(level)


def test_uvicorn_and_asyncio_failures_are_redacted_too(server_logging: io.StringIO) -> None:
    """A traceback uvicorn logs for the app, or asyncio's report of a failed task, goes
    through the same redaction: no wamid, no phone number."""
    try:
        raise KeyError(f"{WAMID} from 15550001234")
    except KeyError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    logging.getLogger("asyncio").error(f"Task exception was never retrieved: {WAMID!r}")
    lines = [json.loads(line) for line in server_logging.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["uvicorn.error", "asyncio"]
    text = server_logging.getvalue()
    assert WAMID not in text
    assert "15550001234" not in text
    assert f"wamid#{log_id(WAMID)}" in str(lines[0]["exc"])
    assert f"wamid#{log_id(WAMID)}" in str(lines[1]["event"])
