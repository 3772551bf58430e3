"""A fake OpenAI-compatible chat completions server on 127.0.0.1, for tests and `pyloto bench`.

In a test (same event loop; times are `time.monotonic()`, comparable with the test's clock):

    async with FakeOpenAIServer(latency_ms=50) as fake:
        fake.script("event", FakeAnswer(content='{"event": "price"}'))
        fake.script("text", FakeAnswer(status=429, headers={"retry-after-ms": "10"}))
        settings = make_settings(openai_base_url=fake.base_url, openai_api_key="test-key")
        ...
        fake.requests[0].route, .arrived, .finished, .body

Each request is routed by its structured-output schema name (`response_format.json_schema.name`,
e.g. `event`, `message_type`) or `text` when it has none. An answer comes from that route's
script (first in, first out), else from `always(...)`, else the route's default (a valid answer:
`{"event": "other"}`, a text message shape, or a short text). A `FakeAnswer` may set the
status, headers, its own latency, or a raw body (malformed JSON).

From a shell (for benchmarks), serving until interrupted:

    python -m pyloto_cli.fakes.openai_server --port 8811 --latency-ms 500 --jitter-ms 50

`--port 0` takes a free port; the first line printed names the URL. `--jitter-ms J` adds a
uniform delay in [-J, +J] to each answer; `--error-rate R` answers that fraction of unscripted
requests with HTTP `--error-status` (500 by default), drawn from a generator seeded by `--seed`.

`POST /v1/audio/transcriptions` (route `transcription`) reads the multipart upload and records
`{"model", "filename", "content_type", "file": <the bytes>}` as the body; it answers
`{"text": ...}` with the scripted content, else `transcript of <n> bytes`. Chat requests with
image parts are recorded as they came (their `image_url` parts hold the data URLs).

`GET /v1/models` lists one model (what `pyloto doctor` calls); with `api_key=` set, any other
Bearer key gets 401. `GET /_fake/health` answers 200 when ready; `GET /_fake/requests` lists
the recorded requests (route, seconds since start of arrival and finish, status).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import BodyPartReader, web

DEFAULT_CONTENT: Mapping[str, str] = {
    "event": json.dumps({"event": "other"}),
    "message_type": json.dumps({"kind": "text", "buttons": [], "list_button": "", "sections": []}),
    "text": "Thanks for your message! How can I help?",
}


@dataclass(frozen=True, slots=True)
class FakeAnswer:
    """One scripted answer; unset fields take the server's defaults."""

    content: str | None = None
    status: int = 200
    latency_ms: float | None = None
    raw_body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RecordedRequest:
    """A request as the server saw it; `finished` is set when the answer is sent."""

    route: str
    body: dict[str, Any]
    arrived: float
    headers: dict[str, str] = field(default_factory=dict)
    finished: float | None = None
    status: int | None = None


