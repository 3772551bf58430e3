"""Real processes sharing one Redis Streams queue: `pyloto serve --no-worker` + two `pyloto worker`.

Sessions and dedupe markers are in the same Redis. Replies are checked at a fake Graph server by
`biz_opaque_callback_data` (the inbound wamid, which carries the message's index in its
conversation): none lost, none doubled, and each recipient's replies in the order its messages
arrived. Then one worker is killed with SIGKILL while it holds leases; the other reclaims them
once the killed one's heartbeat has lapsed (or its short lease has expired, whichever first).

The Redis adapters' key prefix (`pyloto:`) is not a setting, so each test takes a Redis database
of its own (an empty one of 1..15) and deletes its `pyloto:*` keys afterwards; never FLUSHDB.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from pyloto_cli.adapters.redis_db import text
from pyloto_cli.domain.signature import sign
from tests.e2e.serve_process import kill9, terminate
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SECRET = "e2e-redis-app-secret"
KEY_PREFIX = "pyloto:"  # the Redis adapters' default; not configurable through settings
STREAM = f"{KEY_PREFIX}q:stream"
GROUP = "workers"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def user_of(conversation: int) -> str:
    return f"1555100{conversation:04d}"


def wamid_of(conversation: int, index: int) -> str:
    return f"wamid.e2e.redis.c{conversation:02d}.m{index:03d}"


def webhook(conversation: int, index: int) -> bytes:
    user = user_of(conversation)
    message = {
        "from": user,
        "id": wamid_of(conversation, index),
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": f"mensagem {index} 😊"},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "900000000000002"},
        "contacts": [{"profile": {"name": "U"}, "wa_id": user}],
        "messages": [message],
    }
    change = {"field": "messages", "value": value}
    body = {"object": "whatsapp_business_account", "entry": [{"id": "9001", "changes": [change]}]}
    return json.dumps(body).encode()


# --- an isolated Redis database -----------------------------------------------------------------


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


@pytest.fixture
def redis_db_url(redis_url: str) -> Iterator[str]:
    """An empty Redis database of this test's own; its `pyloto:*` keys are deleted afterwards."""
    for db in range(1, 16):
        url = _with_db(redis_url, db)
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() != 0:
                continue
            client.set(f"{KEY_PREFIX}e2e-owner", str(os.getpid()))  # claim it
            try:
                yield url
            finally:
                keys = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=500))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
            return
        finally:
            client.close()
    pytest.fail(f"no empty Redis database among 1..15 at {redis_url}")


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """One pyloto process with its log."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, cwd: Path) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyloto_cli", *self.args],
                env=self.env,
                cwd=cwd,  # no stray .env is read
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, chars: int = 2000) -> str:
        return f"--- {self.name}:\n{self.log.read_text(errors='replace')[-chars:]}"

    def events(self, event: str) -> int:
        """How many times the process logged `event` (JSON log lines)."""
        marker = f'"event": "{event}"'
        return sum(marker in line for line in self.log.read_text(errors="replace").splitlines())

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited: {self.tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)


@dataclass
class Cluster:
    """`serve --no-worker` plus two `worker` processes on one Redis database."""

    workdir: Path
    redis_url: str
    graph_url: str
    lease_s: float
    web_port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self, name: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYLOTO_DATA_DIR": str(self.workdir / name),
            "WHATSAPP_APP_SECRET": SECRET,
            "WHATSAPP_VERIFY_TOKEN": "e2e-verify",
            "WHATSAPP_ACCESS_TOKEN": "e2e-token",
            "GRAPH_API_URL": self.graph_url,
            "OPENAI_ENABLED": "false",
            "QUEUE_BACKEND": "redis",
            "SESSION_STORE_BACKEND": "redis",
            "DEDUPE_BACKEND": "redis",
            "REDIS_URL": self.redis_url,
            "PYLOTO_LEASE_SECONDS": str(self.lease_s),
            "PYLOTO_RETRY_BASE_SECONDS": "0.1",
            "PYLOTO_LOG_FORMAT": "json",
            "PYLOTO_PORT": str(self.web_port),
        }

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs.values())

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        specs = {"web": ["serve", "--no-worker"], "worker-a": ["worker"], "worker-b": ["worker"]}
        for name, args in specs.items():
            proc = Proc(name, args, self.env(name), self.workdir / f"{name}.log")
            proc.spawn(self.workdir)
            self.procs[name] = proc
        async with httpx.AsyncClient() as http:
            await wait_until(
                lambda: self._ready(http),
                within=30.0,
                interval=0.05,
                what="processes ready",
                details=self.logs,
            )

    async def _ready(self, http: httpx.AsyncClient) -> bool:
        for proc in self.procs.values():
            proc.check_alive()
        try:
            if (await http.get(f"{self.url}/readyz")).status_code != 200:
                return False
        except httpx.TransportError:
            return False
        # a consumer joins the group only once it is given an entry: wait for the runtimes
        return all(
            '"runtime_opened"' in self.procs[w].log.read_text(errors="replace")
            for w in ("worker-a", "worker-b")
        )

    def consumer_of(self, worker: str, consumers: dict[str, int]) -> str | None:
        """The group consumer a worker process reads as (its name carries the pid)."""
        marker = f"-{self.procs[worker].pid}-"
        return next((name for name in consumers if marker in name), None)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


async def group_consumers(client: aioredis.Redis) -> dict[str, int]:
    """Consumer name -> pending entries, for the queue's group (empty before it exists)."""
    try:
        infos: list[dict[Any, Any]] = await client.xinfo_consumers(STREAM, GROUP)
    except redis.ResponseError:
        return {}
    return {text(i["name"]): int(i["pending"]) for i in infos}


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraphServer]:
    async with FakeGraphServer() as server:
        yield server


