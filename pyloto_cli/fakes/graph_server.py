"""A fake Graph API on 127.0.0.1: records every request, answers like Meta, injects faults.

In tests (in the test's event loop):

    async with FakeGraphServer() as graph:            # port 0: a free port
        sender = GraphSender(client, access_token="t", api_version="v25.0", base_url=graph.url)
        graph.fail(130429, times=2)                    # the next two sends get a throttling error
        graph.delay_s = 0.05                           # every answer waits 50 ms
        ... graph.requests[-1].body ...

From a script or another process:
`python -m pyloto_cli.fakes.graph_server --port 8901 [--delay-ms 20]`; control it over HTTP:
`POST /_fake/faults {"code": 131056, "times": 3, "to": "+1555..."}`,
`POST /_fake/config {"delay_ms": 50, "token": "t"}`, `GET /_fake/requests`, `POST /_fake/reset`,
`POST /_fake/media?mime_type=audio/ogg` with the bytes as the body (answers `{"id", "sha256"}`
for a webhook to carry).

Faults: any Graph error code (`KNOWN_ERRORS` gives a realistic message and HTTP status), a
bare HTTP status (`{"http_status": 502}`), or a slow answer (`{"delay_s": 2}`: past the client's
read timeout, the ambiguous case).
When `token` is set, a request with another Bearer token gets error 190.
`GET /{version}/{phone_number_id}` answers a phone number node (what `pyloto doctor` reads);
after `own_numbers(...)`, any other id gets error 100.
`POST /{version}/{phone_number_id}/media` takes a multipart upload (`file`, `type`,
`messaging_product=whatsapp`) and answers a numeric media id; `uploads` keeps each one with its
exact bytes (`GET /_fake/uploads` lists them without the bytes). The token check, the delay and
the injected faults apply to uploads as to sends.

Media: `media_id = graph.add_media(data, "audio/ogg")` stores bytes under a new id;
`GET /{version}/{media_id}` answers Meta's media node with a download URL (`/_media/...`, which
needs the Bearer token when `token` is set); `expire_media_urls()` makes every URL issued so
far answer 404, as Meta's do after five minutes; `fail_downloads(403, 500)` answers the next
downloads with those statuses; `chunked=True` on `add_media` announces no size (no
`file_size`, no Content-Length).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

KNOWN_ERRORS: dict[int, tuple[int, str]] = {
    0: (401, "(#0) AuthException"),
    4: (400, "(#4) Application request limit reached"),
    100: (400, "(#100) Invalid parameter"),
    131000: (500, "Something went wrong"),
    130429: (400, "(#130429) Rate limit hit"),
    131026: (400, "Message undeliverable"),
    131047: (400, "Re-engagement message"),
    131048: (400, "Spam rate limit hit"),
    131056: (400, "(#131056) (Business Account, Consumer Account) pair rate limit hit"),
    133004: (503, "Server temporarily unavailable"),
    190: (401, "Error validating access token: Session has expired."),
}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it; `at` is `time.monotonic()` on arrival."""

    at: float
    method: str
    path: str
    phone_number_id: str
    authorization: str | None
    body: Any
    answered: int  # the HTTP status sent back
    code: int | None  # the Graph error code sent back, if any


@dataclass(frozen=True, slots=True)
class RecordedUpload:
    """One media upload as the fake received it, with the file's exact bytes."""

    at: float
    phone_number_id: str
    authorization: str | None
    messaging_product: str | None
    type: str | None  # the form's `type` field
    filename: str | None
    content_type: str | None  # the file part's own Content-Type
    data: bytes
    answered: int
    code: int | None
    media_id: str | None

    def summary(self) -> dict[str, Any]:
        """The upload without its bytes: size and sha256 instead."""
        fields = {k: v for k, v in asdict(self).items() if k != "data"}
        return {**fields, "size": len(self.data), "sha256": hashlib.sha256(self.data).hexdigest()}


@dataclass(slots=True)
class Fault:
    """An injected failure for the next `times` matching requests (None: every one)."""

    code: int | None = None
    http_status: int | None = None
    times: int | None = 1
    to: str | None = None  # only requests to this recipient
    delay_s: float = 0.0  # wait this long before the fault's answer

    def matches(self, body: Any) -> bool:
        if self.to is None:
            return True
        return isinstance(body, dict) and self.to in (body.get("to"), body.get("recipient"))


