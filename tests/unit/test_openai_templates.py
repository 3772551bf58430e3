"""DirectOpenAI: a plain call's request is built from the last like one's, and is the same
request the SDK would build; anything else goes through the SDK's own builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from openai import NOT_GIVEN, AsyncOpenAI
from openai._models import FinalRequestOptions

from pyloto_cli.adapters.direct_http import DirectOpenAI, DirectOpenAIClient

URL = "http://api.test/v1/chat/completions"
SDK_BUILD: Callable[..., httpx2.Request] = AsyncOpenAI._build_request


@pytest.fixture
def sdk_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of each request built by the SDK's own `_build_request`."""
    seen: list[str] = []

    def spy(self: Any, options: FinalRequestOptions, *, retries_taken: int = 0) -> Any:
        seen.append(options.url)
        return SDK_BUILD(self, options, retries_taken=retries_taken)

    monkeypatch.setattr(AsyncOpenAI, "_build_request", spy)
    return seen


def client(**kwargs: Any) -> DirectOpenAI:
    http = DirectOpenAIClient(headers={"X-Client": "c"}, timeout=3.0)
    return DirectOpenAI(api_key="sk-one", base_url="http://api.test/v1", http_client=http, **kwargs)


def options(content: bytes | None, **fields: Any) -> FinalRequestOptions:
    """What pyloto's chat call hands the SDK (the SDK adds the idempotency key)."""
    fields = {
        "content": content,
        "timeout": 7.5,
        "idempotency_key": "stainless-python-retry-1",
        **fields,
    }
    return FinalRequestOptions.construct(method="post", url=URL, **fields)


def assert_same(ours: httpx2.Request, theirs: httpx2.Request) -> None:
    assert (ours.method, ours.url) == (theirs.method, theirs.url)
    assert ours.headers.raw == theirs.headers.raw  # names, case, order, Content-Length
    assert ours.headers.encoding == theirs.headers.encoding
    assert ours.headers == theirs.headers
    assert ours.read() == theirs.read()
    assert ours.extensions == theirs.extensions


LIKE_CALLS: list[tuple[str, dict[str, Any], int]] = [
    ("what pyloto sends", {}, 0),
    ("a retry", {}, 2),
    ("no timeout", {"timeout": None}, 0),
    ("the client's timeout", {"timeout": NOT_GIVEN}, 0),
    ("an integer timeout", {"timeout": 12}, 0),
]


@pytest.mark.parametrize(
    ("case", "fields", "retries"), LIKE_CALLS, ids=[case for case, _, _ in LIKE_CALLS]
)
async def test_a_like_call_is_built_from_the_template_as_the_sdk_builds_it(
    case: str, fields: dict[str, Any], retries: int, sdk_builds: list[str]
) -> None:
    async with client() as sdk:
        first = sdk._build_request(options(b'{"a":1}', **fields), retries_taken=retries)
        assert_same(first, SDK_BUILD(sdk, options(b'{"a":1}', **fields), retries_taken=retries))
        assert len(sdk_builds) == 1
        for body in (b'{"model":"m","messages":[{"role":"user","content":"oi"}]}', b"{}"):
            later = options(body, **{**fields, "idempotency_key": "stainless-python-retry-2"})
            ours = sdk._build_request(later, retries_taken=retries)
            assert_same(ours, SDK_BUILD(sdk, later, retries_taken=retries))
        assert len(sdk_builds) == 1  # the later ones did not go through the SDK's builder


async def test_a_default_header_beyond_ascii_keeps_its_encoding(sdk_builds: list[str]) -> None:
    http = DirectOpenAIClient(headers={"X-Client": "caf\u00e9".encode()}, timeout=3.0)
    sdk = DirectOpenAI(api_key="sk-one", base_url="http://api.test/v1", http_client=http)
    async with sdk:
        sdk._build_request(options(b'{"a":1}'))
        later = options(b'{"b":2}', idempotency_key="stainless-python-retry-2")
        ours = sdk._build_request(later)
        theirs = SDK_BUILD(sdk, later)
    assert len(sdk_builds) == 1  # the first call: `ours` came from its template
    assert_same(ours, theirs)
    assert ours.headers.encoding == "utf-8"
    assert ours.headers["x-client"] == "caf\u00e9"


