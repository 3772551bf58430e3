"""HTTP clients whose plain requests go straight to their transport.

httpx's `AsyncClient.send` takes every request through its auth flow, its redirect loop, its
event hooks and its cookie jar before the transport sees it, and logs it. pyloto's two clients
(the Graph API's on `httpx`, OpenAI's on `httpx2`) use none of that: the token is a header,
they have no hooks, and neither API needs cookies. Their `send` hands such a request to the
transport its URL routes to (a proxy's, when the environment names one: the routing is the
client's own), reads the answer and returns it, with the client's timeout applied as before.
About a quarter less CPU per request (benchmarks/graph_client_cpu.py, llm_client_cpu.py).

The OpenAI client's `build_request` (which the SDK calls once per try) also takes a shorter
path for what the SDK sends: bytes content and a header list to an absolute URL. The URL is
parsed once (the last 64 distinct URLs are kept), and the client's default headers are
merged as a plain list (the caller's headers replace the defaults of the same name, as
`Headers.update` does); the request is the same as httpx2's own `build_request` makes, for
half its CPU.

`DirectOpenAI` (the SDK's `AsyncOpenAI`) builds a plain call's request from the one it built
for the last call like it: the SDK's `_build_request` merges its auth, default and platform
headers, parses the URL and normalizes the timeout on every call, though for the same URL,
timeout, try number, key and client defaults it makes the same request each time but for the
body. Half the SDK's CPU per call (benchmarks/llm_client_cpu.py).

httpx's own path still takes: streamed answers, a per-call auth or redirect choice, a client
given an auth or event hooks, and an answer that redirects while the client follows redirects
(the request is sent again through that path, which then follows it; a redirect means the
first request was not taken, so nothing is done twice).
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import httpx
import httpx2
from httpx._client import UseClientDefault as HttpxDefault
from httpx._types import AuthTypes as HttpxAuth
from httpx2._client import UseClientDefault as Httpx2Default
from httpx2._types import AuthTypes as Httpx2Auth
from httpx2._types import (
    CookieTypes,
    HeaderTypes,
    QueryParamTypes,
    RequestContent,
    RequestData,
    RequestExtensions,
    RequestFiles,
    TimeoutTypes,
)
from openai import NOT_GIVEN, AsyncOpenAI, DefaultAioHttpClient
from openai._models import FinalRequestOptions  # what `_build_request` takes; see the tests

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_URLS = 64  # parsed URLs kept (least recently used out): the SDK calls a handful
_MAX_TEMPLATES = 64  # request templates kept (all dropped when full): a few per stage timeout


class DirectGraphClient(httpx.AsyncClient):
    """`httpx.AsyncClient` whose plain requests skip its auth, redirect, hook and cookie steps."""

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: HttpxAuth | HttpxDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | HttpxDefault = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """`AsyncClient.send`, straight to the transport when nothing needs httpx's steps."""
        response = await _send(self, super().send, request, stream, auth, follow_redirects, httpx)
        return cast(httpx.Response, response)


class DirectOpenAIClient(DefaultAioHttpClient):
    """openai's `DefaultAioHttpClient` (httpx2 on aiohttp) whose plain requests skip httpx2's
    auth, redirect, hook and cookie steps."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._parse_url = functools.lru_cache(maxsize=_MAX_URLS)(httpx2.URL)

    def build_request(
        self,
        method: str,
        url: httpx2.URL | str,
        *,
        content: RequestContent | None = None,
        data: RequestData | None = None,
        files: RequestFiles | None = None,
        json: Any | None = None,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        timeout: TimeoutTypes | Httpx2Default = httpx2.USE_CLIENT_DEFAULT,
        extensions: RequestExtensions | None = None,
    ) -> httpx2.Request:
        """`AsyncClient.build_request`, shorter for bytes and a header list to an absolute URL."""
        parsed = self._parse_url(url) if isinstance(url, str) else None
        given = _names(headers)
        if (
            parsed is None
            or parsed.is_relative_url  # merged with `base_url` by httpx2's own path
            or given is None
            or not isinstance(content, bytes)
            or data is not None
            or files is not None
            or json is not None
            or params
            or cookies
            or extensions is not None
            or self.params
            or self.cookies
        ):
            return super().build_request(
                method,
                url,
                content=content,
                data=data,
                files=files,
                json=json,
                params=params,
                headers=headers,
                cookies=cookies,
                timeout=timeout,
                extensions=extensions,
            )
        # the defaults as they are stored (bytes; the client's cached encoding may predate a
        # default added beyond ASCII), then this call's own
        merged: list[tuple[Any, Any]] = [
            (name, value)
            for name, value in self.headers.raw
            if name.lower().decode("latin-1") not in given
        ]
        merged.extend(cast(list[tuple[str, str]], headers))
        chosen = self.timeout if isinstance(timeout, Httpx2Default) else httpx2.Timeout(timeout)
        return httpx2.Request(
            method,
            parsed,
            content=content,
            headers=merged,
            extensions={"timeout": chosen.as_dict()},
        )

    async def send(
        self,
        request: httpx2.Request,
        *,
        stream: bool = False,
        auth: Httpx2Auth | Httpx2Default | None = httpx2.USE_CLIENT_DEFAULT,
        follow_redirects: bool | Httpx2Default = httpx2.USE_CLIENT_DEFAULT,
    ) -> httpx2.Response:
        """`AsyncClient.send`, straight to the transport when nothing needs httpx2's steps."""
        response = await _send(self, super().send, request, stream, auth, follow_redirects, httpx2)
        return cast(httpx2.Response, response)


