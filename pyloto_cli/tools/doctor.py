"""`pyloto doctor`: check a configuration before a deploy, one result per check.

Each check is an async function over `Settings` that returns the one-line detail of a pass or
raises `Problem` with a detail naming the setting to fix. `run_doctor` runs them with a short
deadline each, so an unreachable network fails in seconds; any other error is a failure too
(a check never passes by default). Checks whose settings are missing are left out: the settings
check already names what to set, and one line per cause is easier to act on.

The HTTP and OpenAI clients come from the caller (the CLI passes the production openers), so a
check talks to Graph and OpenAI exactly as `serve` would. No detail prints a secret.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias

import httpx
from pydantic import ValidationError

from pyloto_cli.settings import QueueBackend, Settings, cloud_run_problems

if TYPE_CHECKING:
    import openai

CHECK_TIMEOUT_S = 5.0

HttpOpener: TypeAlias = Callable[
    [Settings, httpx.Timeout], AbstractAsyncContextManager[httpx.AsyncClient]
]
OpenAIOpener: TypeAlias = Callable[[Settings], AbstractAsyncContextManager["openai.AsyncOpenAI"]]


@dataclass(frozen=True, slots=True)
class Openers:
    """The clients the checks use, opened as the running service opens them."""

    http: HttpOpener
    openai: OpenAIOpener


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object (`--json`)."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


class Problem(Exception):
    """A check failed; the message names the setting to fix."""


Probe: TypeAlias = Callable[[], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Check:
    """A named probe and the setting a failure most likely points at."""

    name: str
    setting: str
    probe: Probe


# --- settings ---------------------------------------------------------------------------------


def _chosen_by(settings: Settings, backend: str) -> list[str]:
    """The settings that choose `backend`, e.g. `QUEUE_BACKEND=redis`."""
    chosen = {
        "QUEUE_BACKEND": settings.queue_backend,
        "SESSION_STORE_BACKEND": settings.session_store_backend,
        "DEDUPE_BACKEND": settings.dedupe_backend,
    }
    return [f"{name}={value.value}" for name, value in chosen.items() if value.value == backend]


def _uses(settings: Settings, backend: str) -> bool:
    return bool(_chosen_by(settings, backend))


def settings_problems(settings: Settings) -> dict[str, str]:
    """Every setting that is missing or inconsistent: its name, and why."""
    problems = {
        name: f"{name} is not set"
        for name, value in (
            ("WHATSAPP_APP_SECRET", settings.whatsapp_app_secret),
            ("WHATSAPP_VERIFY_TOKEN", settings.whatsapp_verify_token),
            ("WHATSAPP_ACCESS_TOKEN", settings.whatsapp_access_token),
            ("WHATSAPP_PHONE_NUMBER_ID", settings.whatsapp_phone_number_id),
        )
        if not value
    }
    if settings.openai_enabled and settings.openai_api_key is None:
        problems["OPENAI_API_KEY"] = "OPENAI_API_KEY is not set (or set OPENAI_ENABLED=false)"
    if _uses(settings, "redis"):
        problems.update(_redis_problems(settings))
    if settings.queue_backend is QueueBackend.CLOUD_TASKS:
        problems.update(_cloud_tasks_problems(settings))
    if settings.queue_backend is QueueBackend.PUBSUB and not settings.pubsub_project_id:
        problems["PUBSUB_PROJECT"] = "PUBSUB_PROJECT (or GOOGLE_CLOUD_PROJECT) is not set"
    if _uses(settings, "firestore") and not settings.google_cloud_project:
        chosen = ", ".join(_chosen_by(settings, "firestore"))
        problems["GOOGLE_CLOUD_PROJECT"] = f"GOOGLE_CLOUD_PROJECT is not set ({chosen} needs it)"
    if settings.queue_backend is QueueBackend.MEMORY:
        problems["QUEUE_BACKEND"] = (
            "QUEUE_BACKEND=memory loses every task on a restart: choose another"
        )
    for problem in cloud_run_problems(settings):  # the same refusal `serve` makes
        problems["QUEUE_BACKEND"] = problem
    return problems


def _redis_problems(settings: Settings) -> dict[str, str]:
    if not settings.redis_url:
        chosen = ", ".join(_chosen_by(settings, "redis"))
        return {"REDIS_URL": f"REDIS_URL is not set ({chosen} needs it)"}
    return {}


def _cloud_tasks_problems(settings: Settings) -> dict[str, str]:
    problems = {}
    if not settings.cloudtasks_handler_url:
        problems["CLOUDTASKS_HANDLER_URL"] = (
            "CLOUDTASKS_HANDLER_URL is not set (QUEUE_BACKEND=cloud_tasks needs it)"
        )
    if not settings.cloudtasks_project_id:
        problems["CLOUDTASKS_PROJECT"] = "CLOUDTASKS_PROJECT (or GOOGLE_CLOUD_PROJECT) is not set"
    if not settings.tasks_token and not settings.cloudtasks_service_account:
        problems["CLOUDTASKS_SERVICE_ACCOUNT"] = (
            "CLOUDTASKS_SERVICE_ACCOUNT or PYLOTO_TASKS_TOKEN is not set "
            "(/tasks/process must be authenticated)"
        )
    return problems


async def check_settings(settings: Settings) -> str:
    """Required settings are present and agree with the chosen backends."""
    problems = settings_problems(settings)
    if problems:
        raise Problem("; ".join(problems.values()))
    backends = (
        f"queue {settings.queue_backend.value}, sessions {settings.session_store_backend.value}, "
        f"dedupe {settings.dedupe_backend.value}"
    )
    return f"required settings present ({backends})"


# --- extras and backends -----------------------------------------------------------------------

_EXTRA_MODULES = {
    "redis": ("redis",),
    "gcp": ("google.cloud.firestore", "google.cloud.tasks_v2"),
    "pubsub": ("google.cloud.pubsub_v1",),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google.cloud) is missing
        return False


def needed_extras(settings: Settings) -> list[str]:
    """The extras the chosen backends import."""
    extras = []
    if _uses(settings, "redis"):
        extras.append("redis")
    if _uses(settings, "firestore") or settings.queue_backend is QueueBackend.CLOUD_TASKS:
        extras.append("gcp")
    if settings.queue_backend is QueueBackend.PUBSUB:
        extras.append("pubsub")
    return extras


async def check_extras(settings: Settings) -> str:
    """The packages the chosen backends need are installed."""
    missing = [
        extra
        for extra in needed_extras(settings)
        if not all(_installed(m) for m in _EXTRA_MODULES[extra])
    ]
    if missing:
        names = ",".join(missing)
        raise Problem(
            f"the chosen backends (QUEUE_BACKEND, SESSION_STORE_BACKEND, DEDUPE_BACKEND) need "
            f"pip install 'pyloto[{names}]'"
        )
    return f"installed: {', '.join(needed_extras(settings)) or 'nothing extra needed'}"


async def check_data_dir(settings: Settings) -> str:
    """The SQLite files' directory takes a file, or (before the first run) can be made."""
    path = settings.data_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".pyloto-doctor-"):
            pass
    except OSError as exc:
        raise Problem(
            f"PYLOTO_DATA_DIR {path} is not a writable directory ({exc.strerror or exc}): "
            "point it at one pyloto may write"
        ) from exc
    if existing != path:
        return f"PYLOTO_DATA_DIR {path} does not exist yet; it can be created"
    return f"PYLOTO_DATA_DIR {path} is writable"


