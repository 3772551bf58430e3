"""split_webhook, inbound_message, status_update, needs_reply and the typed webhook model."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from pyloto_cli.domain.errors import MalformedPayload
from pyloto_cli.domain.task import Task, TaskKind
from pyloto_cli.domain.webhook import (
    ErrorDetail,
    InboundMessage,
    MessageStatus,
    MessageType,
    Recipient,
    event_reason,
    inbound_message,
    needs_reply,
    split_webhook,
    status_update,
)
from pyloto_cli.domain.webhook_content import (
    InteractiveType,
    MediaContent,
    OrderContent,
    ReactionContent,
)
from pyloto_cli.domain.webhook_model import Message, parse_webhook
from tests.conftest import load_fixture
from tests.unit.pipeline_support import message

PNID = "200000000000001"


def _payload(value: dict[str, Any], field: str = "messages", **entry: Any) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "100000000000001", **entry, "changes": [{"field": field, "value": value}]}
        ],
    }


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.__dict__["fields"] for r in caplog.records if r.getMessage() == name]


class TestSplit:
    def test_thousand_messages_make_thousand_tasks_each_with_a_one_item_value(self) -> None:
        """A maximal batch splits in order and no task copies its siblings."""
        messages = [message(f"wamid.M{i}", "hi", sender=f"1555000{i:04d}") for i in range(1000)]
        contacts = [{"wa_id": f"1555000{i:04d}", "profile": {"name": f"u{i}"}} for i in range(1000)]
        payload = _payload(
            {"metadata": {"phone_number_id": PNID}, "contacts": contacts, "messages": messages}
        )

        tasks = split_webhook(payload, received_at=5.0)

        assert [t.task_id for t in tasks] == [f"wamid.M{i}" for i in range(1000)]
        assert tasks[7].value["messages"] == [messages[7]]
        assert tasks[7].value["contacts"] == [contacts[7]]
        assert tasks[7].conversation_key == f"{PNID}:15550000007"
        assert {t.received_at for t in tasks} == {5.0}

    def test_trimmed_value_keeps_keys_and_only_the_items_contact(self) -> None:
        """Rui's message carries Rui's contact; the statuses list of a status value is trimmed."""
        tasks = split_webhook(load_fixture("webhooks/batch_multi.json"), received_at=1.0)

        rui = tasks[1]
        assert rui.value["contacts"][0]["wa_id"] == "15550005678"
        assert rui.value["metadata"]["phone_number_id"] == PNID
        assert set(rui.value) == {"messaging_product", "metadata", "contacts", "messages"}
        read = tasks[4]
        assert read.value["statuses"] == [read.item]
        assert read.item["status"] == "read"

    def test_error_event_value_holds_only_that_error(self) -> None:
        """A value-level error beside a message gets its own event with an emptied messages list."""
        tasks = split_webhook(load_fixture("webhooks/interactive_value_error.json"), 1.0)

        event = tasks[1]
        assert event.item["code"] == 131000
        assert event.value["errors"] == [event.item]
        assert event.value["messages"] == []
        assert event.value["contacts"] == []

    def test_splitting_does_not_modify_the_payload(self) -> None:
        """The webhook hashes and stores the payload it received; splitting leaves it alone."""
        for name in ("batch_multi.json", "message_without_id.json", "status_only_batch.json"):
            payload = load_fixture(f"webhooks/{name}")
            before = copy.deepcopy(payload)
            split_webhook(payload, 1.0)
            assert payload == before

    def test_duplicate_wamids_in_one_post_make_one_task(self) -> None:
        """The first copy wins; the duplicate is dropped before it reaches the queue."""
        tasks = split_webhook(load_fixture("webhooks/duplicate_wamid.json"), 1.0)

        assert [t.task_id for t in tasks] == ["wamid.PYLOTO_DUP_0001", "wamid.PYLOTO_DUP_0002"]

    def test_duplicate_statuses_and_events_in_one_post_make_one_task(self) -> None:
        """Same wamid and status, or the same error twice, is one task each."""
        status = {"id": "wamid.X", "status": "read", "timestamp": "1"}
        error = {"code": 130429, "title": "Rate limit hit"}
        payload = _payload({"statuses": [status, dict(status)], "errors": [error, dict(error)]})

        tasks = split_webhook(payload, 1.0)

        assert [t.kind for t in tasks] == [TaskKind.STATUS, TaskKind.EVENT]
        assert tasks[0].task_id == "wamid.X:read"

    def test_same_wamid_different_statuses_share_a_conversation_key(self) -> None:
        """Statuses of one message serialize; they never share a key with a conversation."""
        tasks = split_webhook(load_fixture("webhooks/status_only_batch.json"), 1.0)

        keys = {t.conversation_key for t in tasks}
        assert keys == {"status:wamid.PYLOTO_BATCH_OUT_0001", "status:wamid.PYLOTO_BATCH_OUT_0002"}

    def test_event_ids_are_stable_across_redeliveries_but_not_across_days(self) -> None:
        """A redelivered template update hashes alike; the same update at another time does not."""
        payload = load_fixture("webhooks/template_status_update.json")
        again = split_webhook(copy.deepcopy(payload), 2.0)
        later = copy.deepcopy(payload)
        later["entry"][0]["time"] += 86400

        first = split_webhook(payload, 1.0)

        assert first[0].task_id == again[0].task_id
        assert len(first[0].task_id) == len("evt:") + 64
        assert split_webhook(later, 1.0)[0].task_id != first[0].task_id

    def test_non_message_field_keeps_its_value_and_phone_number_id(self) -> None:
        """Template updates have no metadata (""); user_preferences carries its number."""
        template = split_webhook(load_fixture("webhooks/template_status_update.json"), 1.0)[0]
        prefs = split_webhook(load_fixture("webhooks/user_preferences.json"), 1.0)[0]

        assert template.phone_number_id == ""
        assert template.item["event"] == "REJECTED"
        assert template.value == template.item
        assert prefs.phone_number_id == PNID

    def test_missing_metadata_uses_the_entry_id_in_the_conversation_key(self) -> None:
        """A message whose value lacks metadata is still keyed per business account."""
        tasks = split_webhook(_payload({"messages": [message("wamid.A", "hi")]}), 1.0)

        assert tasks[0].phone_number_id == ""
        assert tasks[0].conversation_key == "100000000000001:15550001234"

    def test_message_with_no_sender_is_kept_and_not_replied_to(self) -> None:
        """Without `from`, `from_user_id` or a contact there is nobody to answer."""
        message = {"id": "wamid.NOBODY", "type": "text", "text": {"body": "?"}}
        task = split_webhook(
            _payload({"metadata": {"phone_number_id": PNID}, "messages": [message]}), 1.0
        )[0]

        msg = inbound_message(task)
        assert task.conversation_key == f"{PNID}:unknown:wamid.NOBODY"
        assert msg.recipient == Recipient()
        assert needs_reply(msg) is False

    def test_message_without_id_becomes_an_event_with_a_reason(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nothing is dropped: the item is stored, the reason is readable and logged."""
        caplog.set_level(logging.WARNING, logger="pyloto")
        task = split_webhook(load_fixture("webhooks/message_without_id.json"), 1.0)[0]

        assert task.kind is TaskKind.EVENT
        assert task.item["text"]["body"] == "I have no id"
        assert event_reason(task) == "message_without_id"
        assert _events(caplog, "webhook_item_kept_as_event")[0]["reason"] == "message_without_id"

    def test_status_without_status_becomes_an_event(self) -> None:
        """A receipt missing its status value is kept as an event, not a `wamid:` task."""
        task = split_webhook(_payload({"statuses": [{"id": "wamid.S"}]}), 1.0)[0]

        assert (task.kind, event_reason(task)) == (TaskKind.EVENT, "status_without_status")

    def test_unknown_message_type_is_kept_and_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unknown type is a MESSAGE task with the raw item intact, logged once."""
        caplog.set_level(logging.INFO, logger="pyloto")
        task = split_webhook(load_fixture("webhooks/unknown_type.json"), 1.0)[0]

        msg = inbound_message(task)
        assert (msg.type, msg.raw_type) == (MessageType.UNKNOWN, "hologram")
        assert msg.item["hologram"] == {"frequency": 42, "note": "a type pyloto does not know"}
        assert msg.item["new_top_level_field"] == {"kept": True}
        logged = _events(caplog, "webhook_unknown_type")
        assert logged == [{"kind": "message", "raw_type": "hologram", "task_id": task.task_id}]

    @pytest.mark.parametrize(
        ("name", "kind", "raw_type"),
        [
            ("unknown_field.json", "field", "quantum_entanglement_update"),
            ("status_unknown.json", "status", "teleported"),
        ],
    )
    def test_unknown_fields_and_statuses_are_logged(
        self, caplog: pytest.LogCaptureFixture, name: str, kind: str, raw_type: str
    ) -> None:
        """Unknown `field` names and status values are logged as webhook_unknown_type."""
        caplog.set_level(logging.INFO, logger="pyloto")
        assert len(split_webhook(load_fixture(f"webhooks/{name}"), 1.0)) == 1

        logged = _events(caplog, "webhook_unknown_type")
        assert [(e["kind"], e["raw_type"]) for e in logged] == [(kind, raw_type)]

    def test_known_payloads_log_nothing_unknown(self, caplog: pytest.LogCaptureFixture) -> None:
        """The batch fixture only uses known types and fields."""
        caplog.set_level(logging.DEBUG, logger="pyloto")
        split_webhook(load_fixture("webhooks/batch_multi.json"), 1.0)

        assert _events(caplog, "webhook_unknown_type") == []

    def test_other_fields_are_stored_whole_whatever_their_shape(self) -> None:
        """Only `messages` values are checked item by item; other fields never cause a 400."""
        tasks = split_webhook(_payload({"messages": "not a list"}, field="history"), 1.0)

        assert [(t.kind, t.field) for t in tasks] == [(TaskKind.EVENT, "history")]

    def test_empty_entry_list_gives_no_tasks(self) -> None:
        """A payload with no entries is valid and empty."""
        assert split_webhook({"object": "whatsapp_business_account", "entry": []}, 1.0) == []


MALFORMED: list[tuple[Any, str]] = [
    ([], "payload must be a JSON object"),
    ("entry", "payload must be a JSON object"),
    ({}, "payload.entry must be a list"),
    ({"entry": {}}, "payload.entry must be a list"),
    ({"entry": ["x"]}, "payload.entry[0] must be an object"),
    ({"entry": [{"id": "1"}]}, "entry[0].changes must be a list"),
    ({"entry": [{"changes": [1]}]}, "entry[0].changes[0] must be an object"),
    ({"entry": [{"changes": [{"field": "messages"}]}]}, "entry[0].changes[0].value must be"),
    (_payload({"messages": {"id": "x"}}), "changes[0].value.messages must be a list"),
    (_payload({"statuses": [None]}), "value.statuses[0] must be an object"),
    (_payload({"contacts": "x"}), "value.contacts must be a list"),
    ({"entry": [{"changes": [{"field": 3, "value": {}}]}]}, "changes[0].field must be a string"),
]


@pytest.mark.parametrize(("payload", "reason"), MALFORMED)
def test_malformed_payload_is_rejected_with_a_reason(payload: Any, reason: str) -> None:
    """Structural problems raise MalformedPayload (a 400) naming the bad part."""
    with pytest.raises(MalformedPayload, match=reason.replace("[", r"\[").replace("]", r"\]")):
        split_webhook(payload, 1.0)


class TestInboundMessage:
    def test_legacy_shape(self) -> None:
        """Phone only: keyed and answered on the phone, no BSUID."""
        msg = inbound_message(split_webhook(load_fixture("webhooks/text_reply_context.json"), 1)[0])

        assert (msg.wa_id, msg.user_id, msg.profile_name) == ("15550001234", None, "Ana Test")
        assert msg.context_id == "wamid.PYLOTO_OUTBOUND_0001"
        assert msg.timestamp == 1767225600
        assert msg.phone_number_id == PNID

    @pytest.mark.parametrize("name", ["text_bsuid_only.json", "text_bsuid_missing_phone.json"])
    def test_bsuid_only_shapes_treat_missing_and_empty_phone_alike(self, name: str) -> None:
        """`from: ""` and no `from` both give wa_id None and a BSUID recipient."""
        msg = inbound_message(split_webhook(load_fixture(f"webhooks/{name}"), 1.0)[0])

        assert (msg.wa_id, msg.user_id) == (None, "BR.2000000000000000003")
        assert msg.recipient == Recipient(recipient="BR.2000000000000000003")
        assert msg.profile_name == "Bia Username"

    def test_bsuid_with_phone_replies_to_the_phone(self) -> None:
        """When both are known `to` wins (DOMAIN.md); the session key is still the BSUID."""
        msg = inbound_message(split_webhook(load_fixture("webhooks/text_bsuid.json"), 1.0)[0])

        assert msg.recipient == Recipient(to="+15550001234")
        assert msg.user_id == "US.1000000000000000001"
        assert msg.conversation_key.endswith(":US.1000000000000000001")

    def test_survives_the_queue_round_trip(self) -> None:
        """The worker reads the task back from JSON and gets the same message."""
        task = split_webhook(load_fixture("webhooks/text_unicode.json"), 1.0)[0]

        again = inbound_message(Task.from_json(task.to_json()))
        assert again == inbound_message(task)
        assert again.profile_name == "José Ñúñez"

    def test_typed_message_is_attached(self) -> None:
        """Media ids, mime types and the voice flag are one attribute away."""
        msg = inbound_message(split_webhook(load_fixture("webhooks/audio_voice.json"), 1.0)[0])

        assert msg.message is not None
        content = msg.message.content
        assert isinstance(content, MediaContent)
        assert (content.id, content.voice, content.mime_type) == (
            "400000000000007",
            True,
            "audio/ogg; codecs=opus",
        )

    def test_rejects_other_task_kinds(self) -> None:
        """A status task is not a message."""
        task = split_webhook(load_fixture("webhooks/status_read.json"), 1.0)[0]
        with pytest.raises(ValueError, match="not a message"):
            inbound_message(task)

    def test_missing_optional_fields_never_drop_a_message(self) -> None:
        """No type, no timestamp, no contacts: still a MESSAGE, type UNKNOWN, timestamp 0."""
        task = split_webhook(_payload({"messages": [{"id": "wamid.BARE", "from": "1555"}]}), 1)[0]

        msg = inbound_message(task)
        assert (msg.type, msg.timestamp, msg.text, msg.wa_id) == (
            MessageType.UNKNOWN,
            0,
            None,
            "1555",
        )


def _msg(
    type_: MessageType, wa_id: str | None = "1555", user_id: str | None = None
) -> InboundMessage:
    return InboundMessage(
        id="wamid.X",
        type=type_,
        raw_type=type_.value,
        timestamp=0,
        phone_number_id=PNID,
        wa_id=wa_id,
        user_id=user_id,
        profile_name=None,
        text=None,
        context_id=None,
        conversation_key="k",
        item={},
    )


@pytest.mark.parametrize(
    ("type_", "expected"),
    [(t, t not in {MessageType.REACTION, MessageType.SYSTEM}) for t in MessageType],
)
def test_needs_reply_policy(type_: MessageType, expected: bool) -> None:
    """Everything a person wrote gets an answer; reactions and system notices do not."""
    assert needs_reply(_msg(type_)) is expected
    assert needs_reply(_msg(type_, wa_id=None, user_id="US.1")) is expected


def test_recipient_prefers_the_phone_and_normalizes_the_plus() -> None:
    """`to` is `+` and the digits once; without a phone the BSUID is the recipient."""
    assert _msg(MessageType.TEXT, wa_id="+1555").recipient == Recipient(to="+1555")
    assert _msg(MessageType.TEXT, wa_id=None, user_id="US.1").recipient == Recipient(
        recipient="US.1"
    )


class TestStatusUpdate:
    def test_sent_status_details(self) -> None:
        """Pricing category, callback data and recipient are read off the receipt."""
        task = split_webhook(load_fixture("webhooks/status_sent.json"), 1.0)[0]

        status = status_update(task)
        assert status.status is MessageStatus.SENT
        assert (status.biz_opaque_callback_data, status.pricing_category) == (
            "order-1234",
            "service",
        )
        assert (status.recipient_id, status.timestamp, status.errors) == (
            "15550001234",
            1767225600,
            (),
        )

    def test_failed_status_errors(self) -> None:
        """A failed receipt's errors are (code, title, message, details) tuples."""
        task = split_webhook(load_fixture("webhooks/status_failed.json"), 1.0)[0]

        code, title, _message, details = status_update(task).errors[0]
        assert (code, title) == (131047, "Re-engagement message")
        assert details is not None
        assert details.startswith("Message failed to send")

    def test_bsuid_only_status(self) -> None:
        """A receipt for a BSUID send has no recipient_id, only recipient_user_id."""
        task = split_webhook(load_fixture("webhooks/status_bsuid_only.json"), 1.0)[0]

        status = status_update(task)
        assert (status.recipient_id, status.recipient_user_id) == (None, "BR.2000000000000000003")
        assert task.value["contacts"][0]["user_id"] == "BR.2000000000000000003"

    def test_unknown_status_keeps_its_raw_value(self) -> None:
        """An unknown status maps to UNKNOWN but the raw value is kept."""
        task = split_webhook(load_fixture("webhooks/status_unknown.json"), 1.0)[0]

        status = status_update(task)
        assert (status.status, status.raw_status) == (MessageStatus.UNKNOWN, "teleported")
        assert task.task_id == "wamid.PYLOTO_OUT_0001:teleported"

    def test_rejects_other_task_kinds(self) -> None:
        """A message task is not a status."""
        task = split_webhook(load_fixture("webhooks/text.json"), 1.0)[0]
        with pytest.raises(ValueError, match="not a status"):
            status_update(task)


