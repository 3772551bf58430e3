"""Property: whatever a client sends to the webhook, the answer is 200 or a 4xx, never a 5xx,
a crash or a hang, and nothing is stored without a valid signature.

Bodies are built from the project's own fixtures (Meta's real shapes) and then broken: bytes
inserted, deleted or replaced, cut short, any field's value swapped for a value of another type
(huge numbers, floats, NaN, text, objects, lists), a field nested up to 100,000 levels deep,
invalid UTF-8, padded past the 3 MiB limit; sent signed, unsigned, with another secret's
signature or with garbage bytes in the header, with any content type, whole or chunked.
Derandomized with a fixed number of examples, so every run (and CI) tries the same requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.errors import MalformedPayload
from pyloto_cli.domain.signature import sign
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.domain.webhook_json import parse_webhook_body
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app
from pyloto_cli.web.body import MAX_BODY_BYTES
from pyloto_cli.web.intake import Intake
from tests.conftest import FIXTURES

SECRET = "property-app-secret"
FIXTURE_BODIES = [path.read_bytes() for path in sorted((FIXTURES / "webhooks").glob("*.json"))]
FIXTURE_SET = frozenset(FIXTURE_BODIES)
PLACEHOLDER = "\x00pyloto-placeholder\x00"
DEPTHS = [100_000, 990, 65, 64, 63, 5000, 200, 12, 2]  # the first drawn most

PROFILE = hypothesis.settings(
    derandomize=True,  # the same examples on every run: CI stays stable
    database=None,
    deadline=None,  # a loaded 2-core machine must not turn slowness into a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([2**63, 2**64, 2**70, -(2**63) - 1, 10**400])
    | st.floats()
    # lone surrogates included: JSON escapes can carry them, and the stores must cope
    | st.text(st.characters(exclude_categories=()), max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every node of a parsed JSON value, itself included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """`value` with the node at `path` replaced by `new` (a copy along the path)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [replaced(child, rest, new) if i == head else child for i, child in enumerate(value)]


def dump(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))


@st.composite
def field_swapped(draw: st.DrawFn) -> bytes:
    """A fixture with one node (any field, any depth) replaced by a value of any type."""
    value = json.loads(draw(st.sampled_from(FIXTURE_BODIES)))
    path = draw(st.sampled_from(paths(value)))
    text = dump(replaced(value, path, draw(json_values)), draw(st.booleans()))
    # unescaped, a lone surrogate becomes bytes no UTF-8 decoder takes: a 400 case of its own
    return text.encode("utf-8", "surrogatepass")


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    """A fixture with one node wrapped in arrays or objects, up to 100,000 levels."""
    value = json.loads(draw(st.sampled_from(FIXTURE_BODIES)))
    path = draw(st.sampled_from(paths(value)))
    depth = draw(st.sampled_from(DEPTHS) | st.integers(1, 1500))
    if draw(st.booleans()):
        opening, closing = "[" * depth, "]" * depth
    else:
        opening, closing = '{"a":' * depth, "}" * depth
    text = dump(replaced(value, path, PLACEHOLDER), ascii_only=True)
    return text.replace(dump(PLACEHOLDER, True), f"{opening}1{closing}", 1).encode()


@st.composite
def byte_mutated(draw: st.DrawFn) -> bytes:
    """A fixture's bytes with a few inserted, deleted or replaced (invalid UTF-8 included)."""
    body = bytearray(draw(st.sampled_from(FIXTURE_BODIES)))
    edits = st.tuples(
        st.sampled_from(["insert", "delete", "replace"]),
        st.integers(0),
        st.binary(min_size=1, max_size=4),
    )
    for op, where, data in draw(st.lists(edits, min_size=1, max_size=6)):
        at = where % (len(body) + 1)
        if op == "insert":
            body[at:at] = data
        elif op == "delete":
            del body[at : at + len(data)]
        else:
            body[at : at + len(data)] = data
    return bytes(body)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    body = draw(st.sampled_from(FIXTURE_BODIES))
    return body[: draw(st.integers(0, len(body) - 1))]


bodies = st.one_of(  # a strategy listed twice is drawn twice as often
    st.sampled_from(FIXTURE_BODIES),
    st.sampled_from(FIXTURE_BODIES),
    field_swapped(),
    field_swapped(),
    deeply_nested(),
    byte_mutated(),
    truncated(),
    st.binary(max_size=300),
    json_values.map(lambda value: dump(value, ascii_only=False).encode()),
)


