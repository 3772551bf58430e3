"""Graph API message bodies, within WhatsApp's limits (DOMAIN.md §3). Pure.

A body is never sent invalid: over-long fields are shortened with an ellipsis, duplicate button
titles are made unique, and what cannot be fitted (a buttons body over 1024, more than 10
options, an empty list) falls back to a plain text message that lists the options.

Lengths are counted in UTF-16 code units, like Meta's Java/Hack validators count string length
(an emoji outside the BMP is 2). For BMP text that equals the code point count, and for the rest
it is the larger, safe count. Cuts never split a surrogate pair or a grapheme cluster (ZWJ emoji
sequences, skin tones, flags, combining accents, keycaps).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Final

from pyloto_cli.domain import ids
from pyloto_cli.domain.errors import PermanentError
from pyloto_cli.domain.outbound_media import MediaFile, MediaKind
from pyloto_cli.domain.reply import ListSection, Reply, ReplyKind, ReplyOption
from pyloto_cli.domain.webhook import Recipient

JsonObject = dict[str, Any]

TEXT_MAX: Final = 4096
BUTTONS_MAX: Final = 3
BUTTON_TITLE_MAX: Final = 20
BUTTON_ID_MAX: Final = 256
BUTTONS_BODY_MAX: Final = 1024
HEADER_MAX: Final = 60
FOOTER_MAX: Final = 60
LIST_SECTIONS_MAX: Final = 10
LIST_ROWS_MAX: Final = 10
LIST_BUTTON_MAX: Final = 20
LIST_TITLE_MAX: Final = 24
ROW_DESCRIPTION_MAX: Final = 72
ROW_ID_MAX: Final = 200
LIST_BODY_MAX: Final = 4096
CALLBACK_DATA_MAX: Final = 512
ELLIPSIS: Final = "…"

_LINK: Final = re.compile(r"https?://\S", re.IGNORECASE)
_ZWJ: Final = "\u200d"
_KEYCAP: Final = "\u20e3"


# --- Lengths and cuts -------------------------------------------------------------------------


def wa_len(text: str) -> int:
    """Length as WhatsApp counts it: UTF-16 code units."""
    if text.isascii():
        return len(text)
    # a lone surrogate (which JSON can carry) counts as the one unit it is
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _extends(ch: str) -> bool:
    """True if `ch` belongs to the grapheme cluster before it."""
    cp = ord(ch)
    return (
        ch == _ZWJ
        or ch == _KEYCAP
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0x1F3FB <= cp <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tag characters (subdivision flags)
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
    )


def _is_regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _safe_cut(text: str, index: int) -> int:
    """The largest cluster boundary at or before code point `index`."""
    while 0 < index < len(text):
        if _extends(text[index]) or text[index - 1] == _ZWJ:
            index -= 1
            continue
        run = 0
        while index - run - 1 >= 0 and _is_regional(text[index - run - 1]):
            run += 1
        if run % 2 == 1 and _is_regional(text[index]):
            index -= 1  # between the two halves of a flag
            continue
        break
    return index


def prefix_within(text: str, units: int) -> str:
    """The longest prefix of `text` within `units` UTF-16 units that cuts no grapheme cluster."""
    used = 0
    for index, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > units:
            return text[: _safe_cut(text, index)]
    return text


def shorten(text: str, limit: int) -> str:
    """`text` if it fits in `limit` UTF-16 units, else a cluster-safe prefix plus an ellipsis."""
    if wa_len(text) <= limit:
        return text
    return prefix_within(text, limit - wa_len(ELLIPSIS)).rstrip() + ELLIPSIS


def _fit_id(raw: str, limit: int, seen: set[str], index: int) -> str:
    """An option id within `limit` and unique in `seen` (long ids keep a hash of the original)."""
    value = raw.strip() or f"option_{index + 1}"
    if wa_len(value) > limit:
        digest = hashlib.sha256(value.encode()).hexdigest()[:10]
        value = prefix_within(value, limit - 11) + "~" + digest
    if value in seen:
        value = prefix_within(value, limit - 4) + f"~{index + 1}"
    seen.add(value)
    return value


def _unique_title(title: str, limit: int, seen: set[str]) -> str | None:
    """`title` shortened to `limit` and unique among `seen` (casefolded); None to drop it.

    A title repeated word for word is dropped; distinct titles that shorten alike get " (2)".
    """
    clean = " ".join(title.split())
    if not clean or f"raw:{clean.casefold()}" in seen:
        return None
    seen.add(f"raw:{clean.casefold()}")
    candidates = [shorten(clean, limit)]
    candidates += [shorten(clean, limit - 4) + f" ({n})" for n in range(2, 10)]
    for candidate in candidates:
        if f"fit:{candidate.casefold()}" not in seen:
            seen.add(f"fit:{candidate.casefold()}")
            return candidate
    return None


# --- Common envelope ------------------------------------------------------------------------


def address(recipient: Recipient) -> JsonObject:
    """`to` (E.164 with `+`) when a phone is known, else the BSUID `recipient`."""
    if recipient.to:
        phone = "".join(recipient.to.split())
        return {"to": phone if phone.startswith("+") else f"+{phone}"}
    if recipient.recipient:
        return {"recipient": recipient.recipient}
    raise PermanentError("reply has no recipient (neither a phone nor a BSUID)")


def _envelope(
    recipient: Recipient, kind: str, content: JsonObject, reply_to: str | None, callback: str | None
) -> JsonObject:
    body: JsonObject = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    body.update(address(recipient))
    if reply_to:
        body["context"] = {"message_id": reply_to}
    body["type"] = kind
    body[kind] = content
    if callback and wa_len(callback) <= CALLBACK_DATA_MAX:
        body["biz_opaque_callback_data"] = callback
    return body


# --- Message bodies ---------------------------------------------------------------------------


def text_body(
    recipient: Recipient,
    text: str,
    *,
    reply_to: str | None = None,
    callback_data: str | None = None,
    preview_url: bool | None = None,
) -> JsonObject:
    """A text message (≤ 4096), with a link preview when it holds an http(s) link."""
    body = shorten(text.strip(), TEXT_MAX)
    if not body:
        raise PermanentError("reply text is empty")
    preview = bool(_LINK.search(body)) if preview_url is None else preview_url
    return _envelope(
        recipient, "text", {"preview_url": preview, "body": body}, reply_to, callback_data
    )


def buttons_body(
    recipient: Recipient,
    text: str,
    buttons: Sequence[ReplyOption],
    *,
    header: str | None = None,
    footer: str | None = None,
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> JsonObject:
    """Reply buttons (≤ 3, unique titles ≤ 20); falls back to text when they cannot be fitted."""
    fitted = _fit_buttons(buttons)
    body_text = text.strip()
    if not fitted or not body_text or wa_len(body_text) > BUTTONS_BODY_MAX:
        return _text_fallback(recipient, text, buttons, reply_to, callback_data)
    content: JsonObject = {"type": "button"}
    if header and header.strip():
        content["header"] = {"type": "text", "text": shorten(header.strip(), HEADER_MAX)}
    content["body"] = {"text": body_text}
    if footer and footer.strip():
        content["footer"] = {"text": shorten(footer.strip(), FOOTER_MAX)}
    content["action"] = {"buttons": [{"type": "reply", "reply": b} for b in fitted]}
    return _envelope(recipient, "interactive", content, reply_to, callback_data)


def _fit_buttons(buttons: Sequence[ReplyOption]) -> list[JsonObject]:
    if len(buttons) > BUTTONS_MAX:
        return []
    titles: set[str] = set()
    ids: set[str] = set()
    fitted: list[JsonObject] = []
    for index, option in enumerate(buttons):
        title = _unique_title(option.title, BUTTON_TITLE_MAX, titles)
        if title is not None:
            fitted.append({"id": _fit_id(option.id, BUTTON_ID_MAX, ids, index), "title": title})
    return fitted


def list_body(
    recipient: Recipient,
    text: str,
    sections: Sequence[ListSection],
    *,
    button: str = "Options",
    header: str | None = None,
    footer: str | None = None,
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> JsonObject:
    """An interactive list (≤ 10 sections, ≤ 10 rows); falls back to text when it cannot fit."""
    options = [row for section in sections for row in section.rows]
    fitted = _fit_sections(sections)
    body_text = text.strip()
    too_long = wa_len(body_text) > LIST_BODY_MAX
    if not fitted or len(options) > LIST_ROWS_MAX or not body_text or too_long:
        return _text_fallback(recipient, text, options, reply_to, callback_data)
    content: JsonObject = {"type": "list"}
    if header and header.strip():
        content["header"] = {"type": "text", "text": shorten(header.strip(), HEADER_MAX)}
    content["body"] = {"text": body_text}
    if footer and footer.strip():
        content["footer"] = {"text": shorten(footer.strip(), FOOTER_MAX)}
    label = shorten(" ".join(button.split()) or "Options", LIST_BUTTON_MAX)
    content["action"] = {"button": label, "sections": fitted}
    return _envelope(recipient, "interactive", content, reply_to, callback_data)


def _fit_sections(sections: Sequence[ListSection]) -> list[JsonObject]:
    ids: set[str] = set()
    fitted: list[JsonObject] = []
    index = 0
    for section in sections:
        rows: list[JsonObject] = []
        for option in section.rows:
            title = " ".join(option.title.split())
            if title:
                rows.append(_fit_row(option, title, ids, index))
            index += 1
        if rows:
            title = " ".join(section.title.split()) or "Options"
            fitted.append({"title": shorten(title, LIST_TITLE_MAX), "rows": rows})
    return fitted if len(fitted) <= LIST_SECTIONS_MAX else []


def _fit_row(option: ReplyOption, title: str, ids: set[str], index: int) -> JsonObject:
    row: JsonObject = {
        "id": _fit_id(option.id, ROW_ID_MAX, ids, index),
        "title": shorten(title, LIST_TITLE_MAX),
    }
    description = " ".join((option.description or "").split())
    if description:
        row["description"] = shorten(description, ROW_DESCRIPTION_MAX)
    return row


def _text_fallback(
    recipient: Recipient,
    text: str,
    options: Iterable[ReplyOption],
    reply_to: str | None,
    callback_data: str | None,
) -> JsonObject:
    joined = fallback_text(text, options)
    return text_body(recipient, joined, reply_to=reply_to, callback_data=callback_data)


def fallback_text(text: str, options: Iterable[ReplyOption]) -> str:
    """The text an interactive reply becomes when it cannot go as one: its body, then a
    bullet per option, so the user still sees the choices."""
    lines = [f"• {' '.join(o.title.split())}" for o in options if o.title.strip()]
    return "\n\n".join(part for part in (text.strip(), "\n".join(lines)) if part)


def build_reply_body(
    reply: Reply,
    recipient: Recipient,
    *,
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> JsonObject:
    """The Graph body for `reply`: text, buttons or list, always valid.

    `reply_to` quotes that message (`context`); `callback_data` (default: `reply_to`, the
    inbound wamid) comes back in every status webhook as `biz_opaque_callback_data`. More than
    3 buttons become a list; what no interactive type can carry becomes text.
    """
    callback = callback_data if callback_data is not None else reply_to
    common: dict[str, Any] = {"reply_to": reply_to, "callback_data": callback}
    if reply.kind is ReplyKind.BUTTONS and reply.buttons:
        if len(reply.buttons) <= BUTTONS_MAX:
            return buttons_body(recipient, reply.text, reply.buttons, **common)
        section = ListSection(title="Options", rows=reply.buttons)
        return list_body(recipient, reply.text, [section], button=reply.list_button, **common)
    if reply.kind is ReplyKind.LIST and (reply.sections or reply.buttons):
        sections = reply.sections or (ListSection(title="Options", rows=reply.buttons),)
        return list_body(recipient, reply.text, sections, button=reply.list_button, **common)
    return text_body(recipient, reply.text, **common)


def reaction_body(recipient: Recipient, message_id: str, emoji: str) -> JsonObject:
    """React to `message_id` with `emoji` (an empty emoji removes the reaction)."""
    return _envelope(recipient, "reaction", {"message_id": message_id, "emoji": emoji}, None, None)


def template_body(
    recipient: Recipient,
    name: str,
    language_code: str,
    components: Sequence[JsonObject] = (),
    *,
    callback_data: str | None = None,
) -> JsonObject:
    """An approved template (the only type allowed outside the 24 h window)."""
    content: JsonObject = {"name": name, "language": {"code": language_code}}
    if components:
        content["components"] = [dict(c) for c in components]
    return _envelope(recipient, "template", content, None, callback_data)


def template_body_parameters(parameters: Sequence[str]) -> list[JsonObject]:
    """The components of a template whose body has positional text parameters ({{1}}, {{2}}...)."""
    if not parameters:
        return []
    values = [{"type": "text", "text": value} for value in parameters]
    return [{"type": "body", "parameters": values}]


def media_body(
    recipient: Recipient,
    media: MediaFile,
    media_id: str,
    *,
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> JsonObject:
    """An image, document, audio or video message of uploaded media `media_id`.

    `media` was checked by `outbound_media.check_media`: its caption fits, and a document
    carries its filename (WhatsApp shows it, and names the file the user saves)."""
    if not ids.is_numeric_id(media_id):
        raise PermanentError(f"media id {ids.shown(media_id)} is not a Graph id")
    content: JsonObject = {"id": media_id}
    if media.caption:
        content["caption"] = media.caption
    if media.kind is MediaKind.DOCUMENT:
        content["filename"] = media.filename
    return _envelope(recipient, media.kind.value, content, reply_to, callback_data)


def mark_read_body(message_id: str, *, typing: bool = False) -> JsonObject:
    """Mark `message_id` (and earlier messages) read; `typing` adds the typing indicator."""
    body: JsonObject = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
    if typing:
        body["typing_indicator"] = {"type": "text"}
    return body


def typing_indicator_body(message_id: str) -> JsonObject:
    """Mark read and show the typing indicator (until the reply, or 25 s)."""
    return mark_read_body(message_id, typing=True)