async def check_redis(settings: Settings) -> str:
    """Redis answers a PING."""
    from pyloto_cli.adapters.redis_db import RedisConnection, redis_address
    from pyloto_cli.domain.errors import BackendUnavailable

    url = str(settings.redis_url)
    try:
        async with RedisConnection(url, role="doctor"):
            pass
    except BackendUnavailable as exc:
        raise Problem(f"REDIS_URL: {exc}") from exc
    return f"Redis at {redis_address(url)} answers PING"


async def check_firestore(settings: Settings) -> str:
    """Firestore answers one read."""
    from pyloto_cli.adapters.firestore_db import FirestoreDatabase
    from pyloto_cli.domain.errors import BackendUnavailable

    db = FirestoreDatabase(settings.google_cloud_project, address=settings.firestore_emulator_host)
    try:
        async with db:
            pass
    except BackendUnavailable as exc:
        raise Problem(f"GOOGLE_CLOUD_PROJECT / FIRESTORE_EMULATOR_HOST: {exc}") from exc
    return f"Firestore (project {settings.google_cloud_project}) answers a read"


async def check_cloud_tasks(settings: Settings) -> str:
    """The Cloud Tasks queue exists (it is never created here, not even on the emulator)."""
    from pyloto_cli.adapters.queue.cloud_tasks import CloudTasksConfig, probe_queue
    from pyloto_cli.domain.errors import BackendUnavailable

    config = CloudTasksConfig.from_settings(settings)
    try:
        await probe_queue(config, timeout_s=CHECK_TIMEOUT_S)
    except BackendUnavailable as exc:
        raise Problem(f"CLOUDTASKS_QUEUE_NAME / CLOUDTASKS_LOCATION: {exc}") from exc
    return f"Cloud Tasks queue {config.queue_path} exists"