def _names(headers: HeaderTypes | None) -> set[str] | None:
    """The lower-cased names of a list of `(str, str)` headers; None for any other form."""
    if not isinstance(headers, list):
        return None
    names = set()
    for name, _ in headers:
        if not isinstance(name, str):
            return None
        names.add(name.lower())
    return names


async def _send(
    client: Any,
    full_send: Callable[..., Awaitable[Any]],
    request: Any,
    stream: bool,
    auth: object,
    follow_redirects: object,
    http: Any,
) -> Any:
    """The one dispatch of both clients' `send` (`http` is the httpx or httpx2 module): the
    direct path for a plain request, else (or for a redirect to follow) `full_send`."""
    if _plain(client, stream, auth, follow_redirects, http.USE_CLIENT_DEFAULT):
        response = await _direct(client, request, http.TransportError)
        if response is not None:
            return response
    return await full_send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)


def _plain(client: Any, stream: bool, auth: object, follow: object, default: object) -> bool:
    """True when the request needs none of the client's auth, redirect or hook steps."""
    hooks = client.event_hooks
    return (
        not stream
        and auth is default
        and follow is default
        and client.auth is None
        and not hooks["request"]
        and not hooks["response"]
        and not client.is_closed  # the client's own path raises its error
    )


async def _direct(
    client: Any, request: Any, failure: type[httpx.TransportError | httpx2.TransportError]
) -> Any | None:
    """The whole answer from the transport, or None (closed) when it is a redirect the client
    would follow, which the caller then sends through the client's own path."""
    client._set_timeout(request)
    started = time.perf_counter()
    try:
        response = await client._transport_for_url(request.url).handle_async_request(request)
    except failure as exc:
        exc.request = request  # as httpx's own path sets it
        raise
    response.request = request
    try:
        if (
            client.follow_redirects
            and response.status_code in _REDIRECTS
            and "location" in response.headers
        ):
            await response.aclose()
            return None
        await response.aread()
    except BaseException:
        await response.aclose()
        raise
    response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
    return response


@dataclass(frozen=True, slots=True)
class _Template:
    """A request the SDK built, but for its body."""

    method: str
    url: httpx2.URL
    headers: httpx2.Headers  # all but Content-Length, in order, with their encoding
    timeout: dict[str, float | None]

    @classmethod
    def of(cls, request: httpx2.Request) -> _Template | None:
        """The template of `request`, or None when Content-Length is not its last header
        (where httpx2 puts it), so that the template's requests would differ from it."""
        raw = request.headers.raw
        if not raw or raw[-1][0].lower() != b"content-length":
            return None
        timeout = request.extensions.get("timeout")
        if not isinstance(timeout, dict) or len(request.extensions) != 1:
            return None
        headers = httpx2.Headers(raw[:-1], request.headers.encoding)
        return cls(request.method, request.url, headers, timeout)

    def build(self, content: bytes) -> httpx2.Request:
        """The same request with `content` as its body. The headers are copied as httpx2
        stores them, with their encoding (Content-Length's digits do not change it), so
        neither is worked out again per call."""
        headers = httpx2.Headers(self.headers, self.headers.encoding)
        headers["Content-Length"] = str(len(content))
        request = httpx2.Request(
            self.method,
            self.url,
            stream=httpx2.ByteStream(content),
            extensions={"timeout": dict(self.timeout)},
        )
        request.headers = headers
        return request


class DirectOpenAI(AsyncOpenAI):
    """`AsyncOpenAI` whose plain calls' requests are built from a template: the request the
    SDK built for the first call with the same URL, timeout, try number, key and client
    defaults, with this call's body."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._templates: dict[tuple[Any, ...], _Template] = {}

    def _build_request(
        self, options: FinalRequestOptions, *, retries_taken: int = 0
    ) -> httpx2.Request:
        key = self._template_key(options, retries_taken)
        if key is None:
            return super()._build_request(options, retries_taken=retries_taken)
        template = self._templates.get(key)
        if template is not None:
            return template.build(cast(bytes, options.content))
        request = super()._build_request(options, retries_taken=retries_taken)
        template = _Template.of(request)
        if template is not None:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            self._templates[key] = template
        return request

    def _template_key(
        self, options: FinalRequestOptions, retries_taken: int
    ) -> tuple[Any, ...] | None:
        """What the SDK's request for `options` depends on besides its body, or None when it
        depends on more (per-call headers, params, files, an idempotency key sent, a legacy
        httpx client or one with params or cookies) or its body is not plain bytes."""
        timeout = options.timeout
        http = self._client
        if (
            not isinstance(options.content, bytes)
            or not options.content  # httpx2 puts an empty body's Content-Length elsewhere
            or options.params
            or options.headers
            or options.files is not None
            or options.json_data is not None
            or options.extra_json is not None
            or (self._idempotency_header is not None and options.idempotency_key is not None)
            or not (timeout is None or timeout is NOT_GIVEN or isinstance(timeout, int | float))
            or not isinstance(http, httpx2.AsyncClient)
            or http.params
            or http.cookies
        ):
            return None
        return (
            options.method,
            options.url,
            timeout,
            retries_taken,
            self.api_key,
            self.organization,
            self.project,
            tuple(sorted(options.security.items())),
            tuple(http.headers.raw),
        )
