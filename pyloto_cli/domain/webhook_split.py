"""Meta's webhook payload -> tasks: the webhook request's hot path.

This walks the payload's dicts and reads only ids (no typed model is built here; the worker
builds it per task). The rules (task ids, conversation keys, trimmed values, event hashes,
dedupe within a POST, unknown types logged as `webhook_unknown_type`) are documented in
`pyloto_cli.domain.webhook`, whose `split_webhook` this is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pyloto_cli.domain import json_codec
from pyloto_cli.domain.errors import MalformedPayload
from pyloto_cli.domain.task import JsonObject, Task, TaskKind
from pyloto_cli.domain.webhook_content import MessageType, obj_of, objs_of, text_of
from pyloto_cli.domain.webhook_model import MessageStatus
from pyloto_cli.logs import get_logger, log_event

MESSAGES_FIELD: Final = "messages"
ECHOES_FIELD: Final = "smb_message_echoes"
PREFERENCES_FIELD: Final = "user_preferences"
ECHO_PREFIX: Final = "echo:"  # an echo's task id: its wamid, apart from inbound wamids
REASON_KEY: Final = "_pyloto_reason"  # where an EVENT task says why it is not a message
_ITEM_LISTS: Final = ("messages", "statuses", "errors", "contacts")
_KNOWN_FIELDS: Final = frozenset(
    {
        "messages",
        "message_template_status_update",
        "message_template_quality_update",
        "message_template_components_update",
        "template_category_update",
        "account_update",
        "account_alerts",
        "account_review_update",
        "business_capability_update",
        "phone_number_quality_update",
        "phone_number_name_update",
        "user_preferences",
        "security",
        "history",
        "smb_message_echoes",
        "smb_app_state_sync",
        "partner_solutions",
        "payment_configuration_update",
        "automatic_events",
        "business_username_update",
    }
)


class Contacts:
    """The contacts of a value, looked up by BSUID, then phone (indexed once per change)."""

    __slots__ = ("_by_bsuid", "_by_phone", "_only")

    def __init__(self, contacts: list[JsonObject]) -> None:
        self._only = contacts[0] if len(contacts) == 1 else None
        self._by_bsuid: dict[str, JsonObject] = {}
        self._by_phone: dict[str, JsonObject] = {}
        for contact in contacts:
            if user_id := text_of(contact, "user_id"):
                self._by_bsuid.setdefault(user_id, contact)
            if wa_id := text_of(contact, "wa_id"):
                self._by_phone.setdefault(wa_id, contact)

    def find(self, phone: str | None, bsuid: str | None) -> JsonObject | None:
        """The contact with this BSUID or phone; the only contact when the item names nobody."""
        if phone is None and bsuid is None:
            return self._only
        found = self._by_bsuid.get(bsuid) if bsuid else None
        return found or (self._by_phone.get(phone) if phone else None)


@dataclass(slots=True)
class _Change:
    """One `changes[]` item being split, with what its tasks share."""

    entry_id: str
    entry_time: Any
    field: str
    phone_number_id: str
    value: JsonObject
    _contacts: Contacts | None = None

    def contact(self, phone: str | None, bsuid: str | None) -> JsonObject | None:
        """The contact of a message or status (see `Contacts.find`)."""
        if self._contacts is None:
            self._contacts = Contacts(objs_of(self.value, "contacts"))
        return self._contacts.find(phone, bsuid)


def _trim(value: JsonObject, key: str, item: JsonObject, contact: JsonObject | None) -> JsonObject:
    """`value` with its item lists reduced to `item` (under `key`) and its contact."""
    trimmed = dict(value)
    for name in ("messages", "statuses"):
        if name in trimmed:
            trimmed[name] = []
    if "contacts" in trimmed:
        trimmed["contacts"] = [contact] if contact is not None else []
    trimmed[key] = [item]
    return trimmed


def _event_id(change: _Change, item: JsonObject) -> str:
    canonical = json.dumps(
        {
            "entry_id": change.entry_id,
            "time": change.entry_time,
            "field": change.field,
            "phone_number_id": change.phone_number_id,
            "item": item,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return "evt:" + hashlib.sha256(canonical.encode()).hexdigest()


class _Splitter:
    """Builds the tasks of one payload, dropping task ids already seen in it."""

    __slots__ = ("_log", "_received_at", "_seen", "tasks")

    def __init__(self, received_at: float) -> None:
        self._log = get_logger("webhook")
        self._received_at = received_at
        self._seen: set[str] = set()
        self.tasks: list[Task] = []

    def _add(
        self,
        change: _Change,
        task_id: str,
        kind: TaskKind,
        key: str,
        item: JsonObject,
        value: JsonObject,
    ) -> None:
        if task_id in self._seen:
            log_event(self._log, "webhook_duplicate_item", logging.DEBUG, task_id=task_id)
            return
        self._seen.add(task_id)
        self.tasks.append(
            Task(
                task_id,
                kind,
                key,
                change.phone_number_id,
                self._received_at,
                item,
                value,
                change.field,
            )
        )

    def _unknown(self, kind: str, raw_type: str, task_id: str) -> None:
        log_event(self._log, "webhook_unknown_type", kind=kind, raw_type=raw_type, task_id=task_id)

    def change(self, change: _Change) -> None:
        """Split one change: its items in payload order, or the whole value as one event."""
        if change.field == ECHOES_FIELD:
            self._per_user(change, "message_echoes", self.echo)
        elif change.field == PREFERENCES_FIELD:
            self._per_user(change, "user_preferences", self.preference)
        elif change.field != MESSAGES_FIELD:
            if change.field not in _KNOWN_FIELDS:
                self._unknown("field", change.field, "")
            self.event(change, change.value, None)
        elif not self._items(change):
            self._unknown("value", ",".join(sorted(change.value)), "")
            self.event(change, change.value, None)

    def _items(self, change: _Change) -> bool:
        """Tasks for the messages, statuses and errors of a `messages` value, in key order."""
        found = False
        for key, items in change.value.items():
            if key == "messages":
                for item in items:
                    self.message(change, item)
            elif key == "statuses":
                for item in items:
                    self.status(change, item)
            elif key == "errors":
                for item in items:
                    self.event(change, item, "errors")
            else:
                continue
            found = True
        return found

    def event(self, change: _Change, item: JsonObject, key: str | None, reason: str = "") -> None:
        """An EVENT task for `item` (a whole value when `key` is None)."""
        task_id = _event_id(change, item)
        value = change.value if key is None else _trim(change.value, key, item, None)
        if reason:
            value = {**value, REASON_KEY: reason}
            log_event(
                self._log,
                "webhook_item_kept_as_event",
                logging.WARNING,
                reason=reason,
                task_id=task_id,
                field=change.field,
            )
        self._add(change, task_id, TaskKind.EVENT, f"event:{task_id}", item, value)

    def message(self, change: _Change, item: JsonObject) -> None:
        """A MESSAGE task, keyed on the sender's BSUID, else phone."""
        wamid = text_of(item, "id")
        if wamid is None:
            self.event(change, item, "messages", reason="message_without_id")
            return
        phone, bsuid = text_of(item, "from"), text_of(item, "from_user_id")
        contact = change.contact(phone, bsuid)
        if contact is not None:
            bsuid = bsuid or text_of(contact, "user_id")
            phone = phone or text_of(contact, "wa_id")
        sender = bsuid or phone
        if sender is None:
            log_event(self._log, "webhook_message_without_sender", logging.WARNING, task_id=wamid)
            sender = f"unknown:{wamid}"
        raw_type = text_of(item, "type") or ""
        if MessageType(raw_type) is MessageType.UNKNOWN:
            self._unknown("message", raw_type, wamid)
        key = f"{change.phone_number_id or change.entry_id}:{sender}"
        value = _trim(change.value, "messages", item, contact)
        self._add(change, wamid, TaskKind.MESSAGE, key, item, value)

    def _per_user(
        self, change: _Change, key: str, split: Callable[[_Change, JsonObject], None]
    ) -> None:
        """Items that belong to a user's conversation (echoes, preferences), one task each; a
        value whose item list is missing or not a list of objects stays one event, with why."""
        items = change.value.get(key)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            self.event(change, change.value, None, reason=f"{key}_not_a_list_of_objects")
            return
        for item in items:
            split(change, item)

    def _user_key(self, change: _Change, phone: str | None, bsuid: str | None) -> str | None:
        """The conversation key of the user an item names, as a message from them is keyed."""
        phone = (phone.lstrip("+") or None) if phone else None
        contact = change.contact(phone, bsuid)
        if contact is not None and phone is not None:
            bsuid = bsuid or text_of(contact, "user_id")
        user = bsuid or phone
        return None if user is None else f"{change.phone_number_id or change.entry_id}:{user}"

    def echo(self, change: _Change, item: JsonObject) -> None:
        """A staff message sent from the Business app: keyed to the user's conversation, so it
        is ordered with their messages."""
        wamid = text_of(item, "id")
        key = self._user_key(change, text_of(item, "to"), text_of(item, "to_user_id"))
        if wamid is None or key is None:
            reason = "echo_without_id" if wamid is None else "echo_without_recipient"
            self.event(change, item, "message_echoes", reason=reason)
            return
        value = _trim(change.value, "message_echoes", item, None)
        self._add(change, ECHO_PREFIX + wamid, TaskKind.EVENT, key, item, value)

    def preference(self, change: _Change, item: JsonObject) -> None:
        """A user's marketing preference: keyed to the user's conversation."""
        key = self._user_key(change, text_of(item, "wa_id"), text_of(item, "user_id"))
        if key is None:
            self.event(change, item, "user_preferences", reason="preference_without_user")
            return
        value = _trim(change.value, "user_preferences", item, None)
        self._add(change, _event_id(change, item), TaskKind.EVENT, key, item, value)

    def status(self, change: _Change, item: JsonObject) -> None:
        """A STATUS task, serialized per wamid."""
        wamid, status = text_of(item, "id"), text_of(item, "status")
        if wamid is None or status is None:
            reason = "status_without_id" if wamid is None else "status_without_status"
            self.event(change, item, "statuses", reason=reason)
            return
        if MessageStatus(status) is MessageStatus.UNKNOWN:
            self._unknown("status", status, wamid)
        contact = change.contact(text_of(item, "recipient_id"), text_of(item, "recipient_user_id"))
        value = _trim(change.value, "statuses", item, contact)
        self._add(change, f"{wamid}:{status}", TaskKind.STATUS, f"status:{wamid}", item, value)


