"""The webhook endpoint: handshake, signature, parsing, size limit, durable-before-200."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.signature import sign
from pyloto_cli.domain.task import EnqueueResult, Task
from pyloto_cli.logs import event_fields
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app
from pyloto_cli.web.body import MAX_BODY_BYTES
from pyloto_cli.web.intake import Intake

SECRET = "test-app-secret"


def text_webhook(wamids: Sequence[str], body: str = "Olá 😊") -> dict[str, Any]:
    """A webhook with one text message per wamid, from one user."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "900000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000000",
                                "phone_number_id": "900000000000002",
                            },
                            "contacts": [{"profile": {"name": "Ana"}, "wa_id": "15550001234"}],
                            "messages": [
                                {
                                    "from": "15550001234",
                                    "id": wamid,
                                    "timestamp": "1767225600",
                                    "type": "text",
                                    "text": {"body": body},
                                }
                                for wamid in wamids
                            ],
                        },
                    }
                ],
            }
        ],
    }


def meta_bytes(payload: dict[str, Any]) -> bytes:
    """Serialize as Meta does: escaped unicode."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        queue_backend="memory", session_store_backend="memory", dedupe_backend="memory"
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Intake]:
    """The intake role alone: no LLM or Graph client is opened for the web app."""
    async with open_roles(settings) as roles:
        yield await roles.intake()


@pytest.fixture
async def client(settings: Settings, runtime: Intake) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def queued(runtime: Intake) -> int:
    assert runtime.admin is not None
    return (await runtime.admin.stats()).depth


async def post_signed(
    client: httpx.AsyncClient, body: bytes, secret: str = SECRET
) -> httpx.Response:
    return await client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={
            "X-Hub-Signature-256": sign(secret.encode(), body),
            "Content-Type": "application/json",
        },
    )


class TestHandshake:
    async def test_right_token_echoes_challenge_as_plain_text(self, client: httpx.AsyncClient):
        """Meta's verify GET gets its challenge back, verbatim, as text/plain."""
        response = await client.get(
            "/webhooks/whatsapp",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": "test-verify-token",
                "hub.challenge": "1158201444",
            },
        )
        assert response.status_code == 200
        assert response.text == "1158201444"
        assert response.headers["content-type"].startswith("text/plain")

    async def test_wrong_token_is_forbidden(self, client: httpx.AsyncClient):
        """A wrong verify token gets 403 and no challenge."""
        response = await client.get(
            "/webhooks/whatsapp",
            params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "42"},
        )
        assert response.status_code == 403
        assert "42" not in response.text

    @pytest.mark.parametrize(
        ("mode", "token", "reason"),
        [
            ("unsubscribe", "test-verify-token", "verify mode is not subscribe"),
            (None, "test-verify-token", "verify mode is not subscribe"),
            ("subscribe", "nope", "verify token mismatch"),
        ],
    )
    async def test_a_refused_handshake_is_logged_with_its_reason(
        self,
        client: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture,
        mode: str | None,
        token: str,
        reason: str,
    ) -> None:
        """Only hub.mode=subscribe is a handshake; the log says which check failed."""
        caplog.set_level(logging.INFO, logger="pyloto")
        params = {"hub.verify_token": token, "hub.challenge": "42"}
        if mode is not None:
            params["hub.mode"] = mode
        response = await client.get("/webhooks/whatsapp", params=params)
        assert response.status_code == 403
        rejected = [event_fields(r) for r in caplog.records if r.getMessage() == "webhook_rejected"]
        assert [r["reason"] for r in rejected] == [reason]


