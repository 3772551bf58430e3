"""The direct clients: plain requests go straight to the transport, the rest through httpx."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

from pyloto_cli.adapters.direct_http import DirectGraphClient, DirectOpenAIClient


@dataclass(frozen=True)
class Flavour:
    http: ModuleType  # httpx or httpx2
    client: Callable[..., Any]


FLAVOURS = [
    pytest.param(Flavour(httpx, DirectGraphClient), id="graph-httpx"),
    pytest.param(Flavour(httpx2, DirectOpenAIClient), id="openai-httpx2"),
]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    value: Flavour = request.param
    return value


@pytest.fixture
def client_path(flavour: Flavour, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each request that went through httpx's own auth/redirect path."""
    seen: list[str] = []
    original = flavour.http.AsyncClient._send_handling_auth

    async def spy(self: Any, request: Any, **kwargs: Any) -> Any:
        seen.append(request.url.path)
        return await original(self, request, **kwargs)

    monkeypatch.setattr(flavour.http.AsyncClient, "_send_handling_auth", spy)
    return seen


def mock(flavour: Flavour, handler: Callable[[Any], Any]) -> Any:
    return flavour.http.MockTransport(handler)


async def test_plain_request_goes_straight_to_the_transport(
    flavour: Flavour, client_path: list[str]
) -> None:
    """Answer read, request attached, client timeout applied, no cookie kept, httpx path unused."""
    http = flavour.http
    seen: list[Any] = []

    def answer(request: Any) -> Any:
        seen.append(request)
        return http.Response(200, json={"ok": True}, headers={"set-cookie": "__cf_bm=x; Path=/"})

    async with flavour.client(transport=mock(flavour, answer), timeout=http.Timeout(3.0)) as client:
        request = http.Request("POST", "http://api.test/v1/chat", content=b"{}")
        response = await client.send(request)
        assert response.json() == {"ok": True}
        assert response.request is request
        assert response.elapsed >= datetime.timedelta(0)
        assert not client.cookies
    assert seen == [request]
    assert seen[0].extensions["timeout"] == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}
    assert client_path == []


@pytest.mark.parametrize("case", ["stream", "call_auth", "client_auth", "hook"])
async def test_what_needs_httpx_goes_through_its_path(
    flavour: Flavour, client_path: list[str], case: str
) -> None:
    """A streamed answer, an auth (per call or on the client) or an event hook: httpx's path."""
    http = flavour.http
    hooked: list[str] = []

    async def hook(request: Any) -> None:
        hooked.append(request.url.path)

    def answer(request: Any) -> Any:
        return http.Response(200, json={"auth": request.headers.get("authorization")})

    options: dict[str, Any] = {"transport": mock(flavour, answer)}
    if case == "client_auth":
        options["auth"] = ("user", "pass")
    if case == "hook":
        options["event_hooks"] = {"request": [hook]}
    async with flavour.client(**options) as client:
        request = http.Request("GET", "http://api.test/x")
        if case == "stream":
            response = await client.send(request, stream=True)
            await response.aread()
        elif case == "call_auth":
            response = await client.send(request, auth=("user", "pass"))
        else:
            response = await client.send(request)
    assert client_path == ["/x"]
    assert (response.json()["auth"] is not None) == (case in ("call_auth", "client_auth"))
    assert hooked == (["/x"] if case == "hook" else [])


@pytest.mark.parametrize("follow", [True, False])
async def test_a_redirect_is_followed_only_when_the_client_follows(
    flavour: Flavour, client_path: list[str], follow: bool
) -> None:
    """Following: the request goes again through httpx's path, which follows it. Not
    following: the redirect is the answer, as httpx gives it."""
    http = flavour.http
    paths: list[str] = []

    def answer(request: Any) -> Any:
        paths.append(request.url.path)
        if request.url.path == "/old":
            return http.Response(307, headers={"location": "/new"})
        return http.Response(200, json={"at": request.url.path})

    async with flavour.client(transport=mock(flavour, answer), follow_redirects=follow) as client:
        response = await client.send(http.Request("POST", "http://api.test/old", content=b"{}"))
    if follow:
        assert (response.status_code, response.json()) == (200, {"at": "/new"})
        assert paths == ["/old", "/old", "/new"]
        assert client_path == ["/old"]
    else:
        assert (response.status_code, response.headers["location"]) == (307, "/new")
        assert paths == ["/old"]
        assert client_path == []


async def test_a_transport_error_names_its_request(flavour: Flavour) -> None:
    """As on httpx's path, the error carries the request (what a retry or a log reads)."""
    http = flavour.http

    def refuse(request: Any) -> Any:
        raise http.ConnectError("refused")

    async with flavour.client(transport=mock(flavour, refuse)) as client:
        request = http.Request("POST", "http://api.test/x", content=b"{}")
        with pytest.raises(http.ConnectError) as info:
            await client.send(request)
    assert info.value.request is request


