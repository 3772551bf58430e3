"""Every webhook fixture splits into the expected tasks and normalized messages."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pyloto_cli.domain.task import Task, TaskKind
from pyloto_cli.domain.webhook import (
    MessageStatus,
    MessageType,
    Recipient,
    event_reason,
    inbound_message,
    needs_reply,
    split_webhook,
    status_update,
)
from pyloto_cli.domain.webhook_model import parse_webhook
from tests.conftest import FIXTURES, load_fixture

PNID, PNID2 = "200000000000001", "200000000000002"
ANA, ANA_BSUID = "15550001234", "US.1000000000000000001"
RUI_BSUID = "US.1000000000000000002"
BIA_BSUID = "BR.2000000000000000003"
TO_ANA = Recipient(to=f"+{ANA}")
TO_BIA = Recipient(recipient=BIA_BSUID)
UNICODE = "Olá, ação às 9h? 👍🏽 مرحبا، هل أنتم مفتوحون؟ — café ☕"


@dataclass(frozen=True)
class Msg:
    """An expected MESSAGE task."""

    type: MessageType
    text: str | None
    key: str = f"{PNID}:{ANA}"
    recipient: Recipient = TO_ANA
    reply: bool = True


@dataclass(frozen=True)
class St:
    """An expected STATUS task."""

    wamid: str
    status: MessageStatus


@dataclass(frozen=True)
class Ev:
    """An expected EVENT task."""

    field: str
    reason: str | None = None
    key: str | None = None  # a user's conversation (echoes, preferences); else its own
    echo: bool = False  # task id `echo:{wamid}` instead of a content hash


Expected = Msg | St | Ev
T = MessageType
OUT = "wamid.PYLOTO_OUT_0001"

CASES: dict[str, list[Expected]] = {
    "text.json": [Msg(T.TEXT, "Hi, do you deliver on Sundays?")],
    "text_reply_context.json": [Msg(T.TEXT, "Yes, that one please")],
    "text_forwarded.json": [Msg(T.TEXT, "Look at this offer")],
    "text_referral.json": [Msg(T.TEXT, "I saw your ad, is it still on?")],
    "text_unicode.json": [Msg(T.TEXT, UNICODE)],
    "interactive_button_reply.json": [Msg(T.INTERACTIVE, "Yes, book it")],
    "interactive_list_reply.json": [Msg(T.INTERACTIVE, "Express\nNext day, 9.90")],
    "interactive_nfm_reply.json": [
        Msg(T.INTERACTIVE, '{"flow_token":"PYLOTO_FLOW","size":"M"}'),
    ],
    "interactive_value_error.json": [
        Msg(T.INTERACTIVE, None, key=f"{PNID}:{ANA_BSUID}"),
        Ev("messages"),
    ],
    "button_template.json": [Msg(T.BUTTON, "Stop promotions")],
    "image.json": [Msg(T.IMAGE, None)],
    "image_caption.json": [Msg(T.IMAGE, "Is this the right part?")],
    "video_caption.json": [Msg(T.VIDEO, "The noise it makes")],
    "document_caption.json": [Msg(T.DOCUMENT, "My invoice")],
    "sticker.json": [Msg(T.STICKER, None)],
    "audio.json": [Msg(T.AUDIO, None)],
    "audio_voice.json": [Msg(T.AUDIO, None)],
    "location.json": [Msg(T.LOCATION, "Test Cafe\n1 Example Street, Lisbon")],
    "location_pin.json": [Msg(T.LOCATION, None)],
    "contacts.json": [Msg(T.CONTACTS, "Bruno Example, Carla Sample")],
    "reaction.json": [Msg(T.REACTION, "❤️", reply=False)],
    "reaction_removed_missing_emoji.json": [Msg(T.REACTION, None, reply=False)],
    "reaction_removed_empty_emoji.json": [Msg(T.REACTION, None, reply=False)],
    "order.json": [Msg(T.ORDER, "Two of these, please")],
    "system_user_changed_number.json": [
        Msg(T.SYSTEM, "User Ana Test changed from 15550001234 to 15550004321", reply=False),
    ],
    "unsupported.json": [Msg(T.UNSUPPORTED, None)],
    "unknown_type.json": [Msg(T.UNKNOWN, None)],
    "message_without_id.json": [Ev("messages", reason="message_without_id")],
    "duplicate_wamid.json": [Msg(T.TEXT, "Hello"), Msg(T.TEXT, "Second message")],
    "text_bsuid.json": [Msg(T.TEXT, "Hello from the 2026 shape", key=f"{PNID}:{ANA_BSUID}")],
    "text_bsuid_only.json": [
        Msg(T.TEXT, "Do you have it in blue?", key=f"{PNID}:{BIA_BSUID}", recipient=TO_BIA),
    ],
    "text_bsuid_missing_phone.json": [
        Msg(T.TEXT, "No phone keys at all", key=f"{PNID}:{BIA_BSUID}", recipient=TO_BIA),
    ],
    "text_bsuid_contact_only.json": [
        Msg(T.TEXT, "BSUID only in the contact", key=f"{PNID}:{ANA_BSUID}"),
    ],
    "status_sent.json": [St(OUT, MessageStatus.SENT)],
    "status_delivered.json": [St(OUT, MessageStatus.DELIVERED)],
    "status_read.json": [St(OUT, MessageStatus.READ)],
    "status_played.json": [St("wamid.PYLOTO_VOICE_OUT_0001", MessageStatus.PLAYED)],
    "status_failed.json": [St("wamid.PYLOTO_OUT_FAILED_0001", MessageStatus.FAILED)],
    "status_bsuid_only.json": [St("wamid.PYLOTO_OUT_BSUID_0001", MessageStatus.DELIVERED)],
    "status_unknown.json": [St(OUT, MessageStatus.UNKNOWN)],
    "status_only_batch.json": [
        St("wamid.PYLOTO_BATCH_OUT_0001", MessageStatus.SENT),
        St("wamid.PYLOTO_BATCH_OUT_0001", MessageStatus.DELIVERED),
        St("wamid.PYLOTO_BATCH_OUT_0001", MessageStatus.READ),
        St("wamid.PYLOTO_BATCH_OUT_0002", MessageStatus.SENT),
    ],
    "errors_value_level.json": [Ev("messages")],
    "template_status_update.json": [Ev("message_template_status_update")],
    "account_update.json": [Ev("account_update")],
    "user_preferences.json": [Ev("user_preferences", key=f"{PNID}:{ANA}")],
    "user_preferences_resume.json": [Ev("user_preferences", key=f"{PNID}:{ANA_BSUID}")],
    "echo_text.json": [Ev("smb_message_echoes", key=f"{PNID}:{ANA}", echo=True)],
    "echo_image.json": [Ev("smb_message_echoes", key=f"{PNID}:{ANA}", echo=True)],
    "echo_revoke.json": [Ev("smb_message_echoes", key=f"{PNID}:{ANA}", echo=True)],
    "echo_edit.json": [Ev("smb_message_echoes", key=f"{PNID}:{ANA}", echo=True)],
    "echo_bsuid.json": [Ev("smb_message_echoes", key=f"{PNID}:{BIA_BSUID}", echo=True)],
    "echo_without_recipient.json": [Ev("smb_message_echoes", reason="echo_without_recipient")],
    "phone_number_quality_update.json": [Ev("phone_number_quality_update")],
    "unknown_field.json": [Ev("quantum_entanglement_update")],
    "batch_multi.json": [
        Msg(T.TEXT, "first", key=f"{PNID}:{ANA_BSUID}"),
        Msg(
            T.TEXT,
            "second from Rui",
            key=f"{PNID}:{RUI_BSUID}",
            recipient=Recipient(to="+15550005678"),
        ),
        Msg(T.IMAGE, "third, a picture", key=f"{PNID}:{ANA_BSUID}"),
        St("wamid.PYLOTO_BATCH_OUT_0009", MessageStatus.DELIVERED),
        St("wamid.PYLOTO_BATCH_OUT_0009", MessageStatus.READ),
        Ev("message_template_status_update"),
        Msg(T.REACTION, "👍", key=f"{PNID}:{ANA_BSUID}", reply=False),
        Ev("messages"),
    ],
    "multi_number.json": [
        Msg(T.TEXT, "to the first number", key=f"{PNID}:{ANA_BSUID}"),
        Msg(T.TEXT, "to the second number", key=f"{PNID2}:{ANA_BSUID}"),
    ],
}


def _check(task: Task, expected: Expected) -> None:
    if isinstance(expected, Msg):
        assert task.kind is TaskKind.MESSAGE
        msg = inbound_message(task)
        assert (msg.type, msg.text, msg.conversation_key) == (
            expected.type,
            expected.text,
            expected.key,
        )
        assert task.task_id == msg.id
        assert msg.recipient == expected.recipient
        assert needs_reply(msg) is expected.reply
    elif isinstance(expected, St):
        assert task.kind is TaskKind.STATUS
        status = status_update(task)
        assert (status.id, status.status) == (expected.wamid, expected.status)
        assert task.task_id == f"{expected.wamid}:{status.raw_status}"
        assert task.conversation_key == f"status:{expected.wamid}"
    else:
        assert task.kind is TaskKind.EVENT
        assert task.field == expected.field
        assert task.task_id.startswith("echo:wamid." if expected.echo else "evt:")
        assert task.conversation_key == (expected.key or f"event:{task.task_id}")
        assert event_reason(task) == expected.reason


def test_every_fixture_file_has_an_expectation() -> None:
    """A fixture added without an expectation (or a stale expectation) fails here."""
    files = {path.name for path in (FIXTURES / "webhooks").glob("*.json")}
    assert files == set(CASES)


@pytest.mark.parametrize(("name", "expected"), list(CASES.items()), ids=list(CASES))
def test_fixture_splits_into_expected_tasks(name: str, expected: list[Expected]) -> None:
    """Kinds, count and order, conversation keys, text, recipient and reply decision."""
    tasks = split_webhook(load_fixture(f"webhooks/{name}"), received_at=1.0)

    assert len(tasks) == len(expected)
    for task, want in zip(tasks, expected, strict=True):
        _check(task, want)
        assert Task.from_json(task.to_json()) == task


@pytest.mark.parametrize("name", list(CASES))
def test_fixture_parses_into_the_typed_model(name: str) -> None:
    """The whole-webhook model reads every fixture, messages and statuses included."""
    payload = load_fixture(f"webhooks/{name}")
    model = parse_webhook(payload)
    raw_messages = [
        m for e in payload["entry"] for c in e["changes"] for m in c["value"].get("messages", [])
    ]
    assert [m.raw for m in model.messages] == raw_messages
    assert model.object == "whatsapp_business_account"
