"""GraphSender through the real httpx client and respx routes: bodies, errors, pause, logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import respx

from pyloto_cli.adapters.sender.dry_run import DryRunSender
from pyloto_cli.adapters.sender.graph import GraphSender
from pyloto_cli.adapters.sender.limiter import Bucket, SendLimiter
from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.errors import (
    AmbiguousSendError,
    PermanentError,
    SendPaused,
    TransientError,
)
from pyloto_cli.domain.reply import ListSection, ReplyOption
from pyloto_cli.domain.webhook import Recipient
from pyloto_cli.logs import RedactingFilter, event_fields, log_id

BASE = "https://graph.test"
NUMBER = "106540352242922"
URL = f"{BASE}/v25.0/{NUMBER}/messages"
TOKEN = "EAAG-secret-token-value"
PEER = Recipient(to="+15550001234")
WAMID = "wamid.HBgLMTU1NTAwMDEyMzQVAgARGBI"


def ok(message_id: str = WAMID) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": "+15550001234", "wa_id": "15550001234"}],
            "messages": [{"id": message_id}],
        },
    )


def graph_error(code: int, status: int = 400, message: str = "boom") -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "error": {
                "message": message,
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": message},
                "fbtrace_id": f"Trace{code}",
            }
        },
    )


def chained(error: Exception, cause: Exception) -> Exception:
    """`error` raised `from cause`, as httpx-aiohttp and aiohttp chain their errors."""
    error.__cause__ = cause
    return error


def is_paused(sender: GraphSender) -> bool:
    """`sender.paused`, read fresh (mypy would keep an earlier assert's narrowing)."""
    return sender.paused


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sender(client: httpx.AsyncClient, clock: Clock) -> GraphSender:
    return GraphSender(
        client,
        access_token=TOKEN,
        api_version="v25.0",
        base_url=BASE,
        limiter=SendLimiter(1000.0, clock=clock),
        auth_pause_s=300.0,
        clock=clock,
    )


@pytest.fixture
def graph() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[dict[str, Any]]]:
    caplog.set_level(logging.DEBUG, logger="pyloto")

    def events(name: str) -> list[dict[str, Any]]:
        return [event_fields(r) for r in caplog.records if r.getMessage() == name]

    return events