@pytest.fixture
async def rclient(redis_db_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_db_url)
    try:
        yield client
    finally:
        await client.aclose()


def make_cluster(tmp_path: Path, redis_db_url: str, graph: FakeGraphServer) -> Cluster:
    return Cluster(tmp_path / "cluster", redis_db_url, graph.url, lease_s=2.0)  # short leases


# --- helpers ------------------------------------------------------------------------------------


async def post(http: httpx.AsyncClient, cluster: Cluster, conversation: int, index: int) -> None:
    body = webhook(conversation, index)
    response = await http.post(
        f"{cluster.url}/webhooks/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": sign(SECRET.encode(), body)},
    )
    assert response.status_code == 200, response.text


async def post_all(http: httpx.AsyncClient, cluster: Cluster, conversations: int, per: int) -> None:
    """`per` messages in each conversation: in order within one, concurrent across them."""
    for index in range(per):
        await asyncio.gather(*(post(http, cluster, c, index) for c in range(conversations)))


def replies_by_recipient(graph: FakeGraphServer) -> dict[str, list[str]]:
    """Each recipient's replied-to wamids, in the order the sends arrived."""
    seen: dict[str, list[str]] = defaultdict(list)
    for request in graph.messages():
        seen[str(request.body.get("to"))].append(str(request.body["biz_opaque_callback_data"]))
    return dict(seen)


def answered(graph: FakeGraphServer) -> set[str]:
    return {str(r.body.get("biz_opaque_callback_data")) for r in graph.messages()}


async def wait_all_answered(
    graph: FakeGraphServer, cluster: Cluster, wamids: set[str], within_s: float = 20.0
) -> None:

    def missing() -> str:
        never = sorted(wamids - answered(graph))
        return f"{len(never)} never answered, e.g. {never[:5]}\n{cluster.logs()}"

    await wait_until(
        lambda: wamids <= answered(graph), within=within_s, what="every reply", details=missing
    )


async def queue_counts(http: httpx.AsyncClient, cluster: Cluster) -> tuple[int, int]:
    """(waiting tasks, dead letters) as the web process's `/readyz` reports them."""
    queue = (await http.get(f"{cluster.url}/readyz")).json()["queue"]
    return int(queue["depth"]), int(queue["dead"])


async def wait_drained(http: httpx.AsyncClient, cluster: Cluster, within_s: float = 10.0) -> None:
    """Until the queue is empty with no dead letter (acks trail the replies they follow)."""

    async def drained() -> bool:
        return await queue_counts(http, cluster) == (0, 0)

    await wait_until(
        drained, within=within_s, what="queue drained (depth, dead == 0, 0)", details=cluster.logs
    )


