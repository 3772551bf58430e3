"""Message contents of the webhook model: helpers, enums, and one class per message type.

Each content class says what the user "said in words" (`words()`), which is where
`InboundMessage.text` comes from. The enums map unknown values to `UNKNOWN` (`_missing_`).
See `webhook_model` for the envelope and for why the model is hand-written frozen, slotted
dataclasses rather than pydantic models.

Parsing never raises on missing or oddly typed optional fields: a missing value becomes None
(or an empty tuple), and empty strings are treated like missing ones (`from: ""` and
`wa_id: ""` in the BSUID-only shape).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Self

from pyloto_cli.domain.task import JsonObject


def text_of(data: Mapping[str, Any], key: str) -> str | None:
    """`data[key]` when it is a non-empty string, else None (missing and "" are alike)."""
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def obj_of(data: Mapping[str, Any], key: str) -> JsonObject:
    """`data[key]` when it is an object, else an empty dict."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def objs_of(data: Mapping[str, Any], key: str) -> list[JsonObject]:
    """The objects in the list `data[key]` (anything else is ignored)."""
    value = data.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def int_of(value: Any) -> int | None:
    """An int from an int or a numeric string (Meta sends timestamps as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def float_of(value: Any) -> float | None:
    """A float from a number or a numeric string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


class MessageType(StrEnum):
    """Inbound message types; anything else maps to UNKNOWN (kept, logged, never a crash)."""

    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    INTERACTIVE = "interactive"
    BUTTON = "button"
    REACTION = "reaction"
    ORDER = "order"
    SYSTEM = "system"
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> Self:
        return cls("unknown")


class InteractiveType(StrEnum):
    """What kind of interactive answer arrived."""

    BUTTON_REPLY = "button_reply"
    LIST_REPLY = "list_reply"
    NFM_REPLY = "nfm_reply"  # a WhatsApp Flow's answer
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> Self:
        return cls("unknown")


# --- Message contents: one class per type, each says what the user "said in words" ---------


@dataclass(frozen=True, slots=True)
class TextContent:
    """`text{body}`."""

    body: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> TextContent:
        """Build from the type object."""
        return cls(body=text_of(data, "body"))

    def words(self) -> str | None:
        """The body."""
        return self.body


@dataclass(frozen=True, slots=True)
class MediaContent:
    """image / video / audio / document / sticker: `{id, mime_type, sha256, caption?, ...}`."""

    id: str | None
    mime_type: str | None
    sha256: str | None
    caption: str | None
    filename: str | None
    url: str | None
    voice: bool
    animated: bool

    @classmethod
    def from_dict(cls, data: JsonObject) -> MediaContent:
        """Build from the type object."""
        return cls(
            id=text_of(data, "id"),
            mime_type=text_of(data, "mime_type"),
            sha256=text_of(data, "sha256"),
            caption=text_of(data, "caption"),
            filename=text_of(data, "filename"),
            url=text_of(data, "url"),
            voice=data.get("voice") is True,
            animated=data.get("animated") is True,
        )

    def words(self) -> str | None:
        """The caption (None without one)."""
        return self.caption


@dataclass(frozen=True, slots=True)
class LocationContent:
    """`location{latitude, longitude, name?, address?, url?}`."""

    latitude: float | None
    longitude: float | None
    name: str | None
    address: str | None
    url: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> LocationContent:
        """Build from the type object."""
        return cls(
            latitude=float_of(data.get("latitude")),
            longitude=float_of(data.get("longitude")),
            name=text_of(data, "name"),
            address=text_of(data, "address"),
            url=text_of(data, "url"),
        )

    def words(self) -> str | None:
        """Name and address, one per line; None for a bare pin."""
        return "\n".join(part for part in (self.name, self.address) if part) or None


@dataclass(frozen=True, slots=True)
class InteractiveContent:
    """`interactive{type, button_reply|list_reply|nfm_reply}`; may arrive without a body."""

    type: InteractiveType
    raw_type: str
    reply_id: str | None
    title: str | None
    description: str | None
    response_json: str | None
    body: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> InteractiveContent:
        """Build from the type object."""
        raw_type = text_of(data, "type") or ""
        answer = obj_of(data, raw_type) if raw_type else {}
        return cls(
            type=InteractiveType(raw_type),
            raw_type=raw_type,
            reply_id=text_of(answer, "id"),
            title=text_of(answer, "title"),
            description=text_of(answer, "description"),
            response_json=text_of(answer, "response_json"),
            body=text_of(answer, "body"),
        )

    def words(self) -> str | None:
        """Tapped title (list rows add their description on a new line); a Flow's answers."""
        if self.type is InteractiveType.NFM_REPLY:
            return self.response_json or self.body
        if self.title and self.description:
            return f"{self.title}\n{self.description}"
        return self.title


