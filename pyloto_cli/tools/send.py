"""`pyloto send`: an operator's one-off message, through the sender the worker uses.

The same `Sender` as `serve` (the Graph sender with its per-number and per-recipient limiter,
or the dry-run sender when no `WHATSAPP_ACCESS_TOKEN` is set) and the same Graph error policy.
Before anything goes out, in this order:

1. the input is checked (one content, a number or BSUID, `--from` a phone number id, a file
   WhatsApp would take for its kind): a problem is a `ToolUsageError` (exit 2), nothing opened;
2. the conversation is read from the session store, under `{phone_number_id}:{wa_id or BSUID}`
   (how the pipeline keys it): a user who opted out gets nothing (`SendRefused`), and unless
   the user wrote in the last 24 hours only a template may go: free-form messages outside the
   window fail at Meta with 131047 anyway. No stored conversation counts as a closed window;
3. a media file is uploaded (`POST /{phone_number_id}/media`), then the message sent.

A Graph error becomes `SendRefused` with Meta's code and reason in words (exit 1); a send
whose answer was lost says the message may have gone out, since retrying could send it twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from pyloto_cli.domain import ids
from pyloto_cli.domain.conversation import ConversationState, Mode
from pyloto_cli.domain.errors import (
    AmbiguousSendError,
    PermanentError,
    PylotoError,
    SendPaused,
    TransientError,
)
from pyloto_cli.domain.outbound import (
    TEXT_MAX,
    media_body,
    template_body,
    template_body_parameters,
    text_body,
    wa_len,
)
from pyloto_cli.domain.outbound_media import MediaFile, MediaKind, MediaRejected, check_media
from pyloto_cli.domain.session import Role, Session
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.domain.webhook import Recipient
from pyloto_cli.logs import get_logger, log_event, mask_phone
from pyloto_cli.ports import Sender
from pyloto_cli.settings import Settings
from pyloto_cli.tools import RolesOpener, ToolUsageError

_log = get_logger("tools.send")

_PHONE: Final = re.compile(r"\+?[1-9]\d{7,14}")  # E.164: up to 15 digits, no leading zero
_PHONE_SEPARATORS: Final = re.compile(r"[\s().-]")
_BSUID: Final = re.compile(r"[A-Z]{2}(\.ENT)?\.[A-Za-z0-9]{1,128}")
_TEMPLATE_NAME: Final = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE: Final = re.compile(r"[a-z]{2,3}(_[A-Za-z]{2,4})?")


class SendRefused(PylotoError):
    """pyloto or Meta would not send this message; the reason is one line (exit 1)."""


@dataclass(frozen=True, slots=True)
class SendRequest:
    """What the operator asked for: exactly one of text, media, template."""

    to: str
    from_id: str | None = None
    text: str | None = None
    media: tuple[MediaKind, Path] | None = None
    caption: str | None = None
    template: str | None = None
    language: str | None = None
    params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """The checked addresses: the business number, the user, the conversation's key."""

    phone_number_id: str
    user: str  # phone digits (no +) or BSUID
    is_phone: bool

    @property
    def conversation_key(self) -> str:
        return f"{self.phone_number_id}:{self.user}"

    @property
    def shown(self) -> str:
        """The user as output shows it: masked."""
        return str(mask_phone(self.user))


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What was sent: Meta's wamid (or the dry run's), to whom (masked), as what."""

    message_id: str
    to: str
    phone_number_id: str
    type: str
    dry_run: bool
    media_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The outcome as one JSON object (`--json`)."""
        return {
            "sent": True,
            "message_id": self.message_id,
            "to": self.to,
            "from": self.phone_number_id,
            "type": self.type,
            "media_id": self.media_id,
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True, slots=True)
class _Content:
    """The message to send, checked; `media` is uploaded first when set."""

    kind: str
    text: str | None = None
    media: MediaFile | None = None
    path: Path | None = None
    template: tuple[str, str, tuple[str, ...]] | None = None

    @property
    def free_form(self) -> bool:
        return self.template is None


# --- checking the input --------------------------------------------------------------------


