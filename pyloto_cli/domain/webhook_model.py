"""A typed model of the whole WhatsApp Cloud API webhook: frozen, slotted dataclasses from dicts.

`Webhook > Entry > Change > Value > Message | Status | Contact | ErrorDetail`, the message
contents living in `webhook_content`. `parse_webhook(payload)` builds the whole tree.

Why hand-written dataclasses rather than pydantic (v2, extra="allow"):
- The hot path (the webhook request, up to 1000 items per POST) does not build this model at
  all: `split_webhook` walks the dicts and reads only ids, so the 200 never waits on parsing.
  The model is built later by the worker, one item at a time (`inbound_message`,
  `status_update`), where plain `from_dict` code is as cheap as pure Python gets.
- The domain stays free of third-party libraries (pywa's `from_update` style), so another
  parser can be tried against this one without touching the domain types.
- Forward compatibility is explicit: every envelope model keeps the dict it came from in
  `raw`, so unknown fields and types are never lost ("extra allowed"), and the enums map
  unknown values to `UNKNOWN` through `_missing_` instead of raising.

Both payload shapes parse: the legacy one (`from`, `wa_id`) and the 2026 one with
business-scoped user ids (`from_user_id`, `user_id`), where the phone may be missing or "".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Self

from pyloto_cli.domain.task import JsonObject
from pyloto_cli.domain.webhook_content import (
    Content,
    MessageType,
    content_of,
    int_of,
    obj_of,
    objs_of,
    text_of,
)


class MessageStatus(StrEnum):
    """Delivery status of one of our outbound messages."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    PLAYED = "played"
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> Self:
        return cls("unknown")


class ErrorDetail(NamedTuple):
    """One entry of an `errors[]` list (message-, status- or value-level)."""

    code: int | None
    title: str | None
    message: str | None
    details: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> ErrorDetail:
        """Build from `{code, title, message, error_data: {details}}`."""
        return cls(
            code=int_of(data.get("code")),
            title=text_of(data, "title"),
            message=text_of(data, "message"),
            details=text_of(obj_of(data, "error_data"), "details"),
        )


def errors_of(data: Mapping[str, Any]) -> tuple[ErrorDetail, ...]:
    """The `errors[]` of an object as `ErrorDetail`s."""
    return tuple(ErrorDetail.from_dict(item) for item in objs_of(data, "errors"))


@dataclass(frozen=True, slots=True)
class Context:
    """`context`: the message this one replies to, or forwarding flags."""

    id: str | None
    from_: str | None
    forwarded: bool
    frequently_forwarded: bool

    @classmethod
    def from_dict(cls, data: JsonObject) -> Context:
        """Build from the `context` object."""
        return cls(
            id=text_of(data, "id"),
            from_=text_of(data, "from"),
            forwarded=data.get("forwarded") is True,
            frequently_forwarded=data.get("frequently_forwarded") is True,
        )


