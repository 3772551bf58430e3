"""The ids pyloto puts into Graph API requests, checked before any request is built.

The payload names them and anyone who can sign a body shapes them: `phone_number_id` becomes
a path segment (`/{phone_number_id}/messages`), so one holding `/`, `?`, `#`, `..` or a control
character would move or cut the path the access token is sent to. Meta's phone number ids and
media ids are decimal numbers; a wamid is printable text (`wamid.` and base64). An id that
fails its check makes the task an `InvalidTask`: dead-lettered at once, never sent.
"""

from __future__ import annotations

from typing import Final, TypeGuard

from pyloto_cli.domain.errors import InvalidTask

NUMERIC_ID_MAX: Final = 32  # Meta's numeric ids have 15-17 digits
MESSAGE_ID_MAX: Final = 512  # wamids are about 60 characters


def is_numeric_id(value: object) -> TypeGuard[str]:
    """A Graph node id: 1 to `NUMERIC_ID_MAX` ASCII digits, nothing else."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= NUMERIC_ID_MAX
        and value.isascii()
        and value.isdigit()
    )


def is_message_id(value: object) -> TypeGuard[str]:
    """A wamid: 1 to `MESSAGE_ID_MAX` printable characters (no control or format character)."""
    return isinstance(value, str) and 0 < len(value) <= MESSAGE_ID_MAX and value.isprintable()


def shown(value: object) -> str:
    """`value` for a reason or a log line: ASCII only, control characters escaped, shortened."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def phone_number_id(value: object) -> str:
    """`value` when it is a valid phone number id, else InvalidTask."""
    if not is_numeric_id(value):
        raise InvalidTask(f"phone_number_id {shown(value)} is not a Graph id (digits only)")
    return value


def message_id(value: object) -> str:
    """`value` when it is a valid wamid, else InvalidTask."""
    if not is_message_id(value):
        raise InvalidTask(f"message id {shown(value)} is not printable text of a sane length")
    return value
