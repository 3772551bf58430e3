"""A reply too long for one WhatsApp text message, as a few messages. Pure.

A text message holds 4,096 UTF-16 units (DOMAIN.md §3). A longer reply is split into at most
`max_parts` messages, each cut at the last paragraph break that fills at least half of it,
else the last sentence end, else the last space, else (one unbroken word) at a grapheme
cluster boundary. Only what still does not fit in `max_parts` messages is lost: the last part
is cut at a word boundary and ends with "…". An interactive reply that fits its limits goes as
one message; one that does not falls back to text (its options as bullets), split the same way.
"""

from __future__ import annotations

import re
from typing import Final

from pyloto_cli.domain.outbound import (
    ELLIPSIS,
    TEXT_MAX,
    JsonObject,
    build_reply_body,
    fallback_text,
    prefix_within,
    text_body,
    wa_len,
)
from pyloto_cli.domain.reply import Reply, ReplyKind
from pyloto_cli.domain.webhook import Recipient

DEFAULT_MAX_PARTS: Final = 4
_PARAGRAPH: Final = re.compile(r"\n\s*\n")
_SENTENCE: Final = re.compile(r"(?<=[.!?…。])[\"')\]]*\s+|\n")
_SPACE: Final = re.compile(r"\s+")


def split_text(
    text: str, *, limit: int = TEXT_MAX, max_parts: int = DEFAULT_MAX_PARTS
) -> list[str]:
    """`text` (stripped) as at most `max_parts` pieces of at most `limit` units each, in order.

    Nothing is dropped unless `max_parts` pieces cannot hold it all; then the last piece ends
    with an ellipsis at a word boundary. An empty text gives no pieces.
    """
    if limit < 2 or max_parts < 1:
        raise ValueError("limit must be >= 2 and max_parts >= 1")
    rest = text.strip()
    parts: list[str] = []
    while rest and len(parts) < max_parts - 1 and wa_len(rest) > limit:
        head, rest = _cut(rest, limit)
        parts.append(head)
    if rest:
        parts.append(rest if wa_len(rest) <= limit else _ellipsized(rest, limit))
    return parts


def _cut(text: str, limit: int) -> tuple[str, str]:
    """The first piece of `text` (within `limit`) and what follows it, both stripped."""
    window = prefix_within(text, limit)
    floor = len(window) // 2
    for boundary in (_PARAGRAPH, _SENTENCE, _SPACE):
        ends = [m for m in boundary.finditer(window) if m.start() >= floor]
        if ends:
            match = ends[-1]
            return window[: match.start()].rstrip(), text[match.end() :].lstrip()
    return window, text[len(window) :].lstrip()


def _ellipsized(text: str, limit: int) -> str:
    """`text` cut to fit `limit` with the ellipsis, at the last space when there is one."""
    window = prefix_within(text, limit - wa_len(ELLIPSIS))
    spaces = [m for m in _SPACE.finditer(window) if m.start() > 0]
    if spaces:
        window = window[: spaces[-1].start()]
    return window.rstrip() + ELLIPSIS


def reply_bodies(
    reply: Reply,
    recipient: Recipient,
    *,
    callback_data: str | None = None,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> list[JsonObject]:
    """The Graph bodies that carry `reply`, in sending order: one interactive body when it
    fits, else text bodies, one per piece of `split_text`."""
    single = build_reply_body(reply, recipient, callback_data=callback_data)
    if single.get("type") != "text":
        return [single]
    options = reply.buttons
    if reply.kind is ReplyKind.LIST:
        options = tuple(row for section in reply.sections for row in section.rows) or reply.buttons
    full = fallback_text(reply.text, options) if reply.kind is not ReplyKind.TEXT else reply.text
    pieces = split_text(full, max_parts=max_parts)
    if len(pieces) <= 1:
        return [single]
    return [text_body(recipient, piece, callback_data=callback_data) for piece in pieces]
