"""Who may call `/tasks/process`: Cloud Tasks' OIDC ID token, or a shared secret header.

With the Cloud Tasks backend the worker is an HTTP endpoint anyone on the internet could POST
to, so pyloto refuses to start unless one of these is configured:

- `CLOUDTASKS_SERVICE_ACCOUNT`: Cloud Tasks signs an ID token for that service account and
  sends it as `Authorization: Bearer <jwt>`. The token is checked with google-auth against
  Google's certificates (cached for as long as Google's `Cache-Control` allows): signature,
  expiry, issuer, audience (`CLOUDTASKS_HANDLER_URL`) and the service account's verified email.
  Verification blocks (a certificate download, RSA), so it runs in a worker thread.
- `PYLOTO_TASKS_TOKEN`: every task carries `X-Pyloto-Task-Token`, compared in constant time.
  Simpler, but anyone who can read the queue's tasks can read the token.

`TaskAuthenticator.authenticate(headers)` accepts a request if any configured method accepts
it, and otherwise raises `TaskUnauthenticated` (401) or `TaskForbidden` (403).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pyloto_cli.domain.errors import PylotoError
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.settings import Settings

TASK_TOKEN_HEADER = "X-Pyloto-Task-Token"  # noqa: S105 - a header name, not a secret
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
MIN_TOKEN_LENGTH = 16
_DEFAULT_CERTS_MAX_AGE_S = 3600.0
_MAX_AGE = re.compile(r"max-age=(\d+)")

_log = get_logger("web.tasks_auth")


class TaskAuthError(PylotoError):
    """A `/tasks/process` request is refused; `status_code` is the answer."""

    status_code = 401


class TaskUnauthenticated(TaskAuthError):
    """No credentials, or ones that do not verify (bad signature, expired, wrong audience)."""

    status_code = 401


class TaskForbidden(TaskAuthError):
    """A valid Google ID token, but not the configured service account's."""

    status_code = 403


class TaskAuthConfigError(PylotoError):
    """The settings leave `/tasks/process` unauthenticated; pyloto refuses to start."""


class CertSource(Protocol):
    """Public keys or certificates (PEM) by key id; called from a worker thread."""

    def certs(self) -> Mapping[str, str]:
        """The current keys, e.g. Google's OAuth2 certificates."""
        ...


HttpGet = Callable[[str], tuple[int, Mapping[str, str], bytes]]


def _requests_get(url: str) -> tuple[int, Mapping[str, str], bytes]:
    """GET with google-auth's requests transport (imported here: it pulls in `requests`)."""
    from google.auth.transport.requests import Request

    response = Request()(url, method="GET", timeout=10)
    return response.status, response.headers, response.data


class GoogleCerts:
    """Google's ID-token certificates, fetched on first use and cached per `Cache-Control`."""

    def __init__(
        self,
        url: str = GOOGLE_CERTS_URL,
        *,
        http_get: HttpGet = _requests_get,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._get = http_get
        self._clock = clock
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] = {}
        self._expires = 0.0

    def certs(self) -> Mapping[str, str]:
        """The cached certificates, refreshed once they are older than Google's max-age."""
        with self._lock:
            if self._clock() >= self._expires:
                status, headers, body = self._get(self.url)
                if status != 200:
                    raise TaskUnauthenticated(f"cannot fetch Google certificates: HTTP {status}")
                self._certs = dict(json.loads(body))
                self._expires = self._clock() + _max_age(headers)
            return self._certs


def _max_age(headers: Mapping[str, str]) -> float:
    for name, value in headers.items():
        if name.lower() == "cache-control" and (match := _MAX_AGE.search(value)):
            return float(match.group(1))
    return _DEFAULT_CERTS_MAX_AGE_S