def route_of(body: Mapping[str, Any]) -> str:
    """The structured-output schema name of a chat request, or `text`."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        name = fmt.get("json_schema", {}).get("name")
        if isinstance(name, str):
            return name
    return "text"


def completion_body(model: str, content: str, serial: int) -> dict[str, Any]:
    """A chat.completion object with one choice."""
    return {
        "id": f"chatcmpl-fake-{serial}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    }


def error_body(status: int) -> dict[str, Any]:
    """An OpenAI-style error object."""
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    return {"error": {"message": f"fake error {status}", "type": kind, "code": kind}}


class FakeOpenAIServer:
    """The server; an async context manager that binds on enter and closes on exit."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        route_latency_ms: Mapping[str, float] | None = None,
        jitter_ms: float = 0.0,
        error_rate: float = 0.0,
        error_status: int = 500,
        error_statuses: Sequence[int] = (),
        seed: int | None = None,
        api_key: str | None = None,
    ) -> None:
        self.host = host
        # when set, `GET /v1/models` answers 401 to any other Bearer key (as `pyloto doctor` sees)
        self.api_key = api_key
        self.port = port
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.error_rate = error_rate
        self.error_status = error_status
        # when given, each injected error's status is drawn from these instead (500s and 429s)
        self.error_statuses = tuple(error_statuses)
        self._random = random.Random(seed)
        self.route_latency_ms: dict[str, float] = dict(route_latency_ms or {})
        self.requests: list[RecordedRequest] = []
        self.started_at = time.monotonic()
        self._scripts: defaultdict[str, deque[FakeAnswer]] = defaultdict(deque)
        self._always: FakeAnswer | None = None
        self._closing = asyncio.Event()
        self._arrival = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The `OPENAI_BASE_URL` to use (with `/v1`)."""
        return f"http://{self.host}:{self.port}/v1"

    def script(self, route: str, *answers: FakeAnswer) -> None:
        """Queue answers for the next requests of `route`."""
        self._scripts[route].extend(answers)

    def always(self, answer: FakeAnswer | None) -> None:
        """Answer every unscripted request with `answer` (None: the defaults again)."""
        self._always = answer

    def by_route(self, route: str) -> list[RecordedRequest]:
        """The recorded requests of one route, in arrival order."""
        return [r for r in self.requests if r.route == route]

    async def wait_for_requests(self, count: int, within_s: float = 5.0) -> None:
        """Wait until `count` requests arrived (raises TimeoutError after `within_s`)."""
        async with asyncio.timeout(within_s), self._arrival:
            await self._arrival.wait_for(lambda: len(self.requests) >= count)

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # uploads of voice notes
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/chat/completions", self._complete)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/audio/transcriptions", self._transcribe)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_get("/_fake/health", self._health)
        app.router.add_get("/_fake/requests", self._list_requests)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.started_at = time.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _answer_for(self, route: str) -> FakeAnswer:
        queued = self._scripts.get(route)
        if queued:
            return queued.popleft()
        if self._always is not None:
            return self._always
        if self.error_rate > 0 and self._random.random() < self.error_rate:
            statuses = self.error_statuses or (self.error_status,)
            return FakeAnswer(status=self._random.choice(statuses))
        return FakeAnswer()

    def _latency_s(self, route: str, answer: FakeAnswer) -> float:
        if answer.latency_ms is not None:
            return answer.latency_ms / 1000.0
        base = self.route_latency_ms.get(route, self.latency_ms)
        if self.jitter_ms > 0:
            base += self._random.uniform(-self.jitter_ms, self.jitter_ms)
        return max(base, 0.0) / 1000.0

    async def _complete(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        raw = await request.read()
        body = json.loads(raw)
        route = route_of(body)
        record, answer = await self._arrive(request, route, body, arrived)
        response = self._response(answer, route, str(body.get("model", "fake")))
        record.finished = time.monotonic()
        record.status = response.status
        return response

    async def _arrive(
        self, request: web.Request, route: str, body: dict[str, Any], arrived: float
    ) -> tuple[RecordedRequest, FakeAnswer]:
        """Record the request (waking whoever waits for it), pick its answer, and hold it for
        the route's latency (cut short when the server closes)."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = RecordedRequest(route=route, body=body, arrived=arrived, headers=headers)
        async with self._arrival:
            self.requests.append(record)
            self._arrival.notify_all()
        answer = self._answer_for(route)
        delay = self._latency_s(route, answer)
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        return record, answer

    async def _transcribe(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body: dict[str, Any] = {}
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                body["filename"] = part.filename
                body["content_type"] = part.headers.get("Content-Type")
                body["file"] = bytes(await part.read())
            elif part.name is not None:
                body[part.name] = await part.text()
        route = "transcription"
        record, answer = await self._arrive(request, route, body, arrived)
        if answer.raw_body is not None:
            response = web.Response(text=answer.raw_body, status=answer.status)
        elif answer.status >= 400:
            response = web.json_response(error_body(answer.status), status=answer.status)
        else:
            size = len(body.get("file", b""))
            text = answer.content if answer.content is not None else f"transcript of {size} bytes"
            response = web.json_response(
                {"text": text, "usage": {"type": "duration", "seconds": 3}}
            )
        record.finished = time.monotonic()
        record.status = response.status
        return response

    def _response(self, answer: FakeAnswer, route: str, model: str) -> web.Response:
        headers = dict(answer.headers)
        if answer.raw_body is not None:
            text = answer.raw_body
        elif answer.status >= 400:
            text = json.dumps(error_body(answer.status))
        else:
            content = answer.content if answer.content is not None else _default(route)
            text = json.dumps(completion_body(model, content, len(self.requests)))
        return web.Response(
            text=text, status=answer.status, headers=headers, content_type="application/json"
        )

    async def _models(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            return web.json_response({"error": {**error, "code": "invalid_api_key"}}, status=401)
        model = {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "fake"}
        return web.json_response({"object": "list", "data": [model]})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _list_requests(self, _request: web.Request) -> web.Response:
        start = self.started_at
        rows = [
            {
                "route": r.route,
                "arrived_s": round(r.arrived - start, 6),
                "finished_s": None if r.finished is None else round(r.finished - start, 6),
                "status": r.status,
            }
            for r in self.requests
        ]
        return web.json_response(rows)


def _default(route: str) -> str:
    return DEFAULT_CONTENT.get(route, "{}")


async def serve(host: str, port: int, latency_ms: float, **options: Any) -> None:
    """Run the fake until SIGINT/SIGTERM; `options` are FakeOpenAIServer's keyword arguments."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeOpenAIServer(host=host, port=port, latency_ms=latency_ms, **options) as fake:
        print(f"fake-openai listening on {fake.base_url}", flush=True)  # noqa: T201
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    options = {
        "jitter_ms": args.jitter_ms,
        "error_rate": args.error_rate,
        "error_status": args.error_status,
        "seed": args.seed,
    }
    asyncio.run(serve(args.host, args.port, args.latency_ms, **options))


if __name__ == "__main__":
    main()
