"""Ids that go into Graph requests: checked in the domain, and again by the sender.

A phone_number_id is a path segment of the Graph URL: one that could move or cut the path
(`/`, `..`, `?`, `#`, control characters, non-ASCII digits) must never reach a URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from pyloto_cli.adapters.sender.graph import GraphSender
from pyloto_cli.domain import ids
from pyloto_cli.domain.errors import InvalidTask, PermanentError
from pyloto_cli.domain.task import Task, TaskKind
from pyloto_cli.domain.webhook import inbound_message, split_webhook, status_update
from tests.unit.pipeline_support import message, webhook

HOSTILE_NUMBERS = [
    "../../../v21.0/X",
    "106540352242922/../../me",
    "106540352242922?fields=id",
    "106540352242922#",
    "1065403522\x00",
    "1065403522\r\nX-Evil: 1",
    "\uff11\uff10\uff16",  # fullwidth digits: str.isdigit() says yes, a URL says otherwise
    " 106540352242922",
    "",
    "1" * 33,
]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_a_phone_number_id_that_is_not_ascii_digits_is_refused(value: str) -> None:
    assert not ids.is_numeric_id(value)
    with pytest.raises(InvalidTask, match="phone_number_id"):
        ids.phone_number_id(value)


@pytest.mark.parametrize("value", ["106540352242922", "1", "9" * 32])
def test_meta_phone_number_ids_pass(value: str) -> None:
    assert ids.phone_number_id(value) == value


@pytest.mark.parametrize("value", ["wamid.\x01", "wamid.\u202e", "wamid.a\nb", "", "w" * 513])
def test_a_message_id_with_a_control_character_or_no_sane_length_is_refused(value: str) -> None:
    with pytest.raises(InvalidTask, match="message id"):
        ids.message_id(value)


def test_a_reason_shows_a_hostile_id_escaped_and_short() -> None:
    """The reason lands in dead letters and logs: no raw control character, bounded."""
    with pytest.raises(InvalidTask) as caught:
        ids.phone_number_id("\x1b[2J" + "9" * 200)
    assert "\x1b" not in caught.value.reason
    assert "\\x1b" in caught.value.reason
    assert len(caught.value.reason) < 120


@pytest.mark.parametrize("pnid", ["../../../v21.0/X", "123?x=1", "1/2"])
def test_a_message_to_an_invalid_number_is_an_invalid_task(pnid: str) -> None:
    [task] = split_webhook(webhook([message("wamid.1", "hi")], pnid=pnid), 1.0)
    with pytest.raises(InvalidTask):
        inbound_message(task)


def test_a_stored_task_that_does_not_parse_is_an_invalid_task() -> None:
    """An int of 400 digits as a price, a timestamp no store can hold: InvalidTask, a
    PermanentError (dead-lettered at once), not an OverflowError (a retry)."""
    item = {"id": "wamid.O", "type": "order", "order": {"product_items": [{"item_price": 10**400}]}}
    order = Task("wamid.O", TaskKind.MESSAGE, "1:2", "1", 1.0, item, {"messages": [item]})
    with pytest.raises(InvalidTask, match="OverflowError"):
        inbound_message(order)
    receipt = {"id": "wamid.S", "status": "read", "timestamp": 2**70}
    status = Task("wamid.S:read", TaskKind.STATUS, "status:wamid.S", "1", 1.0, receipt, {})
    with pytest.raises(InvalidTask, match="timestamp"):
        status_update(status)
    assert issubclass(InvalidTask, PermanentError)


@pytest.fixture
async def sender() -> AsyncIterator[GraphSender]:
    async with httpx.AsyncClient() as client:
        yield GraphSender(
            client, access_token="EAAG-token", api_version="v25.0", base_url="https://graph.test"
        )


@pytest.fixture
def graph() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        router.route().respond(200, json={"messages": [{"id": "wamid.OUT"}]})
        yield router


@pytest.mark.parametrize("pnid", HOSTILE_NUMBERS)
async def test_the_sender_never_builds_a_url_from_an_invalid_number(
    sender: GraphSender, graph: respx.MockRouter, pnid: str
) -> None:
    """Whatever a caller passes, no request leaves with the token: send and mark_read."""
    with pytest.raises(InvalidTask):
        await sender.send(pnid, {"messaging_product": "whatsapp", "to": "+1555", "type": "text"})
    with pytest.raises(InvalidTask):
        await sender.mark_read(pnid, "wamid.IN")
    assert graph.calls.call_count == 0
    await sender.send("106540352242922", {"to": "+1555", "type": "text"})
    assert [str(call.request.url) for call in graph.calls] == [
        "https://graph.test/v25.0/106540352242922/messages"
    ]