def check_target(request: SendRequest, settings: Settings) -> Target:
    """The business number (`--from`, else WHATSAPP_PHONE_NUMBER_ID) and the user, checked."""
    number = request.from_id or settings.whatsapp_phone_number_id
    if not number:
        raise ToolUsageError("no business number: pass --from or set WHATSAPP_PHONE_NUMBER_ID")
    if not ids.is_numeric_id(number):
        raise ToolUsageError(
            f"--from {ids.shown(number)} is not a phone number id (Meta's id is digits only)"
        )
    raw = request.to.strip()
    if _BSUID.fullmatch(raw):
        return Target(number, raw, is_phone=False)
    phone = _PHONE_SEPARATORS.sub("", raw)
    if _PHONE.fullmatch(phone):
        return Target(number, phone.lstrip("+"), is_phone=True)
    raise ToolUsageError(
        f"--to {mask_phone(raw) if raw else repr(raw)} is neither a phone number with its "
        "country code (+5511987654321) nor a BSUID (US.13491208655302741918)"
    )


def check_content(request: SendRequest) -> _Content:
    """Exactly one content option, each checked as WhatsApp would check it."""
    given = [
        name
        for name, value in (
            ("--text", request.text),
            ("--image/--document/--audio/--video", request.media),
            ("--template", request.template),
        )
        if value is not None
    ]
    if len(given) != 1:
        which = " and ".join(given) if given else "none"
        raise ToolUsageError(
            "give exactly one of --text, --image, --document, --audio, --video, --template "
            f"(got {which})"
        )
    if request.caption is not None and request.media is None:
        raise ToolUsageError("--caption goes with --image, --document or --video")
    if request.template is None and (request.language is not None or request.params):
        raise ToolUsageError("--lang and --param go with --template")
    if request.text is not None:
        return _text_content(request.text)
    if request.media is not None:
        return _media_content(*request.media, request.caption)
    return _template_content(request)


def _text_content(text: str) -> _Content:
    body = text.strip()
    if not body:
        raise ToolUsageError("--text is empty")
    if wa_len(body) > TEXT_MAX:
        raise ToolUsageError(f"--text is {wa_len(body)} characters; the most is {TEXT_MAX}")
    return _Content("text", text=body)


def _media_content(kind: MediaKind, path: Path, caption: str | None) -> _Content:
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "no such file"
        raise ToolUsageError(f"--{kind.value} {path}: {problem}")
    try:
        media = check_media(kind, path.name, path.stat().st_size, caption)
    except MediaRejected as exc:
        raise ToolUsageError(str(exc)) from exc
    return _Content(kind.value, media=media, path=path)


def _template_content(request: SendRequest) -> _Content:
    name = (request.template or "").strip()
    if not _TEMPLATE_NAME.fullmatch(name):
        raise ToolUsageError(
            f"--template {ids.shown(name)} is not a template name (lower-case letters, digits, _)"
        )
    language = (request.language or "").strip()
    if not language:
        raise ToolUsageError("--template needs --lang, the template's language code (en_US)")
    if not _LANGUAGE.fullmatch(language):
        raise ToolUsageError(f"--lang {ids.shown(language)} is not a language code (en, pt_BR)")
    if any(not p.strip() for p in request.params):
        raise ToolUsageError("a --param is empty (Meta refuses empty template parameters)")
    return _Content("template", template=(name, language, tuple(request.params)))


# --- the conversation ------------------------------------------------------------------------


def check_conversation(
    session: Session | None, content: _Content, now: float, where: str = "the session store"
) -> None:
    """Refuse an opted-out user, and a free-form message outside the 24-hour window."""
    state = _state(session)
    if state is not None and state.mode is Mode.OPTED_OUT:
        raise SendRefused("the user opted out of messages from this number: nothing was sent")
    if not content.free_form:
        return
    if state is None:
        raise SendRefused(
            f"no conversation with this user in {where}, so the 24-hour window is not known "
            "to be open: only --template can be sent"
        )
    if not state.window_open(now):
        since = "never wrote" if state.last_inbound_at is None else _ago(now, state)
        raise SendRefused(
            f"the 24-hour window is closed (the user {since}): only --template can be sent"
        )