@dataclass(frozen=True, slots=True)
class TemplateButtonContent:
    """`button{payload, text}`: a tap on a template's quick-reply button."""

    payload: str | None
    text: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> TemplateButtonContent:
        """Build from the type object."""
        return cls(payload=text_of(data, "payload"), text=text_of(data, "text"))

    def words(self) -> str | None:
        """The button's text, else its payload."""
        return self.text or self.payload


@dataclass(frozen=True, slots=True)
class ReactionContent:
    """`reaction{message_id, emoji}`; emoji None (omitted or "") means the reaction was removed."""

    message_id: str | None
    emoji: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> ReactionContent:
        """Build from the type object."""
        return cls(message_id=text_of(data, "message_id"), emoji=text_of(data, "emoji"))

    @property
    def removed(self) -> bool:
        """True when the user removed their reaction."""
        return self.emoji is None

    def words(self) -> str | None:
        """The emoji (None on removal)."""
        return self.emoji


@dataclass(frozen=True, slots=True)
class ProductItem:
    """One line of an order."""

    product_retailer_id: str | None
    quantity: int | None
    item_price: float | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class OrderContent:
    """`order{catalog_id, text?, product_items[]}`."""

    catalog_id: str | None
    text: str | None
    items: tuple[ProductItem, ...]

    @classmethod
    def from_dict(cls, data: JsonObject) -> OrderContent:
        """Build from the type object."""
        items = tuple(
            ProductItem(
                product_retailer_id=text_of(item, "product_retailer_id"),
                quantity=int_of(item.get("quantity")),
                item_price=float_of(item.get("item_price")),
                currency=text_of(item, "currency"),
            )
            for item in objs_of(data, "product_items")
        )
        return cls(catalog_id=text_of(data, "catalog_id"), text=text_of(data, "text"), items=items)

    def words(self) -> str | None:
        """The note sent with the order."""
        return self.text


@dataclass(frozen=True, slots=True)
class SharedContactsContent:
    """`contacts[]` cards the user shared (vCard-like objects, kept raw)."""

    names: tuple[str, ...]
    cards: tuple[JsonObject, ...]

    @classmethod
    def from_list(cls, cards: list[JsonObject]) -> SharedContactsContent:
        """Build from the `contacts` list of the message."""
        names = tuple(
            name for card in cards if (name := text_of(obj_of(card, "name"), "formatted_name"))
        )
        return cls(names=names, cards=tuple(cards))

    def words(self) -> str | None:
        """The shared contacts' formatted names, comma-separated."""
        return ", ".join(self.names) or None


@dataclass(frozen=True, slots=True)
class SystemContent:
    """`system{body, type, wa_id?, user_id?}` (number or BSUID changes, identity changes)."""

    body: str | None
    type: str | None
    wa_id: str | None
    user_id: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> SystemContent:
        """Build from the type object."""
        return cls(
            body=text_of(data, "body"),
            type=text_of(data, "type"),
            wa_id=text_of(data, "wa_id") or text_of(data, "new_wa_id"),
            user_id=text_of(data, "user_id"),
        )

    def words(self) -> str | None:
        """The system notice."""
        return self.body


@dataclass(frozen=True, slots=True)
class UnsupportedContent:
    """`unsupported{type?}`: a message kind the Cloud API cannot deliver (edit, poll, ...)."""

    type: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> UnsupportedContent:
        """Build from the type object."""
        return cls(type=text_of(data, "type"))

    def words(self) -> str | None:
        """Nothing the user said in words."""
        return None


Content = (
    TextContent
    | MediaContent
    | LocationContent
    | InteractiveContent
    | TemplateButtonContent
    | ReactionContent
    | OrderContent
    | SharedContactsContent
    | SystemContent
    | UnsupportedContent
)

_CONTENT_PARSERS: Final[Mapping[MessageType, Callable[[JsonObject], Content]]] = {
    MessageType.TEXT: TextContent.from_dict,
    MessageType.IMAGE: MediaContent.from_dict,
    MessageType.VIDEO: MediaContent.from_dict,
    MessageType.AUDIO: MediaContent.from_dict,
    MessageType.DOCUMENT: MediaContent.from_dict,
    MessageType.STICKER: MediaContent.from_dict,
    MessageType.LOCATION: LocationContent.from_dict,
    MessageType.INTERACTIVE: InteractiveContent.from_dict,
    MessageType.BUTTON: TemplateButtonContent.from_dict,
    MessageType.REACTION: ReactionContent.from_dict,
    MessageType.ORDER: OrderContent.from_dict,
    MessageType.SYSTEM: SystemContent.from_dict,
    MessageType.UNSUPPORTED: UnsupportedContent.from_dict,
}


def content_of(message: JsonObject, type_: MessageType, raw_type: str) -> Content | None:
    """The typed type-object of a message (None for unknown types)."""
    if type_ is MessageType.CONTACTS:
        return SharedContactsContent.from_list(objs_of(message, "contacts"))
    parser = _CONTENT_PARSERS.get(type_)
    return parser(obj_of(message, raw_type)) if parser is not None else None