async def test_each_try_number_and_timeout_has_its_own_template(sdk_builds: list[str]) -> None:
    async with client() as sdk:
        for _ in range(2):
            for retries, timeout in ((0, 7.5), (1, 7.5), (0, 20.0)):
                made = sdk._build_request(options(b"{}", timeout=timeout), retries_taken=retries)
                assert made.headers["x-stainless-retry-count"] == str(retries)
                assert made.headers["x-stainless-read-timeout"] == str(timeout)
                assert made.extensions["timeout"]["read"] == timeout
        assert len(sdk_builds) == 3


UNLIKE_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("per-call headers", {"headers": {"X-Trace": "t"}}),
    ("query params", {"params": {"api-version": "2024-10"}}),
    ("an empty body", {"content": b""}),
    ("a JSON body", {"content": None, "json_data": {"model": "m"}}),
    ("extra JSON", {"content": None, "json_data": {"model": "m"}, "extra_json": {"seed": 1}}),
    ("an httpx2 timeout", {"timeout": httpx2.Timeout(5.0, read=9.0)}),
]


@pytest.mark.parametrize(("case", "fields"), UNLIKE_CALLS, ids=[case for case, _ in UNLIKE_CALLS])
async def test_a_call_the_template_does_not_cover_goes_through_the_sdk(
    case: str, fields: dict[str, Any], sdk_builds: list[str]
) -> None:
    async with client() as sdk:
        for _ in range(2):
            call = options(**{"content": b"{}", **fields})
            assert_same(sdk._build_request(call), SDK_BUILD(sdk, call))
        assert len(sdk_builds) == 2


async def test_an_idempotency_header_is_never_reused(
    sdk_builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the client sends the idempotency key (not OpenAI's today), each call is built."""
    async with client() as sdk:
        monkeypatch.setattr(sdk, "_idempotency_header", "Idempotency-Key")
        keys = []
        for key in ("k-1", "k-2"):
            keys.append(
                sdk._build_request(options(b"{}", idempotency_key=key)).headers["idempotency-key"]
            )
        assert keys == ["k-1", "k-2"]
        assert len(sdk_builds) == 2


async def test_a_new_key_or_client_default_builds_a_new_request(sdk_builds: list[str]) -> None:
    async with client() as sdk:
        sdk._build_request(options(b"{}"))
        sdk.api_key = "sk-two"  # as a key provider refreshes it
        assert sdk._build_request(options(b"{}")).headers["authorization"] == "Bearer sk-two"
        sdk._client.headers["X-Later"] = "yes"
        assert sdk._build_request(options(b"{}")).headers["x-later"] == "yes"
        sdk._client.cookies.set("session", "s", domain="api.test")
        for _ in range(2):
            assert sdk._build_request(options(b"{}")).headers["cookie"] == "session=s"
        assert len(sdk_builds) == 5


async def test_with_options_starts_without_templates(sdk_builds: list[str]) -> None:
    async with client() as sdk:
        sdk._build_request(options(b"{}"))
        other = sdk.with_options(organization="org-2")
        assert isinstance(other, DirectOpenAI)
        made = other._build_request(options(b"{}"))
        assert made.headers["openai-organization"] == "org-2"
        assert len(sdk_builds) == 2


async def test_the_templates_kept_are_bounded(sdk_builds: list[str]) -> None:
    async with client() as sdk:
        for timeout in range(1, 200):
            sdk._build_request(options(b"{}", timeout=float(timeout)))
        assert len(sdk._templates) <= 64
        assert_same(
            sdk._build_request(options(b"{}", timeout=199.0)),
            SDK_BUILD(sdk, options(b"{}", timeout=199.0)),
        )