class TestBodies:
    @pytest.mark.parametrize(
        "body",
        [
            ob.text_body(
                PEER, "hi https://example.com", reply_to="wamid.IN", callback_data="wamid.IN"
            ),
            ob.buttons_body(PEER, "Pick", [ReplyOption("y", "Yes"), ReplyOption("n", "No")]),
            ob.list_body(PEER, "Pick", [ListSection("S", (ReplyOption("a", "A"),))]),
            ob.reaction_body(PEER, "wamid.IN", "👍"),
            ob.template_body(PEER, "hello_world", "en_US"),
        ],
        ids=["text", "buttons", "list", "reaction", "template"],
    )
    async def test_posts_body_with_bearer_and_returns_wamid(
        self, sender: GraphSender, graph: respx.MockRouter, body: dict[str, Any]
    ) -> None:
        """Each body type is POSTed as JSON to /{number}/messages; the wamid comes back."""
        route = graph.post(URL).mock(return_value=ok())
        result = await sender.send(NUMBER, body)
        assert result.message_id == WAMID
        request = route.calls.last.request
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.content) == body

    async def test_each_number_gets_its_own_url_and_the_client_defaults(
        self, graph: respx.MockRouter, clock: Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Requests are built once per number, yet carry the client's own headers and
        timeout; the parsed-URL cache is bounded and refills after it is cleared."""
        monkeypatch.setattr("pyloto_cli.adapters.sender.graph._MAX_URLS", 2)
        numbers = ["1001", "1002", "1003", "1001"]
        routes = {
            n: graph.post(f"{BASE}/v25.0/{n}/messages").mock(return_value=ok()) for n in numbers
        }
        timeout = httpx.Timeout(connect=1.0, read=2.0, write=3.0, pool=4.0)
        async with httpx.AsyncClient(headers={"X-Trace": "on"}, timeout=timeout) as http:
            sender = GraphSender(http, access_token=TOKEN, api_version="v25.0", base_url=BASE)
            for number in numbers:
                await sender.send(number, ob.text_body(PEER, f"to {number}"))
        assert [len(routes[n].calls) for n in ("1001", "1002", "1003")] == [2, 1, 1]
        for number in numbers:
            request = routes[number].calls.last.request
            assert json.loads(request.content)["text"]["body"] == f"to {number}"
            assert request.headers["x-trace"] == "on"
            assert request.headers["user-agent"].startswith("python-httpx/")
            assert request.extensions["timeout"] == timeout.as_dict()

    async def test_mark_read_and_typing(self, sender: GraphSender, graph: respx.MockRouter) -> None:
        """mark_read posts the read receipt; typing adds the typing indicator."""
        route = graph.post(URL).mock(return_value=httpx.Response(200, json={"success": True}))
        await sender.mark_read(NUMBER, "wamid.IN")
        await sender.mark_read(NUMBER, "wamid.IN", typing=True)
        first, second = (json.loads(c.request.content) for c in route.calls)
        assert first == ob.mark_read_body("wamid.IN")
        assert second["typing_indicator"] == {"type": "text"}

    async def test_message_sent_logged_masked(
        self, sender: GraphSender, graph: respx.MockRouter, records: Any
    ) -> None:
        """message_sent carries the wamid and a masked phone, never the token."""
        graph.post(URL).mock(return_value=ok())
        await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        [event] = records("message_sent")
        assert event["sent_message_id"] == log_id(WAMID)  # hashed: a wamid holds the number
        assert event["to"] == "***1234"
        assert TOKEN not in repr(event)
        assert TOKEN not in repr(sender)


class TestErrors:
    @pytest.mark.parametrize(
        ("code", "status", "retry_after"),
        [
            (130429, 400, 1.0),
            (131056, 400, 1.0),
            (4, 400, 60.0),
            (80007, 400, 30.0),
            (2, 503, None),
            (131000, 500, None),
            (131016, 500, None),
            (131057, 500, 60.0),
            (133004, 503, None),
        ],
    )
    async def test_retryable_codes_raise_transient(
        self,
        sender: GraphSender,
        graph: respx.MockRouter,
        records: Any,
        code: int,
        status: int,
        retry_after: float | None,
    ) -> None:
        """Throttling and outages raise TransientError with the code and its wait, logged."""
        graph.post(URL).mock(return_value=graph_error(code, status))
        with pytest.raises(TransientError) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert type(info.value) is TransientError
        assert (info.value.code, info.value.retry_after) == (code, retry_after)
        [event] = records("send_failed")
        assert (event["code"], event["fbtrace_id"]) == (code, f"Trace{code}")

    @pytest.mark.parametrize("code", [131047, 131026, 131048, 131050, 131051, 100, 132001])
    async def test_permanent_codes_raise_permanent(
        self, sender: GraphSender, graph: respx.MockRouter, code: int
    ) -> None:
        """Permanent codes raise PermanentError with Meta's message."""
        graph.post(URL).mock(return_value=graph_error(code, message="Re-engagement message"))
        with pytest.raises(PermanentError) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert info.value.code == code
        assert "Re-engagement message" in info.value.reason

    async def test_http_5xx_without_body_is_transient(
        self, sender: GraphSender, graph: respx.MockRouter
    ) -> None:
        """A bare 502 (no Graph error) is retried."""
        graph.post(URL).mock(return_value=httpx.Response(502, text="<html>bad gateway</html>"))
        with pytest.raises(TransientError):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))

    async def test_pair_rate_limit_backs_off_4_to_the_x(
        self, sender: GraphSender, graph: respx.MockRouter, clock: Clock
    ) -> None:
        """Consecutive 131056 on one recipient wait 1, 4, 16 s; a success resets the count."""
        route = graph.post(URL)
        waits = []
        for _ in range(3):
            route.mock(return_value=graph_error(131056))
            with pytest.raises(TransientError) as info:
                await sender.send(NUMBER, ob.text_body(PEER, "hi"))
            waits.append(info.value.retry_after)
            clock.now += 10_000  # let the limiter's hold pass
        assert waits == [1.0, 4.0, 16.0]
        route.mock(return_value=ok())
        await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        route.mock(return_value=graph_error(131056))
        with pytest.raises(TransientError) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert info.value.retry_after == 1.0

    async def test_pair_rate_limit_holds_that_recipient_only(
        self, sender: GraphSender, graph: respx.MockRouter
    ) -> None:
        """After a 131056, the next send to that user is refused locally; others go on."""
        route = graph.post(URL)
        route.mock(return_value=graph_error(131056))
        with pytest.raises(TransientError):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        route.mock(return_value=ok())
        assert sender.limiter is not None
        sender.limiter.penalize(NUMBER, "+15550001234", 60.0)
        with pytest.raises(TransientError) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "again"))
        assert info.value.retry_after is not None
        assert info.value.retry_after > 50
        assert route.call_count == 1
        await sender.send(NUMBER, ob.text_body(Recipient(to="+15550009999"), "other user"))
        assert route.call_count == 2

    @pytest.mark.parametrize(
        "error",
        [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")],
    )
    async def test_never_sent_errors_are_plain_transient(
        self, sender: GraphSender, graph: respx.MockRouter, error: Exception
    ) -> None:
        """Connect errors and connect/pool timeouts retry freely (nothing reached Meta)."""
        graph.post(URL).mock(side_effect=error)
        with pytest.raises(TransientError) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert not isinstance(info.value, AmbiguousSendError)

    @pytest.mark.parametrize(
        "error", [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("disconnected")]
    )
    async def test_read_timeout_is_ambiguous(
        self, sender: GraphSender, graph: respx.MockRouter, records: Any, error: Exception
    ) -> None:
        """No answer after the body went out raises AmbiguousSendError and logs send_ambiguous."""
        graph.post(URL).mock(side_effect=error)
        with pytest.raises(AmbiguousSendError):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert len(records("send_ambiguous")) == 1

    async def test_phone_numbers_masked_in_errors(
        self, sender: GraphSender, graph: respx.MockRouter
    ) -> None:
        """Meta's message is kept, with phone numbers masked."""
        graph.post(URL).mock(return_value=graph_error(131026, message="15550001234 is not on WA"))
        with pytest.raises(PermanentError) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert "15550001234" not in info.value.reason
        assert "***1234" in info.value.reason


class TestAuthPause:
    async def test_token_error_pauses_then_probe_resumes(
        self, sender: GraphSender, graph: respx.MockRouter, clock: Clock, records: Any
    ) -> None:
        """190 pauses all sends (fast SendPaused, no request, one log line) until a probe works."""
        route = graph.post(URL).mock(return_value=graph_error(190, 401))
        with pytest.raises(SendPaused) as first:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert first.value.retry_after == 300.0
        for _ in range(3):
            with pytest.raises(SendPaused):
                await sender.send(NUMBER, ob.text_body(PEER, "hi"))
            with pytest.raises(SendPaused):
                await sender.mark_read(NUMBER, "wamid.IN")
        assert route.call_count == 1
        assert len(records("graph_auth_error")) == 1
        assert sender.paused

        clock.now += 301  # the probe still fails: paused again, no new alert
        with pytest.raises(SendPaused):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert route.call_count == 2
        with pytest.raises(SendPaused):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert route.call_count == 2
        assert len(records("graph_auth_error")) == 1

        clock.now += 301  # token rotated: the probe succeeds and sending resumes
        route.mock(return_value=ok())
        assert (await sender.send(NUMBER, ob.text_body(PEER, "hi"))).message_id == WAMID
        assert not is_paused(sender)
        await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert route.call_count == 4
        assert len(records("graph_auth_restored")) == 1

    async def test_auth_code_0_also_pauses(
        self, sender: GraphSender, graph: respx.MockRouter
    ) -> None:
        """Code 0 (auth failed) pauses like 190."""
        graph.post(URL).mock(return_value=graph_error(0, 401))
        with pytest.raises(SendPaused):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert sender.paused

    async def test_token_never_logged(
        self, sender: GraphSender, graph: respx.MockRouter, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Neither logs nor errors carry the access token."""
        caplog.set_level(logging.DEBUG, logger="pyloto")
        graph.post(URL).mock(return_value=graph_error(190, 401))
        with pytest.raises(SendPaused) as info:
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert TOKEN not in str(info.value)
        for record in caplog.records:
            RedactingFilter().filter(record)
            assert TOKEN not in record.getMessage() + repr(record.__dict__)


class TestDryRun:
    async def test_records_bodies_with_deterministic_wamids(self, records: Any) -> None:
        """The dry-run sender records exact bodies and answers wamid.dryrun.<n>."""
        sender = DryRunSender()
        body = ob.text_body(PEER, "hi")
        first = await sender.send(NUMBER, body)
        await sender.mark_read(NUMBER, "wamid.IN", typing=True)
        second = await sender.send(NUMBER, ob.reaction_body(PEER, "wamid.IN", "👍"))
        assert (first.message_id, second.message_id) == ("wamid.dryrun.1", "wamid.dryrun.2")
        assert sender.bodies[0] == body
        assert sender.records[1].body == ob.typing_indicator_body("wamid.IN")
        assert [e["dry_run"] for e in records("message_sent")] == [True, True]

    async def test_records_are_copies(self) -> None:
        """Changing a body after sending does not change what was recorded."""
        sender = DryRunSender()
        body = ob.text_body(PEER, "hi")
        await sender.send(NUMBER, body)
        body["text"]["body"] = "changed"
        assert sender.bodies[0]["text"]["body"] == "hi"


class TestStaleConnection:
    async def test_unsent_request_is_retried_once_at_once(
        self, sender: GraphSender, graph: respx.MockRouter
    ) -> None:
        """A request that cannot have reached Meta is tried again at once (no duplicate risk)."""
        route = graph.post(URL).mock(side_effect=[httpx.ConnectError("stale"), ok()])
        assert (await sender.send(NUMBER, ob.text_body(PEER, "hi"))).message_id == WAMID
        assert route.call_count == 2

    @pytest.mark.parametrize(
        ("cause", "never_sent"),
        [
            (aiohttp.ConnectionTimeoutError("pool"), True),
            (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), True),
            (
                chained(aiohttp.ClientOSError(None, "write"), aiohttp.ClientConnectionResetError()),
                True,
            ),
            (aiohttp.ServerDisconnectedError(), False),
            (
                chained(aiohttp.ClientOSError(104, "reset"), ConnectionResetError(104, "reset")),
                False,
            ),
        ],
        ids=["pool-timeout", "header-write", "body-write", "hang-up", "reset-while-reading"],
    )
    async def test_aiohttp_errors_are_told_apart_by_type(
        self, cause: Exception, never_sent: bool
    ) -> None:
        """httpx-aiohttp maps all of these to httpx.ConnectTimeout; the aiohttp error it chains
        says whether the request can have gone out. Never sent: tried again at once."""
        tries: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            tries.append(request)
            if len(tries) == 1:
                raise chained(httpx.ConnectTimeout("x"), cause)
            return ok()

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            sender = GraphSender(http, access_token=TOKEN, api_version="v25.0", base_url=BASE)
            if never_sent:
                assert (await sender.send(NUMBER, ob.text_body(PEER, "hi"))).message_id == WAMID
            else:
                with pytest.raises(AmbiguousSendError):
                    await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert len(tries) == (2 if never_sent else 1)

    async def test_ambiguous_request_is_not_retried_here(
        self, sender: GraphSender, graph: respx.MockRouter
    ) -> None:
        """A request that may have reached Meta is never repeated by the sender itself."""
        route = graph.post(URL).mock(side_effect=[httpx.ReadTimeout("slow"), ok()])
        with pytest.raises(AmbiguousSendError):
            await sender.send(NUMBER, ob.text_body(PEER, "hi"))
        assert route.call_count == 1


class TestLimiter:
    def test_bucket_allows_burst_then_spaces_tokens(self) -> None:
        """A bucket gives `burst` tokens at once, then one per interval."""
        bucket = Bucket(interval_s=0.5, burst=3)
        delays = [bucket.reserve(100.0) for _ in range(5)]
        assert delays == [0.0, 0.0, 0.0, 0.5, 1.0]

    def test_bucket_refills(self) -> None:
        """After a quiet spell the burst is available again."""
        bucket = Bucket(interval_s=0.5, burst=2)
        bucket.reserve(0.0)
        bucket.reserve(0.0)
        assert bucket.wait(0.0) == 0.5
        assert bucket.wait(10.0) == 0.0
        assert bucket.idle(10.0)

    async def test_long_wait_raises_instead_of_holding_a_worker(self, clock: Clock) -> None:
        """A send that would wait past max_wait_s raises TransientError with that wait."""
        limiter = SendLimiter(1.0, number_burst=1, max_wait_s=0.5, clock=clock)
        await limiter.acquire(NUMBER)
        with pytest.raises(TransientError) as info:
            await limiter.acquire(NUMBER)
        assert info.value.retry_after == pytest.approx(1.0)
        clock.now += 1.0
        await limiter.acquire(NUMBER)  # the refused call reserved nothing

    async def test_pair_limit_burst_45_then_one_per_6s(self, clock: Clock) -> None:
        """45 messages to one user go at once; the 46th must wait 6 s (so it is refused)."""
        limiter = SendLimiter(1000.0, number_burst=1000, clock=clock)
        for _ in range(45):
            await limiter.acquire(NUMBER, "+15550001234")
        with pytest.raises(TransientError) as info:
            await limiter.acquire(NUMBER, "+15550001234")
        assert info.value.retry_after == pytest.approx(6.0)
        await limiter.acquire(NUMBER, "+15550009999")  # another user is not affected
        assert limiter.pair_wait(NUMBER, "+15550001234") == pytest.approx(6.0)

    async def test_numbers_are_limited_separately(self, clock: Clock) -> None:
        """Each business number has its own budget."""
        limiter = SendLimiter(1.0, number_burst=1, max_wait_s=0.1, clock=clock)
        await limiter.acquire("111")
        await limiter.acquire("222")
        with pytest.raises(TransientError):
            await limiter.acquire("111")


async def test_the_dry_run_sender_keeps_only_its_last_bodies() -> None:
    """`serve` on the defaults runs for days: what the dry-run sender remembers is bounded."""
    async with DryRunSender(keep=3) as sender:
        for i in range(5):
            result = await sender.send("106540352242922", {"to": "15550001234", "n": i})
            assert result.message_id == f"wamid.dryrun.{i + 1}"
        assert [body["n"] for body in sender.bodies] == [2, 3, 4]
