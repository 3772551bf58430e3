"""The webhook over the embedded SQLite queue with hostile text and a full disk.

- Lone surrogates (JSON `"\\ud800"` escapes) in any field: 200, every item stored, with U+FFFD
  in their place.
- An item the store refuses on its own data costs only that item, never its POST's others.
- A full database (SQLite's `max_page_count` on the writer's connection): 503, never 200;
  nothing answered 200 is lost, and the same deliveries succeed once space returns, with no
  restart.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import httpx
import pytest

from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.bootstrap import Roles, open_roles
from pyloto_cli.domain.signature import sign
from pyloto_cli.domain.task import EnqueueResult, Task
from pyloto_cli.ports import MessageQueue
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app
from pyloto_cli.web.intake import Intake
from tests.unit.pipeline_support import message, webhook

SECRET = "test-app-secret"
LEASE_S = 30.0


@dataclass
class App:
    roles: Roles
    intake: Intake
    http: httpx.AsyncClient

    async def post(self, body: bytes) -> httpx.Response:
        headers = {"X-Hub-Signature-256": sign(SECRET.encode(), body)}
        return await self.http.post("/webhooks/whatsapp", content=body, headers=headers)

    async def queue(self) -> MessageQueue:
        queue = (await self.roles.queue_parts()).queue
        assert queue is not None
        return queue

    async def depth(self) -> int:
        assert self.intake.admin is not None
        return (await self.intake.admin.stats()).depth

    def queue_db(self) -> SqliteDatabase:
        [db] = [self.roles.sqlite.get(p) for p in self.roles.sqlite.paths() if p.name == "queue.db"]
        assert db is not None
        return db


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    """The webhook over the default backends (SQLite queue and stores), no worker."""
    settings = make_settings()
    async with open_roles(settings) as roles:
        intake = await roles.intake()
        transport = httpx.ASGITransport(app=create_app(settings, intake))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield App(roles, intake, http)


def escaped(payload: object) -> bytes:
    """JSON as Meta writes it (ASCII, non-ASCII escaped): a lone surrogate becomes "\\ud800"."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()


LONE = "\ud800"  # what json.loads makes of the escape "\ud800"; escaped() writes it back


async def test_lone_surrogates_in_any_field_answer_200_and_every_item_is_stored(app: App) -> None:
    """Text, a wamid, a contact's name, an unknown key, a status id and a whole non-message
    field: every item of the POST is stored, U+FFFD where each lone surrogate was."""
    body = webhook(
        [
            message("wamid.A", f"olá {LONE} tudo bem"),
            message(f"wamid.B{LONE}", "b", sender="15550002222", **{f"x{LONE}": {"y": LONE}}),
            message("wamid.C", "third, untouched 😀", sender="15550003333"),
        ],
        statuses=[{"id": f"wamid.S{LONE}", "status": "read", "timestamp": "1767225600"}],
        contacts=[{"profile": {"name": f"Ana {LONE}"}, "wa_id": "15550001234"}],
    )
    body["entry"][0]["changes"].append({"field": "account_update", "value": {"event": LONE}})
    raw = escaped(body)
    assert b"\\ud800" in raw

    response = await app.post(raw)

    assert response.status_code == 200, response.text
    leased = {lease.task.task_id: lease.task for lease in await (await app.queue()).lease(10, 30)}
    assert len(leased) == 5
    assert leased["wamid.A"].item["text"]["body"] == "olá \ufffd tudo bem"
    assert leased["wamid.A"].value["contacts"][0]["profile"]["name"] == "Ana \ufffd"
    assert leased["wamid.B\ufffd"].item["x\ufffd"] == {"y": "\ufffd"}
    assert leased["wamid.C"].item["text"]["body"] == "third, untouched 😀"
    assert "wamid.S\ufffd:read" in leased
    [event] = [task for task in leased.values() if task.field == "account_update"]
    assert event.item == {"event": "\ufffd"}


async def test_a_redelivery_of_a_body_with_lone_surrogates_is_a_duplicate(app: App) -> None:
    """Replacement is deterministic: the redelivered wamid is found, not stored twice."""
    raw = escaped(webhook([message(f"wamid.{LONE}", LONE)]))
    assert (await app.post(raw)).status_code == 200
    assert (await app.post(raw)).status_code == 200
    assert await app.depth() == 1


class RefusingSink:
    """Refuses any batch holding `bad`, as a store refuses data it cannot encode."""

    def __init__(self, inner: Intake, bad: str) -> None:
        self.inner, self.bad, self.calls = inner.sink, bad, 0

    async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
        self.calls += 1
        if any(task.task_id == self.bad for task in tasks):
            raise ValueError("cannot encode this item")
        return await self.inner.enqueue(tasks)


async def test_an_item_the_store_refuses_costs_only_itself(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """One item the store cannot take: the POST's other items are stored and the answer is
    200 (a redelivery would fail alike); the item is logged, not silently dropped."""
    app.intake.sink = RefusingSink(app.intake, bad="wamid.BAD")
    senders = ("15550001111", "15550002222", "15550003333")
    wamids = ("wamid.1", "wamid.BAD", "wamid.3")
    items = [message(m, "hi", sender=s) for m, s in zip(wamids, senders, strict=True)]
    body = escaped(webhook(items))
    with caplog.at_level(logging.ERROR, logger="pyloto"):
        response = await app.post(body)
    assert response.status_code == 200
    assert sorted(t.task.task_id for t in await (await app.queue()).lease(10, LEASE_S)) == [
        "wamid.1",
        "wamid.3",
    ]
    assert [r.getMessage() for r in caplog.records] == ["webhook_item_unstorable"]


async def set_max_pages(db: SqliteDatabase, pages: int | None) -> int:
    """Cap the file at its current size (None) or at `pages`, on the writer's connection."""

    def op(conn: sqlite3.Connection) -> int:
        limit = pages if pages is not None else conn.execute("PRAGMA page_count").fetchone()[0]
        return int(conn.execute(f"PRAGMA max_page_count = {limit}").fetchone()[0])

    return await db.run(op)


async def test_a_full_database_answers_503_loses_nothing_and_recovers_without_restart(
    app: App,
) -> None:
    """The queue file cannot grow: every webhook that needs a new page gets 503 (Meta
    redelivers), none gets 200 with its items unstored; once it can grow again, the very same
    deliveries are stored, with no restart."""
    first = escaped(webhook([message("wamid.before", "stored before the disk filled")]))
    assert (await app.post(first)).status_code == 200
    await set_max_pages(app.queue_db(), None)

    bodies = [
        escaped(webhook([message(f"wamid.full{i}", "x" * 20_000, sender=f"1555000{i:04}")]))
        for i in range(5)
    ]
    answers = [(await app.post(body)).status_code for body in bodies]

    assert answers == [503] * 5
    assert await app.depth() == 1  # nothing half-stored, the earlier task kept

    await set_max_pages(app.queue_db(), 1_000_000)
    answers = [(await app.post(body)).status_code for body in bodies]
    assert answers == [200] * 5
    leased = await (await app.queue()).lease(10, LEASE_S)
    assert sorted(t.task.task_id for t in leased) == [
        "wamid.before",
        *(f"wamid.full{i}" for i in range(5)),
    ]