@dataclass(slots=True)
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    delay_s: float = 0.0
    token: str | None = None
    phone_numbers: frozenset[str] | None = None  # None: any id is one of ours
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    gate: asyncio.Event | None = None  # sends wait on it while set (`hold`)
    held: int = 0
    random_rate: float = 0.0  # `fail_at_random`
    random_codes: tuple[int, ...] = ()
    rng: random.Random = field(default_factory=random.Random)
    uploads: list[RecordedUpload] = field(default_factory=list)
    media_ids: itertools.count[int] = field(
        default_factory=lambda: itertools.count(1_000_000_000_000_001)
    )
    media: dict[str, StoredMedia] = field(default_factory=dict)
    media_urls: dict[str, str] = field(default_factory=dict)  # live URL nonce -> media id
    download_faults: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredMedia:
    """Bytes a fake user sent, as Meta keeps them."""

    data: bytes
    mime_type: str
    chunked: bool = False

    @property
    def sha256(self) -> str:
        """The base64 digest a webhook would carry."""
        return base64.b64encode(hashlib.sha256(self.data).digest()).decode("ascii")


def error_body(code: int, message: str | None = None) -> dict[str, Any]:
    """Meta's error shape for `code` (DOMAIN.md §4)."""
    text = message or KNOWN_ERRORS.get(code, (400, f"(#{code}) Error"))[1]
    return {
        "error": {
            "message": text,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": text},
            "fbtrace_id": f"AFakeTrace{code}",
        }
    }