def _objects(container: JsonObject, key: str, where: str, *, required: bool) -> list[JsonObject]:
    """`container[key]` as a list of objects, or MalformedPayload naming what is wrong."""
    if key not in container and not required:
        return []
    items = container.get(key)
    if not isinstance(items, list):
        raise MalformedPayload(f"{where}.{key} must be a list, got {type(items).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where}.{key}[{index}] must be an object")
    return items


def _change_of(entry: JsonObject, raw: JsonObject, where: str) -> _Change:
    value = raw.get("value")
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where}.value must be an object")
    field = raw.get("field", "")
    if not isinstance(field, str):
        raise MalformedPayload(f"{where}.field must be a string")
    if field == MESSAGES_FIELD:  # other fields are stored whole, whatever their shape
        for key in _ITEM_LISTS:
            _objects(value, key, f"{where}.value", required=False)
    entry_id = entry.get("id")
    return _Change(
        entry_id=str(entry_id) if entry_id is not None else "",
        entry_time=entry.get("time"),
        field=field,
        phone_number_id=text_of(obj_of(value, "metadata"), "phone_number_id") or "",
        value=value,
    )


WHATSAPP_OBJECT: Final = "whatsapp_business_account"


def split_webhook(payload: JsonObject, received_at: float) -> list[Task]:
    """Every item of every entry and change as a task (messages, statuses, other fields).

    Raises MalformedPayload when the payload is not a webhook body (not an object, an `object`
    other than WhatsApp's, `entry` or
    `changes` not lists of objects, `value` not an object, item lists not lists of objects).
    Text that is not valid Unicode (lone surrogates) is replaced by U+FFFD first
    (`json_codec.clean`), so every task can be stored by every backend.
    """
    if not isinstance(payload, dict):
        raise MalformedPayload(f"payload must be a JSON object, got {type(payload).__name__}")
    kind = payload.get("object", WHATSAPP_OBJECT)
    if kind != WHATSAPP_OBJECT:  # Meta sends WhatsApp's webhooks with this object only
        shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise MalformedPayload(f"payload.object must be {WHATSAPP_OBJECT!r}, got {shown!r}")
    payload = json_codec.clean(payload)
    splitter = _Splitter(received_at)
    for i, entry in enumerate(_objects(payload, "entry", "payload", required=True)):
        changes = _objects(entry, "changes", f"entry[{i}]", required=True)
        for j, change in enumerate(changes):
            splitter.change(_change_of(entry, change, f"entry[{i}].changes[{j}]"))
    return splitter.tasks