async def check_pubsub(settings: Settings) -> str:
    """The Pub/Sub topic and subscription exist (never created here, whatever
    PYLOTO_PUBSUB_CREATE says: a check must not repair what it checks)."""
    from pyloto_cli.adapters.queue.pubsub import PubSubConfig, prepare
    from pyloto_cli.domain.errors import BackendUnavailable

    config = replace(PubSubConfig.from_settings(settings), create=False)
    try:
        await asyncio.to_thread(prepare, config)
    except BackendUnavailable as exc:
        raise Problem(f"PUBSUB_TOPIC / PUBSUB_SUBSCRIPTION: {exc}") from exc
    return f"Pub/Sub topic {config.topic_path} and subscription {config.subscription} exist"


# --- Graph, OpenAI, the webhook ------------------------------------------------------------------


def _timeout() -> httpx.Timeout:
    return httpx.Timeout(CHECK_TIMEOUT_S)


def _graph_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return None, ""
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return (code if isinstance(code, int) else None), str(message or "")


async def check_graph(settings: Settings, openers: Openers) -> str:
    """The token is accepted and reaches pyloto's own number (`GET /{phone_number_id}`)."""
    token = settings.whatsapp_access_token
    number = str(settings.whatsapp_phone_number_id)
    base = f"{settings.graph_api_url.rstrip('/')}/{settings.graph_api_version.strip('/')}"
    headers = {"Authorization": f"Bearer {token.get_secret_value() if token else ''}"}
    async with openers.http(settings, _timeout()) as client:
        try:
            response = await client.get(f"{base}/{number}", headers=headers)
        except httpx.HTTPError as exc:
            raise Problem(
                f"GRAPH_API_URL {settings.graph_api_url} cannot be reached ({type(exc).__name__})"
            ) from exc
    if response.is_success:
        return f"WHATSAPP_ACCESS_TOKEN reaches WHATSAPP_PHONE_NUMBER_ID {number}"
    code, message = _graph_error(response)
    if response.status_code == 401 or code == 190:
        raise Problem(f"WHATSAPP_ACCESS_TOKEN is rejected by Graph (code {code}): renew the token")
    if code == 100 or response.status_code == 404:
        raise Problem(
            f"WHATSAPP_PHONE_NUMBER_ID {number} is not found with this token (code {code}): "
            "copy it from the app's WhatsApp > API setup page"
        )
    raise Problem(
        f"Graph answered HTTP {response.status_code} (code {code}: {message[:80]}) for "
        f"WHATSAPP_PHONE_NUMBER_ID {number}"
    )


async def check_openai(settings: Settings, openers: Openers) -> str:
    """The key is accepted (one models call)."""
    import openai  # the SDK is large: imported when the check runs, not with the CLI

    where = settings.openai_base_url or "api.openai.com"
    quick = settings.model_copy(update={"llm_stage_timeout": CHECK_TIMEOUT_S, "llm_max_retries": 0})
    try:
        async with openers.openai(quick) as client:
            await client.models.list()
    except openai.AuthenticationError as exc:
        # the SDK's message repeats part of the key: print the status only
        raise Problem(f"OPENAI_API_KEY is rejected by {where} (HTTP {exc.status_code})") from exc
    except openai.APIStatusError as exc:
        raise Problem(f"OPENAI_BASE_URL {where} answered HTTP {exc.status_code}") from exc
    except openai.APIConnectionError as exc:
        raise Problem(f"OPENAI_BASE_URL {where} cannot be reached ({type(exc).__name__})") from exc
    return f"OPENAI_API_KEY accepted by {where}"