def _state(session: Session | None) -> ConversationState | None:
    """The conversation's state; a session that has no `last_inbound_at` in its meta yet (kept
    before the pipeline recorded it) dates the window from its newest user turn."""
    if session is None:
        return None
    state = ConversationState.from_meta(session.meta)
    if state.last_inbound_at is None:
        wrote = [turn.at for turn in session.turns if turn.role is Role.USER]
        if wrote:
            state = replace(state, last_inbound_at=max(wrote))
    return state


def _sessions_place(settings: Settings) -> str:
    """Where the sessions are read from, for a refusal that found none."""
    backend = settings.session_store_backend.value
    if backend == "sqlite":
        return f"{settings.data_dir.resolve() / 'state.db'} (PYLOTO_DATA_DIR)"
    return f"the {backend} session store"


def _ago(now: float, state: ConversationState) -> str:
    hours = (now - (state.last_inbound_at or now)) / 3600
    return f"last wrote {hours:.0f} h ago"


def _recipient(target: Target, session: Session | None) -> Recipient:
    """The phone when known (a BSUID's stored wa_id too, since Meta prefers `to`)."""
    if target.is_phone:
        return Recipient(to=target.user)
    phone = session.meta.get("wa_id") if session is not None else None
    return Recipient(to=phone or None, recipient=target.user)


# --- sending ---------------------------------------------------------------------------------


async def _deliver(
    sender: Sender, target: Target, recipient: Recipient, content: _Content
) -> tuple[str, str | None]:
    """Upload (for media) and send; returns (wamid, media id)."""
    media_id: str | None = None
    body: JsonObject
    if content.media is not None and content.path is not None:
        try:
            media_id = await sender.upload_media(
                target.phone_number_id, content.path, content.media.mime_type
            )
        except (TransientError, PermanentError) as exc:
            raise describe_failure(exc, uploading=True) from exc
        body = media_body(recipient, content.media, media_id)
    elif content.template is not None:
        name, language, params = content.template
        body = template_body(recipient, name, language, template_body_parameters(params))
    else:
        body = text_body(recipient, content.text or "")
    try:
        result = await sender.send(target.phone_number_id, body)
    except (TransientError, PermanentError) as exc:
        raise describe_failure(exc, uploading=False) from exc
    return result.message_id, media_id


def describe_failure(exc: TransientError | PermanentError, *, uploading: bool) -> SendRefused:
    """A Graph or limiter error as one line: what became of the message, Meta's code and
    reason in words, and when to try again."""
    words = str(exc).replace("_", " ")
    step = "the upload failed, nothing was sent" if uploading else "not sent"
    if isinstance(exc, SendPaused):
        return SendRefused(f"{step}: WHATSAPP_ACCESS_TOKEN is rejected by Graph ({words})")
    if isinstance(exc, AmbiguousSendError) and not uploading:
        return SendRefused(
            f"Graph did not answer after the message went out ({words}): it may have been "
            "sent; check with the user before sending it again"
        )
    if isinstance(exc, TransientError):
        wait = f" in {exc.retry_after:.0f} s" if exc.retry_after else " later"
        return SendRefused(f"{step} ({words}): try again{wait}")
    return SendRefused(f"{step}: {words}")


async def run_send(
    settings: Settings,
    open_roles: RolesOpener,
    request: SendRequest,
    clock: Callable[[], float] = time.time,
) -> SendOutcome:
    """Check, then send one message as `request` asks; raises ToolUsageError or SendRefused."""
    target = check_target(request, settings)
    content = check_content(request)
    async with open_roles(settings) as roles:
        sessions = (await roles.stores()).sessions
        session = await sessions.load(target.conversation_key)
        check_conversation(session, content, clock(), _sessions_place(settings))
        sender = await roles.sender()
        message_id, media_id = await _deliver(sender, target, _recipient(target, session), content)
    dry_run = settings.whatsapp_access_token is None
    log_event(
        _log,
        "operator_message_sent",
        phone_number_id=target.phone_number_id,
        to=target.user,
        type=content.kind,
        sent_message_id=message_id,
        dry_run=dry_run,
    )
    return SendOutcome(
        message_id, target.shown, target.phone_number_id, content.kind, dry_run, media_id
    )