@dataclass(frozen=True, slots=True)
class Referral:
    """`referral`: the ad or post (Click-to-WhatsApp) that started the conversation."""

    source_url: str | None
    source_id: str | None
    source_type: str | None
    headline: str | None
    body: str | None
    media_type: str | None
    ctwa_clid: str | None
    raw: JsonObject

    @classmethod
    def from_dict(cls, data: JsonObject) -> Referral:
        """Build from the `referral` object."""
        return cls(
            source_url=text_of(data, "source_url"),
            source_id=text_of(data, "source_id"),
            source_type=text_of(data, "source_type"),
            headline=text_of(data, "headline"),
            body=text_of(data, "body"),
            media_type=text_of(data, "media_type"),
            ctwa_clid=text_of(data, "ctwa_clid"),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound message of `value.messages[]`; `from_` is None when missing or ""."""

    id: str | None
    type: MessageType
    raw_type: str
    timestamp: int
    from_: str | None
    from_user_id: str | None
    from_parent_user_id: str | None
    group_id: str | None
    content: Content | None
    context: Context | None
    referral: Referral | None
    errors: tuple[ErrorDetail, ...]
    raw: JsonObject

    @classmethod
    def from_dict(cls, data: JsonObject) -> Message:
        """Build from a `messages[]` item; never raises on missing optional fields."""
        raw_type = text_of(data, "type") or ""
        type_ = MessageType(raw_type)
        context = data.get("context")
        referral = data.get("referral")
        return cls(
            id=text_of(data, "id"),
            type=type_,
            raw_type=raw_type,
            timestamp=int_of(data.get("timestamp")) or 0,
            from_=text_of(data, "from"),
            from_user_id=text_of(data, "from_user_id"),
            from_parent_user_id=text_of(data, "from_parent_user_id"),
            group_id=text_of(data, "group_id"),
            content=content_of(data, type_, raw_type),
            context=Context.from_dict(context) if isinstance(context, dict) else None,
            referral=Referral.from_dict(referral) if isinstance(referral, dict) else None,
            errors=errors_of(data),
            raw=data,
        )

    @property
    def text(self) -> str | None:
        """What the user said in words (see the content classes' `words()`)."""
        return self.content.words() if self.content is not None else None


@dataclass(frozen=True, slots=True)
class Contact:
    """One `value.contacts[]` item: the user's phone (`wa_id`), BSUID (`user_id`) and profile."""

    wa_id: str | None
    user_id: str | None
    parent_user_id: str | None
    name: str | None
    username: str | None
    raw: JsonObject

    @classmethod
    def from_dict(cls, data: JsonObject) -> Contact:
        """Build from a `contacts[]` item."""
        profile = obj_of(data, "profile")
        return cls(
            wa_id=text_of(data, "wa_id"),
            user_id=text_of(data, "user_id"),
            parent_user_id=text_of(data, "parent_user_id"),
            name=text_of(profile, "name"),
            username=text_of(profile, "username"),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Metadata:
    """`value.metadata`: the business number the item belongs to."""

    display_phone_number: str | None
    phone_number_id: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> Metadata:
        """Build from the `metadata` object."""
        return cls(
            display_phone_number=text_of(data, "display_phone_number"),
            phone_number_id=text_of(data, "phone_number_id"),
        )


@dataclass(frozen=True, slots=True)
class Pricing:
    """`statuses[].pricing` (CBP before 1 Jul 2025, PMP after)."""

    billable: bool | None
    pricing_model: str | None
    type: str | None
    category: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> Pricing:
        """Build from the `pricing` object."""
        billable = data.get("billable")
        return cls(
            billable=billable if isinstance(billable, bool) else None,
            pricing_model=text_of(data, "pricing_model"),
            type=text_of(data, "type"),
            category=text_of(data, "category"),
        )


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """`statuses[].conversation` (omitted from v24.0 outside free-entry-point windows)."""

    id: str | None
    expiration_timestamp: int | None
    origin_type: str | None

    @classmethod
    def from_dict(cls, data: JsonObject) -> ConversationInfo:
        """Build from the `conversation` object."""
        return cls(
            id=text_of(data, "id"),
            expiration_timestamp=int_of(data.get("expiration_timestamp")),
            origin_type=text_of(obj_of(data, "origin"), "type"),
        )


@dataclass(frozen=True, slots=True)
class Status:
    """One `value.statuses[]` item: a delivery receipt for one of our outbound messages."""

    id: str | None
    status: MessageStatus
    raw_status: str
    timestamp: int
    recipient_id: str | None
    recipient_user_id: str | None
    recipient_parent_user_id: str | None
    biz_opaque_callback_data: str | None
    conversation: ConversationInfo | None
    pricing: Pricing | None
    errors: tuple[ErrorDetail, ...]
    raw: JsonObject

    @classmethod
    def from_dict(cls, data: JsonObject) -> Status:
        """Build from a `statuses[]` item."""
        raw_status = text_of(data, "status") or ""
        conversation = data.get("conversation")
        pricing = data.get("pricing")
        return cls(
            id=text_of(data, "id"),
            status=MessageStatus(raw_status),
            raw_status=raw_status,
            timestamp=int_of(data.get("timestamp")) or 0,
            recipient_id=text_of(data, "recipient_id"),
            recipient_user_id=text_of(data, "recipient_user_id"),
            recipient_parent_user_id=(
                text_of(data, "recipient_parent_user_id")
                or text_of(data, "parent_recipient_user_id")
            ),
            biz_opaque_callback_data=text_of(data, "biz_opaque_callback_data"),
            conversation=(
                ConversationInfo.from_dict(conversation) if isinstance(conversation, dict) else None
            ),
            pricing=Pricing.from_dict(pricing) if isinstance(pricing, dict) else None,
            errors=errors_of(data),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Value:
    """`changes[].value`: messages, statuses, contacts and value-level errors of one change.

    Non-message fields (template, account, quality updates...) carry other keys: read `raw`.
    """

    messaging_product: str | None
    metadata: Metadata
    contacts: tuple[Contact, ...]
    messages: tuple[Message, ...]
    statuses: tuple[Status, ...]
    errors: tuple[ErrorDetail, ...]
    raw: JsonObject

    @classmethod
    def from_dict(cls, data: JsonObject) -> Value:
        """Build from a `value` object."""
        return cls(
            messaging_product=text_of(data, "messaging_product"),
            metadata=Metadata.from_dict(obj_of(data, "metadata")),
            contacts=tuple(Contact.from_dict(item) for item in objs_of(data, "contacts")),
            messages=tuple(Message.from_dict(item) for item in objs_of(data, "messages")),
            statuses=tuple(Status.from_dict(item) for item in objs_of(data, "statuses")),
            errors=errors_of(data),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Change:
    """`entry[].changes[]`: a `field` name and its `value`."""

    field: str
    value: Value

    @classmethod
    def from_dict(cls, data: JsonObject) -> Change:
        """Build from a `changes[]` item."""
        return cls(field=text_of(data, "field") or "", value=Value.from_dict(obj_of(data, "value")))


@dataclass(frozen=True, slots=True)
class Entry:
    """`entry[]`: the WhatsApp Business Account id, an optional `time`, and its changes."""

    id: str | None
    time: int | None
    changes: tuple[Change, ...]
    raw: JsonObject

    @classmethod
    def from_dict(cls, data: JsonObject) -> Entry:
        """Build from an `entry[]` item."""
        entry_id = data.get("id")
        return cls(
            id=str(entry_id) if isinstance(entry_id, str | int) and entry_id != "" else None,
            time=int_of(data.get("time")),
            changes=tuple(Change.from_dict(item) for item in objs_of(data, "changes")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Webhook:
    """A whole webhook POST body (`object` is "whatsapp_business_account")."""

    object: str | None
    entries: tuple[Entry, ...]

    @property
    def messages(self) -> tuple[Message, ...]:
        """Every message of every entry and change, in payload order."""
        return tuple(m for e in self.entries for c in e.changes for m in c.value.messages)

    @property
    def statuses(self) -> tuple[Status, ...]:
        """Every status of every entry and change, in payload order."""
        return tuple(s for e in self.entries for c in e.changes for s in c.value.statuses)


def parse_webhook(payload: JsonObject) -> Webhook:
    """The typed model of a payload; lenient (non-objects in lists are skipped).

    Structure is checked by `split_webhook`, which raises `MalformedPayload`; this function is
    for reading an already accepted payload (tests, tools, benchmarks).
    """
    return Webhook(
        object=text_of(payload, "object"),
        entries=tuple(Entry.from_dict(item) for item in objs_of(payload, "entry")),
    )