class TestWebhookPost:
    async def test_signed_webhook_is_stored_before_200(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """Three messages in one POST become three stored tasks by the time 200 arrives."""
        body = meta_bytes(text_webhook(["wamid.A1", "wamid.A2", "wamid.A3"]))
        response = await post_signed(client, body)
        assert response.status_code == 200
        assert await queued(runtime) == 3

    async def test_unicode_body_signed_as_sent_is_accepted(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """Accents, emoji and Arabic in Meta's escaped form pass the signature check."""
        body = meta_bytes(text_webhook(["wamid.U1"], body="Olá, preço? 😊 مرحبا"))
        assert b"\\u" in body
        assert (await post_signed(client, body)).status_code == 200
        assert await queued(runtime) == 1

    async def test_bad_signature_is_rejected_and_nothing_enqueued(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """A signature made with another secret: 401, queue untouched."""
        body = meta_bytes(text_webhook(["wamid.B1"]))
        response = await post_signed(client, body, secret="someone-else")
        assert response.status_code in (401, 403)
        assert await queued(runtime) == 0

    async def test_missing_signature_is_rejected_and_nothing_enqueued(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """No X-Hub-Signature-256: 401, queue untouched."""
        body = meta_bytes(text_webhook(["wamid.B2"]))
        response = await client.post("/webhooks/whatsapp", content=body)
        assert response.status_code in (401, 403)
        assert await queued(runtime) == 0

    async def test_reserialized_body_is_rejected(self, client: httpx.AsyncClient, runtime: Intake):
        """A proxy that re-dumps the JSON breaks the signature: rejected, not half-accepted."""
        original = meta_bytes(text_webhook(["wamid.R1"], body="preço 😊"))
        redumped = json.dumps(json.loads(original), ensure_ascii=False).encode()
        response = await client.post(
            "/webhooks/whatsapp",
            content=redumped,
            headers={"X-Hub-Signature-256": sign(SECRET.encode(), original)},
        )
        assert response.status_code in (401, 403)
        assert await queued(runtime) == 0

    async def test_malformed_json_with_valid_signature_is_400(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """Signed garbage: 400 with a reason, nothing enqueued."""
        response = await post_signed(client, b'{"object": "whatsapp_business_account", "entry": [')
        assert response.status_code == 400
        assert "JSON" in response.text
        assert await queued(runtime) == 0

    async def test_json_that_is_not_a_webhook_is_400(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """Valid JSON of the wrong shape is a clear 400 too."""
        response = await post_signed(client, b"[1, 2, 3]")
        assert response.status_code == 400
        assert await queued(runtime) == 0

    async def test_oversized_body_is_413(self, client: httpx.AsyncClient, runtime: Intake):
        """Over 3 MiB by Content-Length: 413."""
        body = b"x" * (MAX_BODY_BYTES + 1)
        response = await post_signed(client, body)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"  # the rest is not read
        assert await queued(runtime) == 0

    async def test_oversized_chunked_body_is_413_without_reading_it_all(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """A chunked body (no Content-Length) is cut off once it passes 3 MiB."""
        sent = 0
        chunk = b"y" * 65536

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(200):  # 12.5 MiB if read to the end
                sent += len(chunk)
                yield chunk

        response = await client.post(
            "/webhooks/whatsapp",
            content=chunks(),
            headers={"X-Hub-Signature-256": "sha256=" + "0" * 64},
        )
        assert response.status_code == 413
        assert sent < 200 * len(chunk)
        assert await queued(runtime) == 0

    async def test_store_failure_answers_503_never_200(
        self, client: httpx.AsyncClient, runtime: Intake, settings: Settings
    ):
        """If the queue cannot commit, Meta gets 503 so that it retries."""

        class BrokenSink:
            async def enqueue(self, tasks: Sequence[Task]) -> EnqueueResult:
                raise OSError("disk full")

        client_app = create_app(settings, dataclasses.replace(runtime, sink=BrokenSink()))
        transport = httpx.ASGITransport(app=client_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as broken:
            response = await post_signed(broken, meta_bytes(text_webhook(["wamid.D1"])))
        assert response.status_code == 503

    async def test_redelivered_webhook_is_not_stored_twice(
        self, client: httpx.AsyncClient, runtime: Intake
    ):
        """Meta's redelivery of the same wamids gets 200 and adds nothing."""
        body = meta_bytes(text_webhook(["wamid.C1", "wamid.C2"]))
        assert (await post_signed(client, body)).status_code == 200
        assert (await post_signed(client, body)).status_code == 200
        assert await queued(runtime) == 2


class TestHealth:
    async def test_healthz(self, client: httpx.AsyncClient):
        """Liveness answers."""
        assert (await client.get("/healthz")).status_code == 200

    async def test_readyz_reports_queue(self, client: httpx.AsyncClient):
        """Readiness touches the queue and stores."""
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["ready"] is True
        assert response.json()["queue"]["backend"] == "memory"


def signed_headers(body: bytes) -> dict[str, str]:
    return {"X-Hub-Signature-256": sign(SECRET.encode(), body)}


class TestMalformedSignature:
    """Any malformed `X-Hub-Signature-256` is a 401 with nothing stored, never a 500."""

    BODY = meta_bytes(text_webhook(["wamid.S1"]))
    DIGEST = sign(SECRET.encode(), BODY).removeprefix("sha256=")

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(b"sha256=\xe9", id="non-ascii-byte"),
            pytest.param(b"sha256=" + b"\xe9" * 64, id="non-ascii-digest"),
            pytest.param(("sha256=" + DIGEST[:-2]).encode() + b"\xc3\xa9", id="utf8-in-digest"),
            pytest.param(("sha1=" + DIGEST).encode(), id="wrong-prefix"),
            pytest.param(("SHA256=" + DIGEST).encode(), id="prefix-case"),
            pytest.param(DIGEST.encode(), id="no-prefix"),
            pytest.param(("sha256=" + DIGEST[:-1]).encode(), id="too-short"),
            pytest.param(("sha256=" + DIGEST + "0").encode(), id="too-long"),
            pytest.param(("sha256=" + DIGEST[:-1] + "g").encode(), id="not-hex"),
            pytest.param(("sha256=" + DIGEST[:32] + " " + DIGEST[32:]).encode(), id="space"),
            pytest.param(("sha256=" + DIGEST + ",sha256=" + DIGEST).encode(), id="two-in-one"),
            pytest.param(b"sha256=", id="empty-digest"),
            pytest.param(b"", id="empty"),
        ],
    )
    async def test_malformed_header_is_401(
        self, client: httpx.AsyncClient, runtime: Intake, header: bytes
    ) -> None:
        response = await client.post(
            "/webhooks/whatsapp", content=self.BODY, headers=[(b"X-Hub-Signature-256", header)]
        )
        assert response.status_code == 401
        assert await queued(runtime) == 0

    async def test_the_right_signature_twice_is_401(
        self, client: httpx.AsyncClient, runtime: Intake
    ) -> None:
        """Two headers, even both right: which one a proxy would pick is anyone's guess."""
        value = sign(SECRET.encode(), self.BODY).encode()
        response = await client.post(
            "/webhooks/whatsapp",
            content=self.BODY,
            headers=[(b"X-Hub-Signature-256", value), (b"X-Hub-Signature-256", value)],
        )
        assert response.status_code == 401
        assert await queued(runtime) == 0

    async def test_padded_uppercase_digest_is_accepted(
        self, client: httpx.AsyncClient, runtime: Intake
    ) -> None:
        """What Meta's header may look like after a proxy: spaces around it, hex in capitals."""
        header = f"  sha256={self.DIGEST.upper()} ".encode()
        response = await client.post(
            "/webhooks/whatsapp", content=self.BODY, headers=[(b"X-Hub-Signature-256", header)]
        )
        assert response.status_code == 200
        assert await queued(runtime) == 1


def nested(depth: int) -> bytes:
    """A webhook whose one non-message field holds arrays `depth` levels deep."""
    inner = "[" * depth + "]" * depth
    head = '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":'
    return f'{head}[{{"field":"account_update","value":{{"deep":{inner}}}}}]}}]}}'.encode()


class TestBodyRefusals:
    """A signed body that is not a webhook's JSON is a 400 with a reason; nothing stored."""

    @pytest.mark.parametrize("depth", [65, 990, 3000, 100_000])
    async def test_deep_nesting_is_400(
        self, client: httpx.AsyncClient, runtime: Intake, depth: int
    ) -> None:
        body = nested(depth)
        response = await client.post(
            "/webhooks/whatsapp", content=body, headers=signed_headers(body)
        )
        assert response.status_code == 400
        assert "nested deeper" in response.text
        assert await queued(runtime) == 0

    async def test_nesting_within_the_limit_is_stored(
        self, client: httpx.AsyncClient, runtime: Intake
    ) -> None:
        """The limit is far above Meta's own nesting: 50 levels in a field are still taken."""
        body = nested(50)
        response = await client.post(
            "/webhooks/whatsapp", content=body, headers=signed_headers(body)
        )
        assert response.status_code == 200
        assert await queued(runtime) == 1

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            pytest.param(b'{"entry": [\xff]}', "UTF-8", id="invalid-utf8"),
            pytest.param(b'{"entry": ["\xed\xa0\x80"]}', "UTF-8", id="encoded-surrogate"),
            pytest.param(b"\xef\xbb\xbf{}", "JSON", id="bom"),
            pytest.param(b'{"entry": [', "JSON", id="truncated"),
            pytest.param(b"", "JSON", id="empty"),
            pytest.param(b'{"entry": NaN}', "JSON", id="nan"),
            pytest.param(b'{"entry": [-Infinity]}', "JSON", id="infinity"),
            pytest.param(b'{"entry": [%s]}' % (b"9" * 5000), "JSON", id="5000-digit-int"),
            pytest.param(b'"entry"', "object", id="string"),
            pytest.param(b"null", "object", id="null"),
            pytest.param(b'{"entry": {}}', "list", id="entry-object"),
            pytest.param(b'{"entry": [{"changes": 7}]}', "list", id="changes-number"),
            # Meta sends WhatsApp's webhooks as this object only; a Page's is not one of them
            pytest.param(
                b'{"object": "page", "entry": [{"id": "1", "changes": []}]}',
                "whatsapp_business_account",
                id="object-page",
            ),
            pytest.param(b'{"object": 7, "entry": []}', "whatsapp_business_account", id="object-7"),
        ],
    )
    async def test_not_a_webhook_is_400(
        self, client: httpx.AsyncClient, runtime: Intake, body: bytes, reason: str
    ) -> None:
        response = await client.post(
            "/webhooks/whatsapp", content=body, headers=signed_headers(body)
        )
        assert response.status_code == 400
        assert reason in response.text
        assert await queued(runtime) == 0

    @pytest.mark.parametrize(
        "content_type",
        ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
    )
    async def test_content_type_other_than_json_is_400(
        self, client: httpx.AsyncClient, runtime: Intake, content_type: str
    ) -> None:
        body = meta_bytes(text_webhook(["wamid.T1"]))
        headers = {**signed_headers(body), "Content-Type": content_type}
        response = await client.post("/webhooks/whatsapp", content=body, headers=headers)
        assert response.status_code == 400
        assert "Content-Type" in response.text
        assert await queued(runtime) == 0

    @pytest.mark.parametrize(
        "content_type",
        [
            None,
            "application/json",
            "Application/JSON; charset=UTF-8",
            'application/json; foo=bar; charset="utf-8"',
        ],
    )
    async def test_json_or_no_content_type_is_accepted(
        self, client: httpx.AsyncClient, runtime: Intake, content_type: str | None
    ) -> None:
        body = meta_bytes(text_webhook(["wamid.T2"]))
        headers = signed_headers(body)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.post("/webhooks/whatsapp", content=body, headers=headers)
        assert response.status_code == 200
        assert await queued(runtime) == 1

    async def test_unsigned_body_of_wrong_type_is_401_first(
        self, client: httpx.AsyncClient, runtime: Intake
    ) -> None:
        """Without a valid signature the sender learns nothing about the body's checks."""
        response = await client.post(
            "/webhooks/whatsapp", content=b"\xff", headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 401


class TestBodyDeadline:
    async def test_stalled_body_is_408_and_closes(
        self, make_settings: Callable[..., Settings], runtime: Intake
    ) -> None:
        """Half a body, then nothing: 408 once the body deadline passes, `Connection: close`,
        nothing stored."""
        settings = make_settings(
            queue_backend="memory",
            session_store_backend="memory",
            dedupe_backend="memory",
            body_timeout_seconds=0.2,
        )
        body = meta_bytes(text_webhook(["wamid.SLOW"]))
        never = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            yield body[:10]
            await never.wait()  # the client stops sending; the server must not wait for ever
            yield body[10:]

        transport = httpx.ASGITransport(app=create_app(settings, runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as slow:
            response = await asyncio.wait_for(
                slow.post("/webhooks/whatsapp", content=stalled(), headers=signed_headers(body)),
                timeout=10,
            )
        assert response.status_code == 408
        assert response.headers["connection"] == "close"
        assert await queued(runtime) == 0
