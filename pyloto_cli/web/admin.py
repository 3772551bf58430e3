"""The admin API: a CRM lists conversations and pauses or resumes the assistant on one.

    GET  /admin/conversations[?mode=assistant|human|opted_out]
    GET  /admin/conversations/{id}
    POST /admin/conversations/{id}/handoff
    POST /admin/conversations/{id}/resume

Every route asks for `Authorization: Bearer <PYLOTO_ADMIN_TOKEN>`, compared in constant time
(401 otherwise, nothing read or changed); without a token configured the routes do not exist.
`{id}` is the conversation's opaque id, or the user's wa_id or BSUID. An unknown id is 404, a
mode change of an `opted_out` conversation 409 (only the user opts back in).
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pyloto_cli.domain.conversation import Mode
from pyloto_cli.pipeline.conversations import (
    ConversationDesk,
    ConversationNotFound,
    ModeChange,
    ModeChangeRefused,
    conversations_json,
)


def authorized(request: Request, token: SecretStr) -> bool:
    """True when the request carries `Authorization: Bearer <token>` (constant-time compare)."""
    sent = request.headers.get("authorization", "").encode()
    expected = b"Bearer " + token.get_secret_value().encode()
    return hmac.compare_digest(sent, expected)


def _unauthorized() -> Response:
    return JSONResponse(
        {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _desk(request: Request) -> ConversationDesk | None:
    """The desk, or None when the request is not authorized."""
    token: SecretStr = request.app.state.admin_token
    if not authorized(request, token):
        return None
    desk: ConversationDesk = request.app.state.conversations
    return desk


async def list_conversations(request: Request) -> Response:
    """GET: every conversation (only those in `?mode=` when given), newest activity first."""
    desk = _desk(request)
    if desk is None:
        return _unauthorized()
    wanted = request.query_params.get("mode")
    try:
        mode = None if wanted is None else Mode(wanted)
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        return _error(400, f"unknown mode {wanted!r}; use one of {choices}")
    return JSONResponse({"conversations": conversations_json(await desk.list(mode))})


async def show_conversation(request: Request) -> Response:
    """GET: one conversation with its turns."""
    desk = _desk(request)
    if desk is None:
        return _unauthorized()
    try:
        found = await desk.find(request.path_params["ident"])
    except ConversationNotFound as exc:
        return _error(404, str(exc))
    return JSONResponse(found.to_json())


async def handoff(request: Request) -> Response:
    """POST: hand the conversation to a person."""
    return await _change(request, to_human=True)


async def resume(request: Request) -> Response:
    """POST: give the conversation back to the assistant."""
    return await _change(request, to_human=False)


async def _change(request: Request, *, to_human: bool) -> Response:
    desk = _desk(request)
    if desk is None:
        return _unauthorized()
    ident = request.path_params["ident"]
    try:
        change: ModeChange = await (desk.handoff(ident) if to_human else desk.resume(ident))
    except ConversationNotFound as exc:
        return _error(404, str(exc))
    except ModeChangeRefused as exc:
        return _error(409, str(exc))
    return JSONResponse(change.to_json())


def admin_routes() -> list[Route]:
    """The admin API's routes (mounted only when an admin token is configured)."""
    base = "/admin/conversations"
    return [
        Route(base, list_conversations, methods=["GET"]),
        Route(f"{base}/{{ident}}", show_conversation, methods=["GET"]),
        Route(f"{base}/{{ident}}/handoff", handoff, methods=["POST"]),
        Route(f"{base}/{{ident}}/resume", resume, methods=["POST"]),
    ]
