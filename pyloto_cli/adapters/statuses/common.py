"""What every status store does the same way: the `message_status` log event."""

from __future__ import annotations

import logging

from pyloto_cli.domain.task import JsonObject
from pyloto_cli.logs import log_event
from pyloto_cli.ports import DeliveryStatus


def log_status(logger: logging.Logger, status: DeliveryStatus) -> None:
    """Log a newly recorded status (failures at WARNING, with Meta's code)."""
    failed = status.status == "failed"
    log_event(
        logger,
        "message_status",
        logging.WARNING if failed else logging.INFO,
        sent_message_id=status.message_id,
        status=status.status,
        recipient=status.recipient,
        error_code=status.error_code,
        error_title=status.error_title,
    )


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def delivery_status(item: JsonObject, phone_number_id: str = "") -> DeliveryStatus:
    """A webhook `statuses[]` item as a DeliveryStatus (first error's code and title kept)."""
    errors = item.get("errors")
    first: JsonObject = errors[0] if isinstance(errors, list) and errors else {}
    recipient = item.get("recipient_id") or item.get("recipient_user_id")
    callback = item.get("biz_opaque_callback_data")
    return DeliveryStatus(
        message_id=str(item.get("id", "")),
        status=str(item.get("status", "")),
        timestamp=_int(item.get("timestamp", 0)) or 0,
        phone_number_id=phone_number_id,
        recipient=str(recipient) if recipient else None,
        error_code=_int(first["code"]) if "code" in first else None,
        error_title=str(first.get("title") or first.get("message") or "") or None,
        callback_data=str(callback) if callback else None,
    )