async def check_webhook(settings: Settings, openers: Openers, url: str) -> str:
    """The public URL answers Meta's verify handshake with the challenge it was sent."""
    token = settings.whatsapp_verify_token
    challenge = str(secrets.randbelow(10**9))
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": token.get_secret_value() if token else "",
        "hub.challenge": challenge,
    }
    async with openers.http(settings, _timeout()) as client:
        try:
            response = await client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise Problem(f"--webhook-url {url} cannot be reached ({type(exc).__name__})") from exc
    if response.status_code == 403:
        raise Problem(
            f"{url} refused the verify token (HTTP 403): WHATSAPP_VERIFY_TOKEN differs from "
            "the one the deployed service uses"
        )
    if response.status_code != 200 or response.text.strip() != challenge:
        raise Problem(
            f"{url} answered HTTP {response.status_code} without echoing hub.challenge: "
            "check --webhook-url points at pyloto's /webhooks/whatsapp"
        )
    return f"{url} answers the verify handshake"


# --- the run ----------------------------------------------------------------------------------


def plan(settings: Settings, openers: Openers, webhook_url: str | None = None) -> list[Check]:
    """The checks that apply to `settings`, in report order."""
    checks = [
        Check("settings", "the settings named", lambda: check_settings(settings)),
        Check("extras", "the extras", lambda: check_extras(settings)),
    ]
    blocked = set(settings_problems(settings))
    extras_ok = all(all(_installed(m) for m in _EXTRA_MODULES[e]) for e in needed_extras(settings))

    def unblocked(*names: str) -> bool:
        return blocked.isdisjoint(names)

    if _uses(settings, "sqlite"):
        checks.append(Check("data dir", "PYLOTO_DATA_DIR", lambda: check_data_dir(settings)))
    if extras_ok and _uses(settings, "redis") and unblocked("REDIS_URL"):
        checks.append(Check("redis", "REDIS_URL", lambda: check_redis(settings)))
    if extras_ok and _uses(settings, "firestore") and unblocked("GOOGLE_CLOUD_PROJECT"):
        checks.append(Check("firestore", "GOOGLE_CLOUD_PROJECT", lambda: check_firestore(settings)))
    cloud = settings.queue_backend is QueueBackend.CLOUD_TASKS
    if extras_ok and cloud and unblocked("CLOUDTASKS_HANDLER_URL", "CLOUDTASKS_PROJECT"):
        checks.append(
            Check("cloud tasks", "CLOUDTASKS_QUEUE_NAME", lambda: check_cloud_tasks(settings))
        )
    if extras_ok and settings.queue_backend is QueueBackend.PUBSUB and unblocked("PUBSUB_PROJECT"):
        checks.append(Check("pubsub", "PUBSUB_SUBSCRIPTION", lambda: check_pubsub(settings)))
    if unblocked("WHATSAPP_ACCESS_TOKEN", "WHATSAPP_PHONE_NUMBER_ID"):
        checks.append(Check("graph", "GRAPH_API_URL", lambda: check_graph(settings, openers)))
    if settings.llm_active:
        checks.append(Check("openai", "OPENAI_BASE_URL", lambda: check_openai(settings, openers)))
    if webhook_url is not None and unblocked("WHATSAPP_VERIFY_TOKEN"):
        checks.append(
            Check("webhook", "--webhook-url", lambda: check_webhook(settings, openers, webhook_url))
        )
    return checks


async def run_check(check: Check) -> CheckResult:
    """Run one check within CHECK_TIMEOUT_S (plus a margin for the client's own timeouts)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S + 1.0):
            detail = await check.probe()
    except Problem as exc:
        return CheckResult(check.name, False, str(exc))
    except TimeoutError:
        return CheckResult(
            check.name, False, f"no answer within {CHECK_TIMEOUT_S:g} s: check {check.setting}"
        )
    except Exception as exc:  # whatever went wrong, the check must not pass
        return CheckResult(check.name, False, f"{type(exc).__name__}: check {check.setting}")
    return CheckResult(check.name, True, detail)


def invalid_settings(exc: ValidationError) -> list[CheckResult]:
    """Settings that did not even parse, as the failing settings line (values not shown)."""
    lines = [
        f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return [CheckResult("settings", False, "; ".join(lines))]


async def run_doctor(
    settings: Settings, openers: Openers, *, webhook_url: str | None = None
) -> list[CheckResult]:
    """Every applicable check, run concurrently, reported in plan order."""
    checks = plan(settings, openers, webhook_url)
    return list(await asyncio.gather(*(run_check(c) for c in checks)))