@dataclass(frozen=True, repr=False)
class Request:
    body: bytes
    signature: str  # "valid", "missing", "other-secret" or "garbage"
    garbage: bytes
    content_type: bytes | None
    chunked: bool

    def __repr__(self) -> str:  # a failing example as a reader can take it in
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"Request(body={body!r} ({len(self.body)} bytes), signature={self.signature!r}, "
            f"garbage={self.garbage!r}, content_type={self.content_type!r}, "
            f"chunked={self.chunked})"
        )

    @property
    def signed(self) -> bool:
        return self.signature == "valid"

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        if self.signature == "valid":
            headers.append((b"x-hub-signature-256", sign(SECRET.encode(), self.body).encode()))
        elif self.signature == "other-secret":
            headers.append((b"x-hub-signature-256", sign(b"other", self.body).encode()))
        elif self.signature == "garbage":
            headers.append((b"x-hub-signature-256", self.garbage))
        if self.content_type is not None:
            headers.append((b"content-type", self.content_type))
        return headers


header_bytes = st.binary(max_size=80).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))


# the first choice is the one hypothesis draws most: a signed JSON request, as Meta sends
SIGNATURES = ["valid", "valid", "valid", "missing", "other-secret", "garbage"]
CONTENT_TYPES = [b"application/json", None, b"application/json; charset=utf-8", b"text/plain"]
OVERSIZE = [False] * 19 + [True]  # past Meta's 3 MiB maximum, one request in about 20


@st.composite
def requests(draw: st.DrawFn) -> Request:
    body = draw(bodies)
    if draw(st.sampled_from(OVERSIZE)):  # JSON may end in spaces: only the size is wrong
        body += b" " * (MAX_BODY_BYTES + 1 - len(body))
    return Request(
        body=body,
        signature=draw(st.sampled_from(SIGNATURES)),
        garbage=draw(header_bytes | header_bytes.map(lambda raw: b"sha256=" + raw)),
        content_type=draw(
            st.one_of(*[st.sampled_from(CONTENT_TYPES) for _ in "abc"], header_bytes)
        ),
        chunked=draw(st.booleans()),
    )


async def in_chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 65536):
        yield body[start : start + 65536]


async def post(client: httpx.AsyncClient, intake: Intake, request: Request) -> None:
    """One request: its answer, and the queue before and after, checked against the property."""
    assert intake.admin is not None
    before = (await intake.admin.stats()).depth
    content = in_chunks(request.body) if request.chunked else request.body
    response = await client.post("/webhooks/whatsapp", content=content, headers=request.headers())
    after = (await intake.admin.stats()).depth
    status = response.status_code
    hypothesis.event(f"status {status}")  # --hypothesis-show-statistics: the spread
    assert status < 500, (status, response.text)
    if len(request.body) > MAX_BODY_BYTES:
        assert status == 413
    elif not request.signed:
        assert status == 401
    elif request.body in FIXTURE_SET and request.content_type in CONTENT_TYPES[:3]:
        assert status == 200, (status, response.text)  # Meta's shapes as Meta sends them
    else:
        assert status in (200, 400), (status, response.text)
    if status != 200:
        assert after == before, "stored though refused"


def test_webhook_endpoint_answers_every_request_with_200_or_4xx(
    make_settings: Callable[..., Settings],
) -> None:
    """Never a 5xx or a hang; nothing stored unsigned or refused; pristine fixtures stored."""
    config = make_settings(
        whatsapp_app_secret=SECRET,
        queue_backend="memory",
        session_store_backend="memory",
        dedupe_backend="memory",
        body_timeout_seconds=5,
    )
    with asyncio.Runner() as runner, contextlib.ExitStack() as closing:
        roles = runner.run(_enter(closing, runner, open_roles(config)))
        intake = runner.run(roles.intake())
        transport = httpx.ASGITransport(app=create_app(config, intake))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        closing.callback(lambda: runner.run(client.aclose()))

        @hypothesis.settings(PROFILE, max_examples=400)
        @given(request=requests())
        def check(request: Request) -> None:
            runner.run(asyncio.wait_for(post(client, intake, request), timeout=30))

        check()


async def _enter(closing: contextlib.ExitStack, runner: asyncio.Runner, manager: Any) -> Any:
    """Enter an async context manager now; leave it (on the runner) when `closing` closes."""
    entered = await manager.__aenter__()
    closing.callback(lambda: runner.run(manager.__aexit__(None, None, None)))
    return entered


@hypothesis.settings(PROFILE, max_examples=600)
@given(body=bodies)
def test_parser_and_split_take_any_bytes(body: bytes) -> None:
    """Any body is tasks or MalformedPayload (a 400), never another exception."""
    try:
        tasks = split_webhook(parse_webhook_body(body), 0.0)
    except MalformedPayload:
        return
    assert all(task.task_id for task in tasks)
