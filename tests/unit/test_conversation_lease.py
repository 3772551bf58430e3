"""One `/tasks/process` call per conversation at a time (Cloud Tasks does not order tasks)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from pyloto_cli.adapters.deadletters.memory import MemoryDeadLetterStore
from pyloto_cli.adapters.dedupe.sqlite import SqliteDeduper
from pyloto_cli.bootstrap import open_roles, retry_policy
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.pipeline.conversation_lease import ConversationLease
from pyloto_cli.ports import ClaimResult, Deduper, SendResult
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app
from pyloto_cli.web.tasks import BUSY_RETRY_S, PushRole
from pyloto_cli.web.tasks_auth import TaskAuthenticator
from tests.unit.test_tasks_endpoint import TOKEN, FakeSink, message_task, push_pipeline
from tests.waiting import wait_until

USER = "15550007777"


class GatedSender:
    """A `Sender` whose first send waits for `gate`; records when each send starts and ends."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.events: list[str] = []

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        wamid = str(body.get("biz_opaque_callback_data"))
        self.events.append(f"start {wamid}")
        if len(self.events) == 1:
            await self.gate.wait()
        self.events.append(f"end {wamid}")
        return SendResult(message_id=f"wamid.out.{len(self.events)}")

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        return None

    async def upload_media(self, phone_number_id: str, path: Path, mime_type: str) -> str:
        raise AssertionError("this test uploads no media")


class CountingDeduper:
    """A `Deduper` that counts the claims of conversation leases (to know a call is waiting)."""

    def __init__(self, inner: Deduper) -> None:
        self.inner = inner
        self.lease_claims = 0

    async def claim(self, key: str, ttl_s: float) -> ClaimResult:
        if key.startswith("conversation-lease:"):
            self.lease_claims += 1
        return await self.inner.claim(key, ttl_s)

    async def mark_done(self, key: str, ttl_s: float) -> None:
        await self.inner.mark_done(key, ttl_s)

    async def release(self, key: str) -> None:
        await self.inner.release(key)


@dataclasses.dataclass
class Harness:
    http: httpx.AsyncClient
    sender: GatedSender
    sink: FakeSink
    deduper: CountingDeduper


def harness_for(wait_s: float) -> Callable[..., AsyncIterator[Harness]]:
    async def build(make_settings: Callable[..., Settings]) -> AsyncIterator[Harness]:
        settings = make_settings(
            queue_backend="memory", session_store_backend="memory", dedupe_backend="memory"
        )
        async with open_roles(settings) as roles:
            stores, intake = await roles.stores(), await roles.intake()
            sender, sink = GatedSender(), FakeSink()
            deduper = CountingDeduper(stores.deduper)
            pipeline = await push_pipeline(roles, settings, sender, deduper=deduper)
            role = PushRole(
                pipeline=pipeline,
                auth=TaskAuthenticator(token=TOKEN),
                scheduler=sink,
                dead_letters=MemoryDeadLetterStore(),
                policy=retry_policy(settings),
                lease=ConversationLease(deduper, wait_s=wait_s, ttl_s=60.0),
            )
            transport = httpx.ASGITransport(app=create_app(settings, intake, role))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                yield Harness(http, sender, sink, deduper)

    return build


harness = pytest.fixture(harness_for(wait_s=10.0), name="harness")
impatient = pytest.fixture(harness_for(wait_s=0.1), name="impatient")


async def post(h: Harness, wamid: str) -> httpx.Response:
    task = message_task(wamid, USER)
    return await h.http.post(
        "/tasks/process", content=task.to_json(), headers={"X-Pyloto-Task-Token": TOKEN}
    )


async def test_the_second_call_of_a_conversation_starts_after_the_first_ends(
    harness: Harness,
) -> None:
    first = asyncio.create_task(post(harness, "wamid.LEASE.1"))
    await wait_until(lambda: harness.sender.events, within=5.0, what="the first send")
    second = asyncio.create_task(post(harness, "wamid.LEASE.2"))
    await wait_until(
        lambda: harness.deduper.lease_claims >= 3, within=5.0, what="the second call waiting"
    )
    assert harness.sender.events == ["start wamid.LEASE.1"]  # it waits, it does not run
    harness.sender.gate.set()
    responses = await asyncio.gather(first, second)
    assert [r.status_code for r in responses] == [200, 200]
    assert harness.sender.events == [
        "start wamid.LEASE.1",
        "end wamid.LEASE.1",
        "start wamid.LEASE.2",
        "end wamid.LEASE.2",
    ]


async def test_a_conversation_busy_past_the_wait_is_put_back_as_the_same_attempt(
    impatient: Harness,
) -> None:
    first = asyncio.create_task(post(impatient, "wamid.LEASE.3"))
    await wait_until(lambda: impatient.sender.events, within=5.0, what="the first send")
    busy = await post(impatient, "wamid.LEASE.4")
    assert busy.status_code == 200  # a 5xx would count as an attempt in Cloud Tasks
    assert busy.headers["Retry-After"] == str(round(BUSY_RETRY_S))
    (task, delay, attempt) = impatient.sink.rescheduled[0]
    assert (task.task_id, delay, attempt) == ("wamid.LEASE.4", BUSY_RETRY_S, 1)
    impatient.sender.gate.set()
    assert (await first).status_code == 200
    assert impatient.sender.events == ["start wamid.LEASE.3", "end wamid.LEASE.3"]


async def test_the_lease_holds_across_processes_sharing_the_sqlite_file(tmp_path: Path) -> None:
    """Two dedupers on one state file stand for two processes: SQLite's write lock decides."""
    path = tmp_path / "state.db"
    async with SqliteDeduper(path) as one, SqliteDeduper(path) as two:
        first = ConversationLease(one, wait_s=0.0, ttl_s=60.0)
        second = ConversationLease(two, wait_s=0.0, ttl_s=60.0)
        async with first.hold("pnid:user") as held:
            assert held
            async with second.hold("pnid:user") as also:
                assert not also
            async with second.hold("pnid:other") as other:
                assert other  # another conversation is not held back
        async with second.hold("pnid:user") as after:
            assert after  # released with the block