def _text_field(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _error_code(payload: Any) -> int | None:
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else None


class FakeGraphServer:
    """The fake Graph API; an async context manager that serves in the running loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._state = _State()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    # --- test API ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to use as GRAPH_API_URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        return self._state.requests

    @property
    def delay_s(self) -> float:
        """Seconds every answer waits (a slow Graph)."""
        return self._state.delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._state.delay_s = value

    def require_token(self, token: str | None) -> None:
        """Answer 190 to any other Bearer token (None: accept any)."""
        self._state.token = token

    def own_numbers(self, *phone_number_ids: str) -> None:
        """`GET /{id}` finds only these phone number ids (none given: any id)."""
        self._state.phone_numbers = frozenset(phone_number_ids) if phone_number_ids else None

    def fail(self, code: int | None = None, *, times: int | None = 1, **options: Any) -> Fault:
        """Inject a fault for the next `times` matching requests (see `Fault`)."""
        fault = Fault(code=code, times=times, **options)
        self._state.faults.append(fault)
        return fault

    @property
    def uploads(self) -> list[RecordedUpload]:
        """Every media upload received so far, in arrival order."""
        return self._state.uploads

    def add_media(self, data: bytes, mime_type: str, *, chunked: bool = False) -> str:
        """Store a user's media; returns its new id (digits, as Meta's)."""
        media_id = f"4{len(self._state.media) + 1:014d}"
        self._state.media[media_id] = StoredMedia(data, mime_type, chunked)
        return media_id

    def media_sha256(self, media_id: str) -> str:
        """The base64 sha256 of stored media, as the webhook carries it."""
        return self._state.media[media_id].sha256

    def expire_media_urls(self) -> None:
        """Every download URL issued so far now answers 404."""
        self._state.media_urls.clear()

    def fail_downloads(self, *statuses: int) -> None:
        """Answer the next downloads with these HTTP statuses, in order."""
        self._state.download_faults.extend(statuses)

    def downloads(self) -> list[RecordedRequest]:
        """Media downloads (any answer), in arrival order."""
        return [r for r in self.requests if r.path.startswith("/_media/")]

    def reset(self) -> None:
        """Forget requests, faults, delay and token."""
        self._state = _State()

    def fail_at_random(self, rate: float, codes: Sequence[int], seed: int | None = None) -> None:
        """Answer a `rate` share of the sends no fault matched with one of the Graph error
        `codes`, drawn at random (seeded); rate 0 stops."""
        self._state.random_rate = rate
        self._state.random_codes = tuple(codes)
        self._state.rng = random.Random(seed)

    def stop_failing(self, fault: Fault) -> None:
        """Withdraw a fault `fail` returned (e.g. one with `times=None`: the end of an outage)."""
        with contextlib.suppress(ValueError):
            self._state.faults.remove(fault)

    def hold(self) -> None:
        """Keep every send that arrives from now on waiting (in flight) until `let_go`."""
        if self._state.gate is None:
            self._state.gate = asyncio.Event()

    def let_go(self) -> None:
        """Answer the held sends now, and hold no more."""
        gate, self._state.gate = self._state.gate, None
        if gate is not None:
            gate.set()

    @property
    def held(self) -> int:
        """How many sends are waiting at the gate now."""
        return self._state.held

    async def wait_for_requests(self, count: int, within_s: float = 5.0) -> None:
        """Poll until `count` requests were answered; TimeoutError after `within_s`."""
        deadline = time.monotonic() + within_s
        while len(self._state.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._state.requests)} of {count} requests arrived")
            await asyncio.sleep(0.005)

    def messages(self) -> list[RecordedRequest]:
        """Accepted message sends (not read receipts)."""
        return [
            r
            for r in self.requests
            if r.answered == 200 and isinstance(r.body, dict) and "status" not in r.body
        ]

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        config = uvicorn.Config(
            self.app(),
            host=self.host,
            port=self.port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=4096,
            timeout_keep_alive=60,
        )
        self._server = uvicorn.Server(config)
        # the test runner (or asyncio.run in script mode) owns the signals, not the fake
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                await self._stop()
                raise RuntimeError(f"fake Graph server did not start on {self.host}:{self.port}")
            await asyncio.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    # --- the app -----------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The ASGI app (Graph routes plus `/_fake/` control routes)."""
        return Starlette(
            routes=[
                Route("/_fake/requests", self._list_requests, methods=["GET"]),
                Route("/_fake/faults", self._add_fault, methods=["POST"]),
                Route("/_fake/config", self._configure, methods=["POST"]),
                Route("/_fake/reset", self._reset, methods=["POST"]),
                Route("/_fake/uploads", self._list_uploads, methods=["GET"]),
                Route("/{version}/{phone_number_id}/media", self._upload, methods=["POST"]),
                Route("/_media/{nonce}", self._download, methods=["GET"]),
                Route("/_fake/media", self._add_media, methods=["POST"]),
                Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"]),
                Route("/{version}/{phone_number_id}", self._phone_number, methods=["GET"]),
            ],
        )

    async def _messages(self, request: Request) -> Response:
        arrived = time.monotonic()
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        status, payload = await self._answer(request, body)
        self._state.requests.append(
            RecordedRequest(
                at=arrived,
                method=request.method,
                path=request.url.path,
                phone_number_id=request.path_params["phone_number_id"],
                authorization=request.headers.get("authorization"),
                body=body,
                answered=status,
                code=_error_code(payload),
            )
        )
        return JSONResponse(payload, status_code=status)

    async def _phone_number(self, request: Request) -> Response:
        """A phone number node, as `pyloto doctor` reads it: 190 for another token, 100 for a
        number the token cannot see."""
        number = request.path_params["phone_number_id"]
        if self._state.delay_s:
            await asyncio.sleep(self._state.delay_s)
        token = self._state.token
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse(error_body(190), status_code=401)
        if number in self._state.media:
            return self._media_node(request, number)
        known = self._state.phone_numbers
        if known is not None and number not in known:
            message = f"Unsupported get request. Object with ID '{number}' does not exist"
            return JSONResponse(error_body(100, message), status_code=400)
        node = {"id": number, "display_phone_number": "+1 555 000 0000", "verified_name": "Fake"}
        return JSONResponse({**node, "quality_rating": "GREEN"})

    def _media_node(self, request: Request, media_id: str) -> Response:
        stored = self._state.media[media_id]
        nonce = f"{next(self._state.ids):08d}{media_id}"
        self._state.media_urls[nonce] = media_id
        self._record(request, media_id, 200, None)
        node = {
            "messaging_product": "whatsapp",
            "url": f"{self.url}/_media/{nonce}?ext=1&hash=ATfake",
            "mime_type": stored.mime_type,
            "sha256": hashlib.sha256(stored.data).hexdigest(),
            "file_size": str(len(stored.data)),
            "id": media_id,
        }
        if stored.chunked:  # a node that does not announce the size
            del node["file_size"]
        return JSONResponse(node)

    async def _add_media(self, request: Request) -> Response:
        mime_type = request.query_params.get("mime_type", "application/octet-stream")
        media_id = self.add_media(await request.body(), mime_type)
        return JSONResponse({"id": media_id, "sha256": self.media_sha256(media_id)})

    async def _download(self, request: Request) -> Response:
        state = self._state
        media_id = state.media_urls.get(request.path_params["nonce"])
        token = state.token
        status = 200
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            status = 401
        elif state.download_faults:
            status = state.download_faults.pop(0)
        elif media_id is None:
            status = 404
        self._record(request, media_id or "", status, None)
        if status != 200 or media_id is None:
            return Response(b"", status_code=status)
        stored = state.media[media_id]
        if not stored.chunked:
            return Response(stored.data, media_type=stored.mime_type)

        async def chunks() -> Any:
            for start in range(0, len(stored.data), 256 * 1024):
                yield stored.data[start : start + 256 * 1024]

        return StreamingResponse(chunks(), media_type=stored.mime_type)

    def _record(self, request: Request, node: str, status: int, code: int | None) -> None:
        self._state.requests.append(
            RecordedRequest(
                at=time.monotonic(),
                method=request.method,
                path=request.url.path,
                phone_number_id=node,
                authorization=request.headers.get("authorization"),
                body=None,
                answered=status,
                code=code,
            )
        )

    async def _answer(self, request: Request, body: Any) -> tuple[int, Any]:
        state = self._state
        if state.gate is not None:
            state.held += 1
            try:
                await state.gate.wait()
            finally:
                state.held -= 1
        fault = self._take_fault(body)
        if fault is None and state.random_rate and state.rng.random() < state.random_rate:
            fault = Fault(code=state.rng.choice(state.random_codes))
        refused = await self._delay_and_refuse(request, fault)
        if refused is not None:
            return refused
        if isinstance(body, dict) and body.get("status") == "read":
            return 200, {"success": True}
        return 200, self._accepted(body)

    async def _delay_and_refuse(
        self, request: Request, fault: Fault | None
    ) -> tuple[int, Any] | None:
        """What every call goes through before its own answer: the configured latency (and the
        fault's), the token check, then the fault's error; None when the call goes on."""
        state = self._state
        delay = state.delay_s + (fault.delay_s if fault else 0.0)
        if delay:
            await asyncio.sleep(delay)
        token = state.token
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return 401, error_body(190)
        if fault is not None and fault.code is not None:
            status = fault.http_status or KNOWN_ERRORS.get(fault.code, (400, ""))[0]
            return status, error_body(fault.code)
        if fault is not None and fault.http_status is not None:
            return fault.http_status, {"detail": "fake failure (no Graph error object)"}
        return None

    def _take_fault(self, body: Any) -> Fault | None:
        for fault in self._state.faults:
            if fault.matches(body):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._state.faults.remove(fault)
                return fault
        return None

    def _accepted(self, body: Any) -> dict[str, Any]:
        n = next(self._state.ids)
        peer = body.get("to") or body.get("recipient") if isinstance(body, dict) else None
        contact: dict[str, Any] = {"input": peer}
        if isinstance(peer, str) and peer.lstrip("+").isdigit():
            contact["wa_id"] = peer.lstrip("+")
        else:
            contact["user_id"] = peer
        return {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [{"id": f"wamid.fake.{n:08d}"}],
        }

    async def _upload(self, request: Request) -> Response:
        """`POST /{phone_number_id}/media`: Meta's multipart upload, answered `{"id": ...}`."""
        arrived = time.monotonic()
        form = await request.form()
        file = form.get("file")
        upload = file if isinstance(file, UploadFile) else None
        data = await upload.read() if upload is not None else b""
        fields = {name: form.get(name) for name in ("messaging_product", "type")}
        status, payload = await self._upload_answer(request, fields, upload)
        self._state.uploads.append(
            RecordedUpload(
                at=arrived,
                phone_number_id=request.path_params["phone_number_id"],
                authorization=request.headers.get("authorization"),
                messaging_product=_text_field(fields["messaging_product"]),
                type=_text_field(fields["type"]),
                filename=upload.filename if upload is not None else None,
                content_type=upload.content_type if upload is not None else None,
                data=data,
                answered=status,
                code=_error_code(payload),
                media_id=payload.get("id") if status == 200 else None,
            )
        )
        await form.close()
        return JSONResponse(payload, status_code=status)

    async def _upload_answer(
        self, request: Request, fields: dict[str, Any], upload: UploadFile | None
    ) -> tuple[int, Any]:
        refused = await self._delay_and_refuse(request, self._take_fault({"upload": True}))
        if refused is not None:
            return refused
        if fields["messaging_product"] != "whatsapp" or not fields["type"] or upload is None:
            message = "(#100) file, type and messaging_product=whatsapp are required"
            return 400, error_body(100, message)
        return 200, {"id": str(next(self._state.media_ids))}

    async def _list_uploads(self, request: Request) -> Response:
        return JSONResponse([u.summary() for u in self._state.uploads])

    async def _list_requests(self, request: Request) -> Response:
        return JSONResponse([asdict(r) for r in self._state.requests])

    async def _add_fault(self, request: Request) -> Response:
        options = await request.json()
        fault = self.fail(**options)
        return JSONResponse(asdict(fault))

    async def _configure(self, request: Request) -> Response:
        options = await request.json()
        if "delay_ms" in options:
            self.delay_s = float(options["delay_ms"]) / 1000
        if "token" in options:
            self.require_token(options["token"])
        return JSONResponse(
            {"delay_s": self.delay_s, "token_required": self._state.token is not None}
        )

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})


async def _serve_forever(host: str, port: int, delay_ms: float) -> None:
    async with FakeGraphServer(host, port) as server:
        server.delay_s = delay_ms / 1000
        print(f"fake Graph API on {server.url}", flush=True)  # noqa: T201
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main() -> None:
    """`python -m pyloto_cli.fakes.graph_server --port N`: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.host, args.port, args.delay_ms))


if __name__ == "__main__":
    main()
