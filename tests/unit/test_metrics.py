"""`GET /metrics`: off by default, behind the admin token when one is set, and every metric
named in the README moves when its event happens (scraped through the ASGI app)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pyloto_cli.adapters.metrics import NAMES, PrometheusMetrics
from pyloto_cli.adapters.sender.dry_run import LOGGED_TEXT_MAX, DryRunSender
from pyloto_cli.bootstrap import open_roles, retry_policy
from pyloto_cli.domain.breaker import CircuitBreaker
from pyloto_cli.domain.errors import PermanentError, TransientError
from pyloto_cli.domain.llm import ChatRequest, LLMCallError
from pyloto_cli.domain.signature import sign
from pyloto_cli.domain.webhook import inbound_message, split_webhook
from pyloto_cli.logs import event_fields
from pyloto_cli.pipeline.process import Pipeline
from pyloto_cli.pipeline.responder import LLMResponder
from pyloto_cli.pipeline.worker import Worker
from pyloto_cli.ports import ResponderRequest
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app
from tests.scraping import Samples, scrape_text, value
from tests.unit.pipeline_support import RecordingSender, message, webhook

SECRET = "test-app-secret"


class DownModel:
    """A chat model whose service fails every stage but the reply text's (what opens the
    breaker, while replies still go out: the failed stages fall back)."""

    async def complete(self, request: ChatRequest) -> str:
        if request.stage == "response":
            return "Hi Ana!"
        raise LLMCallError("http_500")


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def moved(before: Samples, after: Samples, name: str) -> bool:
    """Some sample of metric `name` (its count, for a histogram) changed."""
    names = {name, f"{name}_count"}
    keys = {key for key in (*before, *after) if key[0] in names}
    return any(before.get(key, 0.0) != after.get(key, 0.0) for key in keys)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        queue_backend="memory",
        session_store_backend="memory",
        dedupe_backend="memory",
        metrics=True,
        llm_breaker_failures=1,
        max_attempts=3,
        retry_base_seconds=0,
    )


def failing_sends(call: int) -> Exception | None:
    """Throttled on the first send, refused for a bad recipient on the third."""
    if call == 1:
        return TransientError("throttled", code=130429, retry_after=0.0)
    if call == 3:
        return PermanentError("recipient not on WhatsApp", code=131026)
    return None


@dataclass
class Rig:
    http: httpx.AsyncClient
    worker: Worker
    breaker_clock: FakeClock

    async def post(self, wamids: Sequence[str], *, signed: bool = True) -> httpx.Response:
        body = json.dumps(webhook([message(w, "hello") for w in wamids])).encode()
        signature = sign(SECRET.encode(), body) if signed else "sha256=" + "0" * 64
        headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
        return await self.http.post("/webhooks/whatsapp", content=body, headers=headers)

    async def scrape(self) -> Samples:
        response = await self.http.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=")
        return scrape_text(response.text)


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    """The web app and a worker sharing one `PrometheusMetrics`: an LLM that is down, a sender
    that fails on the first and third sends."""
    metrics = PrometheusMetrics()
    async with open_roles(settings, metrics=metrics) as roles:
        intake = await roles.intake()
        queue = (await roles.queue_parts()).queue
        stores = await roles.stores()
        assert queue is not None
        clock = FakeClock()
        breaker = CircuitBreaker(1, 30.0, clock=clock)
        pipeline = Pipeline(
            sessions=stores.sessions,
            deduper=stores.deduper,
            responder=LLMResponder(DownModel(), settings, metrics=metrics, breaker=breaker),
            sender=RecordingSender(fail_with=failing_sends),
            statuses=stores.statuses,
            metrics=metrics,
        )
        worker = Worker(queue, pipeline, policy=retry_policy(settings), metrics=metrics)
        transport = httpx.ASGITransport(app=create_app(settings, intake, None, metrics))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Rig(http, worker, clock)


async def test_every_named_metric_moves(rig: Rig) -> None:
    """Each metric the README lists changes when its event happens."""
    start = await rig.scrape()
    assert (await rig.post(["wamid.A"])).status_code == 200
    assert (await rig.post(["wamid.A"])).status_code == 200  # still queued: a duplicate
    assert (await rig.post(["wamid.A"], signed=False)).status_code == 401
    queued = await rig.scrape()
    await rig.worker.drain()  # throttled, then the same reply sent (the breaker open by then)
    rig.breaker_clock.now += 31.0  # the breaker's cool-down is over: B's LLM calls are tried
    assert (await rig.post(["wamid.B"])).status_code == 200
    await rig.worker.drain()  # refused: dead-lettered
    assert (await rig.post(["wamid.A"])).status_code == 200
    await rig.worker.drain()  # answered already: skipped
    end = await rig.scrape()

    assert value(queued, "pyloto_queue_depth") == 1 > value(start, "pyloto_queue_depth")
    assert value(queued, "pyloto_queue_oldest_age_seconds") > 0
    assert value(end, "pyloto_webhooks_received_total") == 4
    assert value(end, "pyloto_webhooks_rejected_total", reason="SignatureError") == 1
    assert value(end, "pyloto_tasks_enqueued_total") == 3
    assert value(end, "pyloto_duplicates_skipped_total", where="enqueue") == 1
    assert value(end, "pyloto_duplicates_skipped_total", where="dedupe") == 1
    for outcome, count in (("retry", 1), ("done", 1), ("dead", 1), ("skipped", 1)):
        assert value(end, "pyloto_tasks_processed_total", outcome=outcome) == count, outcome
    assert value(end, "pyloto_tasks_retried_total") == 1
    assert value(end, "pyloto_tasks_dead_lettered_total") == 1
    assert value(end, "pyloto_task_processing_seconds_count") == 4
    # the throttled retry sent the reply the first attempt computed: no LLM call of its own
    assert value(end, "pyloto_llm_stage_seconds_count", stage="event") == 2
    assert value(end, "pyloto_llm_stage_seconds_count", stage="response") == 2
    assert value(end, "pyloto_llm_errors_total", stage="event", reason="http_500") == 2
    assert value(end, "pyloto_llm_breaker_open") == 1
    assert value(end, "pyloto_graph_sends_total", outcome="transient", code="130429") == 1
    assert value(end, "pyloto_graph_sends_total", outcome="permanent", code="131026") == 1
    assert value(end, "pyloto_graph_sends_total", outcome="sent", code="") == 1
    assert value(end, "pyloto_queue_depth") == 0
    for name in NAMES:
        assert moved(start, queued, name) or moved(start, end, name), name
        assert name.startswith("pyloto_")


class TestAccess:
    async def test_off_by_default(self, make_settings: Callable[..., Settings]) -> None:
        """Without PYLOTO_METRICS there is no /metrics."""
        settings = make_settings(queue_backend="memory", session_store_backend="memory")
        async with open_roles(settings) as roles:
            app = create_app(settings, await roles.intake())
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                assert (await http.get("/metrics")).status_code == 404

    @pytest.mark.parametrize(
        ("authorization", "status"),
        [
            (None, 401),
            ("Bearer wrong", 401),
            ("Bearer s3cret-admin ", 401),
            ("Basic s3cret-admin", 401),
            ("Bearer s3cret-admin", 200),
        ],
    )
    async def test_admin_token_required_when_set(
        self, make_settings: Callable[..., Settings], authorization: str | None, status: int
    ) -> None:
        """With PYLOTO_ADMIN_TOKEN set, only `Authorization: Bearer <it>` reads the metrics."""
        guarded = make_settings(
            queue_backend="memory",
            session_store_backend="memory",
            metrics=True,
            admin_token="s3cret-admin",
        )
        metrics = PrometheusMetrics()
        async with open_roles(guarded, metrics=metrics) as roles:
            app = create_app(guarded, await roles.intake(), None, metrics)
            transport = httpx.ASGITransport(app=app)
            headers = {} if authorization is None else {"Authorization": authorization}
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                response = await http.get("/metrics", headers=headers)
        assert response.status_code == status
        if status == 200:
            assert "pyloto_webhooks_received_total" in response.text
        else:
            assert "pyloto_" not in response.text
            assert response.headers["www-authenticate"] == "Bearer"


class TestLogs:
    async def test_dead_letter_is_a_warning_with_its_reason(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="pyloto")
        await rig.post(["wamid.A"])
        await rig.worker.drain()  # the first send is throttled, the second goes
        rig.breaker_clock.now += 31.0
        await rig.post(["wamid.B"])
        await rig.worker.drain()  # the third is refused
        dead = [r for r in caplog.records if r.getMessage() == "task_dead_lettered"]
        assert [r.levelno for r in dead] == [logging.WARNING]
        assert "recipient not on WhatsApp" in event_fields(dead[0])["reason"]
        assert "131026" in event_fields(dead[0])["reason"]

    @pytest.mark.parametrize(
        ("body", "shown"),
        [
            ({"type": "text", "text": {"body": "Hi Ana!"}}, "Hi Ana!"),
            (
                {"type": "interactive", "interactive": {"body": {"text": "Pick"}}},
                "Pick",
            ),
            ({"type": "text", "text": {"body": "x" * 500}}, "x" * (LOGGED_TEXT_MAX - 1) + "…"),
            ({"type": "reaction", "reaction": {"emoji": "👍"}}, None),
        ],
    )
    async def test_dry_run_send_logs_the_reply_words(
        self, caplog: pytest.LogCaptureFixture, body: dict[str, Any], shown: str | None
    ) -> None:
        """The "try it" flow shows what the assistant answered, at most 200 characters."""
        caplog.set_level(logging.INFO, logger="pyloto")
        async with DryRunSender() as sender:
            await sender.send("900000000000002", {"to": "15550001234", **body})
        (sent,) = [r for r in caplog.records if r.getMessage() == "message_sent"]
        assert event_fields(sent).get("text") == shown


class HungModel:
    """A chat model that never answers (the graph's deadline cuts it short)."""

    async def complete(self, request: ChatRequest) -> str:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_stage_cut_by_the_deadline_is_an_error_not_a_zero_latency(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(llm_stage_timeout=5.0, llm_deadline=0.05)
    metrics = PrometheusMetrics()
    (task,) = split_webhook(webhook([message("wamid.D", "hello")]), 1767225600.0)
    request = ResponderRequest(inbound_message(task), None, 1)
    with pytest.raises(TransientError, match="llm_unavailable: deadline"):
        await LLMResponder(HungModel(), settings, metrics=metrics).respond(request)
    samples = scrape_text(metrics.render()[0].decode())
    for stage in ("event", "response"):
        assert value(samples, "pyloto_llm_errors_total", stage=stage, reason="deadline") == 1
        assert value(samples, "pyloto_llm_stage_seconds_count", stage=stage) == 0