def expected_order(conversations: int, per: int) -> dict[str, list[str]]:
    return {f"+{user_of(c)}": [wamid_of(c, i) for i in range(per)] for c in range(conversations)}


# --- the tests ----------------------------------------------------------------------------------


async def test_two_workers_share_the_queue_in_order(
    tmp_path: Path, redis_db_url: str, graph: FakeGraphServer
) -> None:
    """500 messages over 25 conversations: all answered once, in order per conversation."""
    conversations, per = 25, 20
    cluster = make_cluster(tmp_path, redis_db_url, graph)
    try:
        await cluster.start()
        async with httpx.AsyncClient(timeout=10) as http:
            await post_all(http, cluster, conversations, per)
            wanted = {wamid_of(c, i) for c in range(conversations) for i in range(per)}
            await wait_all_answered(graph, cluster, wanted)
            await wait_drained(http, cluster)
    finally:
        cluster.stop()
    # none lost, none doubled, in order per recipient; and both workers took a share
    assert replies_by_recipient(graph) == expected_order(conversations, per)
    sent = {w: cluster.procs[w].events("message_sent") for w in ("worker-a", "worker-b")}
    assert all(sent.values()), f"one worker did all the work: {sent}"


async def test_a_killed_workers_leases_are_reclaimed(
    tmp_path: Path, redis_db_url: str, graph: FakeGraphServer, rclient: aioredis.Redis
) -> None:
    """SIGKILL one worker while it holds leases: the other takes them once its heartbeat lapses."""
    conversations, per = 20, 10
    graph.delay_s = 0.05  # every send is slow: the workers hold leases most of the time
    cluster = make_cluster(tmp_path, redis_db_url, graph)
    try:
        await cluster.start()
        async with httpx.AsyncClient(timeout=10) as http:
            posting = asyncio.create_task(post_all(http, cluster, conversations, per))
            await wait_until(
                lambda: posting.done() or len(graph.messages()) >= conversations * per // 4,
                within=30.0,
                interval=0.005,
                what="a quarter of the replies sent",
                details=cluster.logs,
            )
            held = await kill_holding_worker(cluster, rclient)
            await posting
            wanted = {wamid_of(c, i) for c in range(conversations) for i in range(per)}
            await wait_all_answered(graph, cluster, wanted, within_s=30.0)
            await wait_drained(http, cluster)
        cluster.procs["worker-b"].check_alive()
    finally:
        cluster.stop()
    replies = replies_by_recipient(graph)
    doubled = sum(len(r) - len(set(r)) for r in replies.values())
    assert doubled <= held, f"{doubled} doubled, {held} held"  # only tasks in flight at the kill
    for recipient, wamids in expected_order(conversations, per).items():
        got = replies[recipient]
        assert list(dict.fromkeys(got)) == wamids, recipient  # each once at least, in order
        assert got == sorted(got), recipient  # a repeat comes right after its first send


async def kill_holding_worker(cluster: Cluster, client: aioredis.Redis) -> int:
    """SIGKILL worker-a once it holds leases; returns how many it held (left pending)."""
    pid = cluster.procs["worker-a"].pid

    async def stopped_holding() -> str:
        """worker-a's consumer name once it is stopped (SIGSTOP) holding a lease, else "": a
        running worker could ack its last lease between the look and the kill."""
        consumers = await group_consumers(client)
        name = cluster.consumer_of("worker-a", consumers)
        if name is None or consumers[name] == 0:
            return ""
        os.kill(pid, signal.SIGSTOP)
        if (await group_consumers(client))[name] > 0:
            return name
        os.kill(pid, signal.SIGCONT)
        return ""

    name = await wait_until(
        stopped_holding,
        within=10.0,
        interval=0.005,
        what="worker-a holding a lease",
        details=cluster.logs,
    )
    held = (await group_consumers(client))[name]  # nobody reclaims within the lease time
    cluster.procs["worker-a"].kill9()
    assert held > 0
    return held