async def test_a_failed_read_closes_the_answer(flavour: Flavour) -> None:
    """The body breaks off mid-read: the error reaches the caller and the answer is closed."""
    http = flavour.http
    closed: list[bool] = []

    class Broken(http.AsyncByteStream):  # type: ignore[name-defined,misc]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'{"par'
            raise http.ReadError("connection reset")

        async def aclose(self) -> None:
            closed.append(True)

    async with flavour.client(
        transport=mock(flavour, lambda request: http.Response(200, stream=Broken()))
    ) as client:
        with pytest.raises(http.ReadError):
            await client.send(http.Request("GET", "http://api.test/x"))
    assert closed


async def test_the_url_picks_its_mounted_transport(flavour: Flavour) -> None:
    """Routing stays the client's own: a mounted transport (a proxy's) answers its URLs."""
    http = flavour.http

    def direct(request: Any) -> Any:
        return http.Response(200, text="direct")

    def proxied(request: Any) -> Any:
        return http.Response(200, text="proxied")

    mounts = {"http://proxied.test": mock(flavour, proxied)}
    async with flavour.client(transport=mock(flavour, direct), mounts=mounts) as client:
        assert (await client.send(http.Request("GET", "http://proxied.test/a"))).text == "proxied"
        assert (await client.send(http.Request("GET", "http://api.test/a"))).text == "direct"


async def test_a_closed_client_refuses_as_httpx_does(flavour: Flavour) -> None:
    http = flavour.http
    client = flavour.client(transport=mock(flavour, lambda request: http.Response(200)))
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.send(http.Request("GET", "http://api.test/x"))


SDK_HEADERS = [
    ("Authorization", "Bearer sk-test"),
    ("accept", "application/json"),
    ("content-type", "application/json"),
    ("user-agent", "AsyncOpenAI/Python"),
    ("x-stainless-retry-count", "0"),
]
BUILDS: list[tuple[str, dict[str, Any]]] = [
    ("what the SDK sends", {}),
    ("a timeout per call", {"timeout": 7.5}),
    ("no timeout", {"timeout": None}),
    ("str content", {"content": "{}"}),
    ("a mapping of headers", {"headers": dict(SDK_HEADERS)}),
    ("bytes headers", {"headers": [(b"accept", b"text/plain")]}),
    ("query params", {"params": {"api-version": "2024-10"}}),
    ("cookies", {"cookies": {"session": "s"}}),
    ("extensions", {"extensions": {"trace": "t"}}),
    ("json", {"content": None, "json": {"a": 1}}),
    ("a relative URL", {"url": "chat/completions"}),
]


@pytest.mark.parametrize(("case", "change"), BUILDS, ids=[case for case, _ in BUILDS])
async def test_build_request_makes_what_httpx2_makes(case: str, change: dict[str, Any]) -> None:
    """Same method, URL, headers (names, case, order), body and timeout as httpx2's own."""
    arguments: dict[str, Any] = {
        "url": "http://api.test/v1/chat/completions?x=1",
        "content": b'{"model":"m"}',
        "headers": SDK_HEADERS,
        **change,
    }
    async with DirectOpenAIClient(
        base_url="http://base.test/v1/", headers={"X-Client": "c"}, timeout=3.0
    ) as client:
        for _ in range(2):  # the second time, with the URL already parsed
            ours = client.build_request("POST", **arguments)
            theirs = httpx2.AsyncClient.build_request(client, "POST", **arguments)
            assert (ours.method, ours.url) == (theirs.method, theirs.url)
            assert ours.headers.raw == theirs.headers.raw
            assert ours.read() == theirs.read()
            assert ours.extensions == theirs.extensions


async def test_build_request_uses_the_client_defaults_of_the_moment() -> None:
    """Default headers, cookies and params set after the first request still apply."""
    async with DirectOpenAIClient(timeout=3.0) as client:
        url = "http://api.test/v1/chat/completions"
        client.build_request("POST", url, content=b"{}", headers=SDK_HEADERS)
        client.headers["X-Later"] = "yes"
        client.timeout = httpx2.Timeout(9.0)
        later = client.build_request("POST", url, content=b"{}", headers=SDK_HEADERS)
        assert later.headers["x-later"] == "yes"
        assert later.extensions["timeout"]["read"] == 9.0
        client.cookies.set("session", "s", domain="api.test")
        client.params = httpx2.QueryParams({"v": "2"})
        again = client.build_request("POST", url, content=b"{}", headers=SDK_HEADERS)
        assert again.headers["cookie"] == "session=s"
        assert again.url.params["v"] == "2"