@dataclass(frozen=True, slots=True)
class OidcVerifier:
    """Checks a Cloud Tasks ID token: Google-signed, fresh, for `audience`, from `email`."""

    audience: str
    service_account: str
    certs: CertSource
    clock_skew_s: int = 10

    def verify(self, token: str) -> Mapping[str, Any]:
        """The token's claims; raises TaskUnauthenticated or TaskForbidden. Blocking."""
        # google-auth is the `gcp` extra: imported only where Cloud Tasks is in use
        from google.auth import exceptions as gauth_exc
        from google.auth import jwt

        try:
            claims: Mapping[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                token,
                certs=self.certs.certs(),
                audience=self.audience,
                clock_skew_in_seconds=self.clock_skew_s,
            )
        except (ValueError, gauth_exc.GoogleAuthError) as exc:
            raise TaskUnauthenticated(f"ID token rejected: {exc}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise TaskUnauthenticated(f"ID token issuer {claims.get('iss')!r} is not Google")
        if claims.get("email") != self.service_account or claims.get("email_verified") is not True:
            raise TaskForbidden("ID token is not the configured service account's")
        return claims


class TaskAuthenticator:
    """Authenticates `/tasks/process` requests by OIDC token and/or shared secret."""

    def __init__(self, *, token: str | None = None, verifier: OidcVerifier | None = None) -> None:
        if token is None and verifier is None:
            raise TaskAuthConfigError("TaskAuthenticator needs a token or an OIDC verifier")
        self._token = token.encode() if token is not None else None
        self._verifier = verifier

    async def authenticate(self, headers: Mapping[str, str]) -> None:
        """Return if any configured method accepts the request; raise TaskAuthError if not."""
        lowered = {name.lower(): value for name, value in headers.items()}
        error: TaskAuthError = TaskUnauthenticated("no task credentials in the request")
        presented = lowered.get(TASK_TOKEN_HEADER.lower())
        if self._token is not None and presented is not None:
            if hmac.compare_digest(presented.encode(), self._token):
                return
            error = TaskUnauthenticated(f"{TASK_TOKEN_HEADER} does not match")
        bearer = _bearer(lowered.get("authorization", ""))
        if self._verifier is not None and bearer:
            try:
                await asyncio.to_thread(self._verifier.verify, bearer)
                return
            except TaskAuthError as exc:
                error = exc
        log_event(
            _log,
            "task_auth_rejected",
            logging.WARNING,
            status=error.status_code,
            reason=str(error),
        )
        raise error


def _bearer(value: str) -> str:
    scheme, _, credentials = value.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _shared_token(settings: Settings) -> str:
    """PYLOTO_TASKS_TOKEN, "" when unset; TaskAuthConfigError when set but too short."""
    token = settings.tasks_token.get_secret_value() if settings.tasks_token else ""
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise TaskAuthConfigError(
            f"PYLOTO_TASKS_TOKEN must be at least {MIN_TOKEN_LENGTH} characters long"
        )
    return token


def _authenticator(
    token: str, account: str | None, audience: str | None, certs: CertSource | None
) -> TaskAuthenticator:
    """The shared token (when set) and/or an OIDC check of `account`'s ID tokens for
    `audience` (when both are set); `certs` defaults to Google's."""
    verifier = None
    if account and audience:
        verifier = OidcVerifier(
            audience=audience,
            service_account=account,
            certs=certs if certs is not None else GoogleCerts(),
        )
    return TaskAuthenticator(token=token or None, verifier=verifier)


def check_tasks_auth_settings(settings: Settings) -> None:
    """Raise TaskAuthConfigError unless the settings authenticate `/tasks/process`."""
    token = settings.tasks_token.get_secret_value() if settings.tasks_token else ""
    account = settings.cloudtasks_service_account
    if not token and not account:
        raise TaskAuthConfigError(
            "QUEUE_BACKEND=cloud_tasks needs CLOUDTASKS_SERVICE_ACCOUNT (Cloud Tasks' OIDC token "
            "is verified) or PYLOTO_TASKS_TOKEN (a shared secret header); pyloto will not serve "
            "an unauthenticated /tasks/process"
        )
    if account and not settings.cloudtasks_handler_url:
        raise TaskAuthConfigError(
            "CLOUDTASKS_SERVICE_ACCOUNT needs CLOUDTASKS_HANDLER_URL, the ID token's audience"
        )
    _shared_token(settings)


def build_task_authenticator(
    settings: Settings, *, certs: CertSource | None = None
) -> TaskAuthenticator:
    """The authenticator the settings ask for (checked first); `certs` defaults to Google's."""
    check_tasks_auth_settings(settings)
    account, audience = settings.cloudtasks_service_account, settings.cloudtasks_handler_url
    return _authenticator(_shared_token(settings), account, audience, certs)


def build_pubsub_push_authenticator(
    settings: Settings, *, certs: CertSource | None = None
) -> TaskAuthenticator | None:
    """Who may call `POST /pubsub/push`: the push subscription's OIDC token
    (PUBSUB_PUSH_SERVICE_ACCOUNT, audience PUBSUB_PUSH_AUDIENCE) and/or PYLOTO_TASKS_TOKEN.
    None when neither is set: the endpoint is then off (404), never open."""
    token = settings.tasks_token.get_secret_value() if settings.tasks_token else ""
    account, audience = settings.pubsub_push_service_account, settings.pubsub_push_audience
    if not token and not account:
        return None
    if account and not audience:
        raise TaskAuthConfigError(
            "PUBSUB_PUSH_SERVICE_ACCOUNT needs PUBSUB_PUSH_AUDIENCE, the ID token's audience"
        )
    return _authenticator(_shared_token(settings), account, audience, certs)
