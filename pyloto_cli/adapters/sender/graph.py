"""The production Sender: Graph API `/{phone_number_id}/messages` over one shared httpx client.

Media goes in two calls: `upload_media` posts the file to `/{phone_number_id}/media`
(multipart, streamed from disk, not paced: it is not a message), then `send` posts the message
naming the media id; both share the token pause and the error table below.

`open_graph_client(settings)` opens the process's single `httpx.AsyncClient`, httpx-aiohttp's
`HttpxAiohttpClient`: its requests, and those to a proxy named in the environment, go through
`AiohttpTransport`, which spends less CPU per send than httpx's own transport, whose connection
pool costs more per request the more connections it holds (benchmarks/graph_client_cpu.py).
The pool is sized for the worker: every worker task may hold a connection for a send and one
for a mark-as-read, so a send rarely waits for one, and all of them stay alive between sends.
A send that still cannot get a connection in time raises TransientError (it was never sent):
it is retried, never lost. Each send is an `httpx.Request` built from parts made once (the
parsed URL per business number, the headers merged with the client's defaults, the client's
timeouts) and sent with `client.send`, which skips parsing the URL and merging the headers
again on every call as `client.post` does.

Outcomes are classified by Meta's `error.code` (domain/graph_errors.py). Whether a failed
request can have reached Meta is read from the exception types (`_never_sent`): a failed or
timed-out connect, a wait for a pooled connection that timed out, or a connection found closed
while the request was being written cannot have delivered it, so it is tried again at once. A
read timeout or a connection dropped after the body went out is ambiguous (Meta may have
accepted it): it raises AmbiguousSendError, which the pipeline retries at most once. A
rejected token pauses every send (SendPaused, fast, no request) until a probe send succeeds
after the pause. Likewise a circuit breaker (`breaker`) counts Meta being unreachable (a failed
connection, no answer, a 5xx): once open, every send fails fast with CircuitOpen (the task waits
without spending an attempt) until one half-open probe gets an answer from Meta, after which
the backlog goes at full speed.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient

from pyloto_cli.adapters.sender.limiter import SendLimiter
from pyloto_cli.domain import ids, json_codec
from pyloto_cli.domain.breaker import Breaker, BreakerState, CircuitBreaker
from pyloto_cli.domain.errors import (
    AmbiguousSendError,
    CircuitOpen,
    InvalidTask,
    PermanentError,
    SendPaused,
    TransientError,
)
from pyloto_cli.domain.graph_errors import Action, GraphError, classify
from pyloto_cli.domain.outbound import mark_read_body
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import SendResult, SharedBuckets
from pyloto_cli.settings import Settings

_MAX_URLS = 1024  # parsed URLs kept (least recently used out), one per business number
_DIGITS = re.compile(r"\+?\d{8,}")
# httpx-aiohttp raises httpx errors chained to aiohttp's, and maps every aiohttp connection
# error (a refused connect and a server that hung up after reading the request alike) to
# httpx.ConnectTimeout, so for those the aiohttp error says whether the request went out.
_AIOHTTP_NEVER_SENT = (
    aiohttp.ClientConnectorError,  # refused, DNS, TLS handshake, proxy connect
    aiohttp.ConnectionTimeoutError,  # connect or wait for a pooled connection timed out
    aiohttp.ClientConnectionResetError,  # the connection was found closed when writing
    aiohttp.InvalidURL,
)
# httpx's own types, for an error that does not come from aiohttp (a client given another
# transport, such as a test's mock)
_HTTPX_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)


def graph_timeout() -> httpx.Timeout:
    """Connect 5 s, wait for a pooled connection 10 s, write 10 s, read (Meta's answer) 20 s.

    The aiohttp transport has no write timeout: a send's body is a few kilobytes, which the
    socket takes at once, and the read timeout bounds the wait that follows."""
    return httpx.Timeout(connect=5.0, read=20.0, write=10.0, pool=10.0)


def graph_limits(concurrency: int) -> httpx.Limits:
    """Two connections per worker task (a send and a mark-as-read), all kept alive."""
    size = max(8, 2 * concurrency)
    return httpx.Limits(max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0)


@asynccontextmanager
async def open_graph_client(
    settings: Settings, *, timeouts: httpx.Timeout | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The process's one Graph client, on the aiohttp transport, closed on exit.

    `timeouts` replaces `graph_timeout()`, for tests that wait for a timeout to fire."""
    limits = graph_limits(settings.concurrency)
    timeout = timeouts or graph_timeout()
    async with HttpxAiohttpClient(limits=limits, timeout=timeout) as client:
        yield client


def _mask(text: str) -> str:
    return _DIGITS.sub(lambda m: f"***{m.group(0)[-4:]}", text)


def _never_sent(exc: httpx.TransportError) -> bool:
    """True when the request cannot have reached Meta (safe to retry, no duplicate)."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        # aiohttp wraps a failed write of the body in ClientOSError, chained to the reset; a
        # ClientOSError chained to an OSError of the socket is a reset that may come after it
        return isinstance(cause, _AIOHTTP_NEVER_SENT) or (
            isinstance(cause, aiohttp.ClientOSError)
            and isinstance(cause.__cause__, aiohttp.ClientConnectionResetError)
        )
    return isinstance(exc, _HTTPX_NEVER_SENT)


def _retry_after_header(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class GraphSender:
    """Sends message bodies and read receipts through the Graph API (the `Sender` port)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        access_token: str,
        api_version: str,
        base_url: str = "https://graph.facebook.com",
        limiter: SendLimiter | None = None,
        auth_pause_s: float = 300.0,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self._client = client
        self._base = f"{base_url.rstrip('/')}/{api_version.strip('/')}"
        self._headers = httpx.Headers(client.headers)
        self._headers["Authorization"] = f"Bearer {access_token}"
        self._headers["Content-Type"] = "application/json"
        self._upload_headers = {"Authorization": f"Bearer {access_token}"}  # multipart sets its own
        self._extensions = {"timeout": client.timeout.as_dict()}
        self._url = functools.lru_cache(maxsize=_MAX_URLS)(self._messages_url)
        self.limiter = limiter
        self.auth_pause_s = auth_pause_s
        self.breaker = breaker
        self._clock = clock
        self._log = logger or get_logger("sender.graph")
        self._paused_until: float | None = None
        self._probing = False
        self._pair_strikes: dict[tuple[str, str], int] = {}

    @classmethod
    def from_settings(
        cls,
        client: httpx.AsyncClient,
        settings: Settings,
        *,
        shared: SharedBuckets | None = None,
        breaker: Breaker | None = None,
    ) -> GraphSender:
        """A sender for `settings`' Graph URL, version, token and per-number rate (taken from
        `shared` buckets when given: every process together keeps to it), behind `breaker`
        (by default one of its own, from the settings)."""
        if settings.whatsapp_access_token is None:
            raise ValueError("WHATSAPP_ACCESS_TOKEN is required to send through the Graph API")
        return cls(
            client,
            access_token=settings.whatsapp_access_token.get_secret_value(),
            api_version=settings.graph_api_version,
            base_url=settings.graph_api_url,
            limiter=SendLimiter(settings.send_rate_per_number, shared=shared),
            breaker=breaker or graph_breaker(settings),
        )

    def __repr__(self) -> str:
        return f"GraphSender(base={self._base!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None  # the client belongs to `open_graph_client`

    @property
    def paused(self) -> bool:
        """True while sends fail fast because the token was rejected."""
        return self._paused_until is not None

    async def send(self, phone_number_id: str, body: JsonObject) -> SendResult:
        """POST `body`; returns the wamid Meta accepted, or raises Transient/Permanent errors."""
        recipient = body.get("to") or body.get("recipient")
        peer = str(recipient) if recipient else None
        kind = str(body.get("type", ""))
        data, duration_ms = await self._call(phone_number_id, body, peer, kind)
        messages = data.get("messages")
        message_id = ""
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            message_id = str(messages[0].get("id", ""))
        if not message_id:
            log_event(self._log, "send_unexpected_answer", logging.WARNING, keys=sorted(data))
        log_event(
            self._log,
            "message_sent",
            phone_number_id=phone_number_id,
            to=peer,
            type=kind,
            sent_message_id=message_id,
            duration_ms=duration_ms,
        )
        return SendResult(message_id=message_id, raw=data)

    async def mark_read(self, phone_number_id: str, message_id: str, typing: bool = False) -> None:
        """Mark `message_id` read (and show the typing indicator when `typing`)."""
        body = mark_read_body(message_id, typing=typing)
        kind = "typing" if typing else "read"
        _, duration_ms = await self._call(phone_number_id, body, None, kind)
        log_event(
            self._log, "message_marked_read", logging.DEBUG, type=kind, duration_ms=duration_ms
        )

    async def upload_media(self, phone_number_id: str, path: Path, mime_type: str) -> str:
        """POST the file to `/{phone_number_id}/media` (multipart, streamed from disk); returns
        the media id. Not paced by the limiter: an upload is not a message."""
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size

            def build() -> httpx.Request:
                file.seek(0)  # a retry after a connect failure sends the file from its start
                return self._client.build_request(
                    "POST",
                    f"{self._base}/{phone_number_id}/media",
                    headers=self._upload_headers,
                    data={"messaging_product": "whatsapp", "type": mime_type},
                    files={"file": (path.name, file, mime_type)},
                )

            data, duration_ms = await self._call(
                phone_number_id, build, None, "upload", paced=False
            )
        media_id = data.get("id")
        if not ids.is_numeric_id(media_id):
            log_event(self._log, "send_unexpected_answer", logging.WARNING, keys=sorted(data))
            raise PermanentError(f"graph answered the upload without a media id: {sorted(data)}")
        log_event(
            self._log,
            "media_uploaded",
            phone_number_id=phone_number_id,
            type=mime_type,
            bytes=size,
            media_id=media_id,
            duration_ms=duration_ms,
        )
        return media_id

    # --- one request ---------------------------------------------------------------------------

    async def _call(
        self,
        phone_number_id: str,
        body: JsonObject | Callable[[], httpx.Request],
        peer: str | None,
        kind: str,
        *,
        paced: bool = True,
    ) -> tuple[JsonObject, float]:
        """One Graph call: a JSON `body` to the messages endpoint, or the request `body` builds
        (called again for the retry of a request that cannot have reached Meta)."""
        # the id becomes a path segment: the domain checked it, this keeps the token on Meta's
        # messages endpoint whatever a caller passes
        if not ids.is_numeric_id(phone_number_id):
            raise InvalidTask(f"phone_number_id {ids.shown(phone_number_id)} is not a Graph id")
        build = body if callable(body) else self._json_request(phone_number_id, body)
        if self.breaker is not None and not self.breaker.allow():
            raise CircuitOpen(
                "graph_unreachable: circuit open", retry_after=self.breaker.retry_in()
            )
        probe = self._admit()
        try:
            if paced and self.limiter is not None:
                await self.limiter.acquire(phone_number_id, peer)
            return await self._post(phone_number_id, build, peer, kind)
        finally:
            if probe:
                self._probing = False

    def _json_request(self, phone_number_id: str, body: JsonObject) -> Callable[[], httpx.Request]:
        """The messages endpoint's request, built once: a retry sends the same object again."""
        request = httpx.Request(
            "POST",
            self._url(phone_number_id),
            content=json_codec.dumps(body),
            headers=self._headers,
            extensions=self._extensions,
        )
        return lambda: request

    def _admit(self) -> bool:
        """Fail fast while paused; once the pause is over, let one call through as the probe."""
        if self._paused_until is None:
            return False
        remaining = self._paused_until - self._clock()
        if remaining > 0 or self._probing:
            wait = remaining if remaining > 0 else min(30.0, self.auth_pause_s)
            raise SendPaused("graph_token_rejected", retry_after=wait, code=190)
        self._probing = True
        return True

    async def _post(
        self,
        phone_number_id: str,
        build: Callable[[], httpx.Request],
        peer: str | None,
        kind: str,
    ) -> tuple[JsonObject, float]:
        started = time.perf_counter()
        response = await self._request(build, phone_number_id, peer, kind)
        self._reached(response.status_code < 500)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        try:
            data: Any = json_codec.loads(response.content)
        except ValueError:
            data = None
        if response.is_success and isinstance(data, dict):
            self._resume()
            if peer is not None:
                self._pair_strikes.pop((phone_number_id, peer), None)
            return data, duration_ms
        raise self._failure(response, data, phone_number_id, peer, kind)

    async def _request(
        self,
        build: Callable[[], httpx.Request],
        phone_number_id: str,
        peer: str | None,
        kind: str,
    ) -> httpx.Response:
        """POST once; again at once if the first try cannot have reached Meta (a stale
        keep-alive connection, a refused connect): that retry cannot duplicate a message."""
        try:
            return await self._client.send(build())
        except httpx.TransportError as exc:
            if not _never_sent(exc):
                raise self._transport_failure(exc, phone_number_id, peer, kind) from exc
        try:
            return await self._client.send(build())
        except httpx.TransportError as exc:
            raise self._transport_failure(exc, phone_number_id, peer, kind) from exc

    def _messages_url(self, phone_number_id: str) -> httpx.URL:
        """`{base}/{version}/{phone_number_id}/messages`, parsed (`_url` caches it per number)."""
        return httpx.URL(f"{self._base}/{phone_number_id}/messages")

    def _transport_failure(
        self, exc: httpx.TransportError, phone_number_id: str, peer: str | None, kind: str
    ) -> TransientError:
        self._reached(False)
        name = type(exc).__name__
        fields: dict[str, Any] = {"phone_number_id": phone_number_id, "to": peer, "type": kind}
        if _never_sent(exc):
            log_event(self._log, "send_failed", logging.WARNING, error=name, retry=True, **fields)
            return TransientError(f"graph_unreachable: {name}")
        log_event(self._log, "send_ambiguous", logging.WARNING, error=name, **fields)
        return AmbiguousSendError(f"graph_no_answer: {name} after the request was sent")

    def _failure(
        self,
        response: httpx.Response,
        data: Any,
        phone_number_id: str,
        peer: str | None,
        kind: str,
    ) -> TransientError | PermanentError:
        error = GraphError.from_body(data) or GraphError(code=None, message=response.reason_phrase)
        key = (phone_number_id, peer or "")
        strikes = self._pair_strikes.get(key, 0)
        decision = classify(
            error.code,
            response.status_code,
            pair_strikes=strikes,
            retry_after_header=_retry_after_header(response),
        )
        if decision.action is Action.AUTH:
            self._pause(error)
        else:
            self._resume()  # Meta read the token and answered: it works
        if error.code == 131056 and peer is not None:
            self._pair_strikes[key] = strikes + 1
            if self.limiter is not None:
                self.limiter.penalize(phone_number_id, peer, decision.retry_after or 1.0)
        log_event(
            self._log,
            "send_failed",
            logging.WARNING,
            phone_number_id=phone_number_id,
            to=peer,
            type=kind,
            http_status=response.status_code,
            code=error.code,
            reason=decision.reason,
            action=decision.action.value,
            retry_after=decision.retry_after,
            fbtrace_id=error.fbtrace_id,
        )
        reason = _mask(f"graph error {error.code} ({decision.reason}): {error.message}")
        if decision.action is Action.PERMANENT:
            return PermanentError(reason, code=error.code)
        if decision.action is Action.AUTH:
            return SendPaused(reason, retry_after=self.auth_pause_s, code=error.code)
        return TransientError(reason, retry_after=decision.retry_after, code=error.code)

    # --- the breaker and the token pause ------------------------------------------------------

    def _reached(self, answered: bool) -> None:
        """Tell the breaker whether Meta answered (any answer but a 5xx) or was unreachable."""
        if self.breaker is None:
            return
        was_open = self.breaker.state is not BreakerState.CLOSED
        if answered:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
        is_open = self.breaker.state is not BreakerState.CLOSED
        if is_open and not was_open:
            log_event(self._log, "graph_breaker_opened", logging.WARNING)
        elif was_open and not is_open:
            log_event(self._log, "graph_breaker_closed", logging.WARNING)

    def _pause(self, error: GraphError) -> None:
        if self._paused_until is None:
            log_event(
                self._log,
                "graph_auth_error",
                logging.ERROR,
                code=error.code,
                subcode=error.subcode,
                fbtrace_id=error.fbtrace_id,
                pause_s=self.auth_pause_s,
            )
        self._paused_until = self._clock() + self.auth_pause_s

    def _resume(self) -> None:
        if self._paused_until is not None:
            self._paused_until = None
            log_event(self._log, "graph_auth_restored", logging.WARNING)


def graph_breaker(settings: Settings) -> CircuitBreaker:
    """The breaker that pauses sending while Meta is unreachable, from the settings."""
    return CircuitBreaker(settings.graph_breaker_failures, settings.graph_breaker_cooldown)
