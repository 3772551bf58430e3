"""The admin API over the conversation desk: auth, 404 when unset, 409, unknown ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.conversation import ConversationState, Mode, conversation_id
from pyloto_cli.domain.session import Session
from pyloto_cli.ports import SessionStore
from pyloto_cli.settings import Settings
from pyloto_cli.web.app import create_app

TOKEN = "s3cret-admin-token"
ANA = "106540352242922:5511987654321"
OPTED = "106540352242922:5511911112222"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Admin:
    """An app over memory stores, and its session store to look behind the API."""

    def __init__(self, http: httpx.AsyncClient, sessions: SessionStore) -> None:
        self.http, self.sessions = http, sessions

    async def mode(self, key: str) -> Mode:
        session = await self.sessions.load(key)
        assert session is not None
        return ConversationState.from_meta(session.meta).mode


async def _admin(settings: Settings) -> AsyncIterator[Admin]:
    async with open_roles(settings) as roles:
        sessions = (await roles.stores()).sessions
        await sessions.save(Session(ANA, (), 2.0, {"wa_id": "5511987654321"}))
        await sessions.save(Session(OPTED, (), 1.0, {"mode": "opted_out"}))
        app = create_app(settings, await roles.intake(), conversations=await roles.conversations())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Admin(http, sessions)


def _memory(make_settings: Callable[..., Settings], **overrides: object) -> Settings:
    return make_settings(
        queue_backend="memory", session_store_backend="memory", dedupe_backend="memory", **overrides
    )


@pytest.fixture
async def admin(make_settings: Callable[..., Settings]) -> AsyncIterator[Admin]:
    async for made in _admin(_memory(make_settings, admin_token=TOKEN)):
        yield made


async def test_the_routes_do_not_exist_without_a_token(
    make_settings: Callable[..., Settings],
) -> None:
    """PYLOTO_ADMIN_TOKEN unset: every admin route is 404, even with a bearer header."""
    async for made in _admin(_memory(make_settings)):
        assert (await made.http.get("/admin/conversations", headers=AUTH)).status_code == 404
        answer = await made.http.post(f"/admin/conversations/{conversation_id(ANA)}/handoff")
        assert answer.status_code == 404
        assert await made.mode(ANA) is Mode.ASSISTANT


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"bearer {TOKEN}", TOKEN, f"Bearer {TOKEN} "]
)
async def test_a_bad_token_is_401_and_changes_nothing(admin: Admin, header: str | None) -> None:
    """Missing, wrong or malformed credentials: 401 on every route, the mode unchanged."""
    headers = {} if header is None else {"Authorization": header}
    cid = conversation_id(ANA)
    for method, path in [
        ("GET", "/admin/conversations"),
        ("GET", f"/admin/conversations/{cid}"),
        ("POST", f"/admin/conversations/{cid}/handoff"),
        ("POST", f"/admin/conversations/{cid}/resume"),
    ]:
        answer = await admin.http.request(method, path, headers=headers)
        assert answer.status_code == 401, (method, path)
        assert answer.headers["www-authenticate"] == "Bearer"
    assert await admin.mode(ANA) is Mode.ASSISTANT


async def test_list_show_handoff_resume(admin: Admin) -> None:
    """The CRM's round trip: list, pause, see it paused, resume; numbers stay masked."""
    listed = (await admin.http.get("/admin/conversations", headers=AUTH)).json()
    assert [c["id"] for c in listed["conversations"]] == [
        conversation_id(ANA),
        conversation_id(OPTED),
    ]
    assert "5511987654321" not in str(listed)
    cid = conversation_id(ANA)
    answer = await admin.http.post(f"/admin/conversations/{cid}/handoff", headers=AUTH)
    assert answer.json() == {"id": cid, "old": "assistant", "new": "human"}
    assert await admin.mode(ANA) is Mode.HUMAN
    humans = (await admin.http.get("/admin/conversations?mode=human", headers=AUTH)).json()
    assert [c["id"] for c in humans["conversations"]] == [cid]
    shown = (await admin.http.get("/admin/conversations/5511987654321", headers=AUTH)).json()
    assert (shown["id"], shown["mode"], shown["mode_reason"]) == (cid, "human", "operator")
    answer = await admin.http.post(f"/admin/conversations/{cid}/resume", headers=AUTH)
    assert answer.json()["new"] == "assistant"
    assert await admin.mode(ANA) is Mode.ASSISTANT


async def test_an_opted_out_conversation_is_409(admin: Admin) -> None:
    """Only the user opts back in: handoff and resume are refused, the mode kept."""
    cid = conversation_id(OPTED)
    for action in ("handoff", "resume"):
        answer = await admin.http.post(f"/admin/conversations/{cid}/{action}", headers=AUTH)
        assert answer.status_code == 409
        assert "only the user can opt back in" in answer.json()["error"]
    assert await admin.mode(OPTED) is Mode.OPTED_OUT


async def test_an_unknown_id_is_404_and_a_bad_mode_400(admin: Admin) -> None:
    """An id nobody answers to: 404 with a one-line error; `?mode=robot`: 400."""
    for method, path in [
        ("GET", "/admin/conversations/ffffffffffffffff"),
        ("POST", "/admin/conversations/5511000000000/handoff"),
    ]:
        answer = await admin.http.request(method, path, headers=AUTH)
        assert answer.status_code == 404
        assert answer.json()["error"].startswith("no conversation")
    answer = await admin.http.get("/admin/conversations?mode=robot", headers=AUTH)
    assert answer.status_code == 400
    assert await admin.mode(ANA) is Mode.ASSISTANT