class TestModel:
    def test_enums_map_unknown_values_to_unknown(self) -> None:
        """`_missing_` instead of ValueError, for any value."""
        assert MessageType("poll") is MessageType.UNKNOWN
        assert MessageType(None) is MessageType.UNKNOWN  # type: ignore[arg-type]
        assert MessageStatus("deleted") is MessageStatus.UNKNOWN
        assert InteractiveType("call_permission_reply") is InteractiveType.UNKNOWN

    def test_whole_webhook_batch(self) -> None:
        """Entries, changes, messages, statuses and value errors of a batch."""
        model = parse_webhook(load_fixture("webhooks/batch_multi.json"))

        assert [len(e.changes) for e in model.entries] == [2, 2]
        assert len(model.messages) == 4
        assert [s.status for s in model.statuses] == [MessageStatus.DELIVERED, MessageStatus.READ]
        assert model.entries[1].time == 1767225600
        last = model.entries[1].changes[1].value
        assert last.errors == (
            ErrorDetail(
                131026,
                "Message undeliverable",
                "Message undeliverable",
                "Receiver is incapable of receiving this message",
            ),
        )
        assert last.contacts[0].user_id == "US.1000000000000000001"

    @pytest.mark.parametrize(
        ("name", "emoji", "removed"),
        [
            ("reaction.json", "❤️", False),
            ("reaction_removed_missing_emoji.json", None, True),
            ("reaction_removed_empty_emoji.json", None, True),
        ],
    )
    def test_reaction_removal_with_missing_or_empty_emoji(
        self, name: str, emoji: str | None, removed: bool
    ) -> None:
        """Both removal forms read as removed."""
        content = parse_webhook(load_fixture(f"webhooks/{name}")).messages[0].content

        assert isinstance(content, ReactionContent)
        assert (content.emoji, content.removed) == (emoji, removed)
        assert content.message_id == "wamid.PYLOTO_OUTBOUND_0007"

    def test_order_items(self) -> None:
        """Order lines keep quantities and prices."""
        content = parse_webhook(load_fixture("webhooks/order.json")).messages[0].content

        assert isinstance(content, OrderContent)
        assert [(i.product_retailer_id, i.quantity, i.item_price) for i in content.items] == [
            ("sku-001", 2, 12.5),
            ("sku-002", 1, 30.0),
        ]

    def test_context_referral_and_message_errors(self) -> None:
        """Forward flags, the ad referral and message-level errors are typed."""
        forwarded = parse_webhook(load_fixture("webhooks/text_forwarded.json")).messages[0]
        referred = parse_webhook(load_fixture("webhooks/text_referral.json")).messages[0]
        unsupported = parse_webhook(load_fixture("webhooks/unsupported.json")).messages[0]

        assert forwarded.context is not None
        assert forwarded.context.forwarded is True
        assert referred.referral is not None
        assert referred.referral.ctwa_clid == "PYLOTO_TEST_CLID"
        assert referred.referral.raw["welcome_message"] == {"text": "Hello! How can we help?"}
        assert [e.code for e in unsupported.errors] == [131051]

    def test_bsuid_fields(self) -> None:
        """`from_user_id`, parent ids and the contact's username are read."""
        model = parse_webhook(load_fixture("webhooks/text_bsuid.json"))
        bia = parse_webhook(load_fixture("webhooks/text_bsuid_only.json")).entries[0]

        message = model.messages[0]
        assert (message.from_, message.from_user_id, message.from_parent_user_id) == (
            "15550001234",
            "US.1000000000000000001",
            "US.ENT.1000000000000000009",
        )
        contact = bia.changes[0].value.contacts[0]
        assert (contact.wa_id, contact.username) == (None, "@bia.test")

    def test_oddly_typed_fields_do_not_raise(self) -> None:
        """Wrong types become None rather than errors."""
        message = Message.from_dict(
            {
                "id": 5,
                "type": "location",
                "timestamp": "soon",
                "location": {"latitude": "x"},
                "context": "nope",
                "errors": "none",
            }
        )

        assert (message.id, message.timestamp, message.context, message.errors) == (
            None,
            0,
            None,
            (),
        )
        assert message.text is None
