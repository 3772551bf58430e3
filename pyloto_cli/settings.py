"""Settings: the only reader of the environment and `.env`.

Built once at the edge (the CLI callback, the ASGI factory's caller, a test) and passed down.
Environment names are the ones users know from Meta's and OpenAI's docs and from the seed
design; pyloto's own knobs take the `PYLOTO_` prefix. Every field is listed in the README's
settings table.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_GRAPH_API_VERSION = "v25.0"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("console", "json")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class QueueBackend(StrEnum):
    """Where tasks wait between the webhook and the worker."""

    SQLITE = "sqlite"
    MEMORY = "memory"
    CLOUD_TASKS = "cloud_tasks"
    REDIS = "redis"
    PUBSUB = "pubsub"


class StoreBackend(StrEnum):
    """Where sessions and dedupe markers live."""

    SQLITE = "sqlite"
    MEMORY = "memory"
    REDIS = "redis"
    FIRESTORE = "firestore"


class SqliteSync(StrEnum):
    """SQLite `synchronous` pragma for the embedded files (WAL mode)."""

    NORMAL = "NORMAL"
    FULL = "FULL"


def _env(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, *more)


class Settings(BaseSettings):
    """Every setting pyloto reads, from the environment or an optional `.env` file."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # --- WhatsApp / Graph API -------------------------------------------------------------
    whatsapp_app_secret: SecretStr | None = Field(
        None, validation_alias=_env("WHATSAPP_APP_SECRET")
    )
    whatsapp_verify_token: SecretStr | None = Field(
        None, validation_alias=_env("WHATSAPP_VERIFY_TOKEN")
    )
    whatsapp_access_token: SecretStr | None = Field(
        None, validation_alias=_env("WHATSAPP_ACCESS_TOKEN")
    )
    # pyloto's own number (Meta's phone number id): `pyloto send` sends from it by default,
    # `pyloto doctor` checks the token reaches it
    whatsapp_phone_number_id: str | None = Field(
        None, validation_alias=_env("WHATSAPP_PHONE_NUMBER_ID")
    )
    graph_api_url: str = Field("https://graph.facebook.com", validation_alias=_env("GRAPH_API_URL"))
    graph_api_version: str = Field(
        DEFAULT_GRAPH_API_VERSION, validation_alias=_env("GRAPH_API_VERSION")
    )

    # --- OpenAI ----------------------------------------------------------------------------
    openai_enabled: bool = Field(True, validation_alias=_env("OPENAI_ENABLED"))
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    openai_model: str = Field("gpt-4o-mini", validation_alias=_env("OPENAI_MODEL"))
    openai_model_event: str | None = Field(None, validation_alias=_env("PYLOTO_OPENAI_MODEL_EVENT"))
    openai_model_response: str | None = Field(
        None, validation_alias=_env("PYLOTO_OPENAI_MODEL_RESPONSE")
    )
    openai_model_type: str | None = Field(None, validation_alias=_env("PYLOTO_OPENAI_MODEL_TYPE"))

    # --- Backends ---------------------------------------------------------------------------
    queue_backend: QueueBackend = Field(QueueBackend.SQLITE, validation_alias=_env("QUEUE_BACKEND"))
    session_store_backend: StoreBackend = Field(
        StoreBackend.SQLITE, validation_alias=_env("SESSION_STORE_BACKEND")
    )
    dedupe_backend: StoreBackend = Field(
        StoreBackend.SQLITE, validation_alias=_env("DEDUPE_BACKEND")
    )
    data_dir: Path = Field(Path(".pyloto"), validation_alias=_env("PYLOTO_DATA_DIR"))
    sqlite_synchronous: SqliteSync = Field(
        SqliteSync.NORMAL, validation_alias=_env("PYLOTO_SQLITE_SYNCHRONOUS")
    )
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    # every key pyloto writes starts with it: two deployments can share one Redis
    redis_prefix: str = Field(
        "pyloto:", min_length=1, pattern=r"^[^\s{}]+$", validation_alias=_env("PYLOTO_REDIS_PREFIX")
    )
    google_cloud_project: str | None = Field(None, validation_alias=_env("GOOGLE_CLOUD_PROJECT"))
    # read by the Firestore client library itself; pyloto names it in its errors
    firestore_emulator_host: str | None = Field(
        None, validation_alias=_env("FIRESTORE_EMULATOR_HOST")
    )
    cloudtasks_project: str | None = Field(None, validation_alias=_env("CLOUDTASKS_PROJECT"))
    cloudtasks_location: str = Field("us-central1", validation_alias=_env("CLOUDTASKS_LOCATION"))
    cloudtasks_queue_name: str = Field(
        "whatsapp-process", validation_alias=_env("CLOUDTASKS_QUEUE_NAME")
    )
    cloudtasks_handler_url: str | None = Field(
        None, validation_alias=_env("CLOUDTASKS_HANDLER_URL")
    )
    cloudtasks_service_account: str | None = Field(
        None, validation_alias=_env("CLOUDTASKS_SERVICE_ACCOUNT")
    )
    cloud_tasks_emulator_host: str | None = Field(
        None, validation_alias=_env("CLOUD_TASKS_EMULATOR_HOST")
    )
    tasks_token: SecretStr | None = Field(None, validation_alias=_env("PYLOTO_TASKS_TOKEN"))
    # Google Cloud Pub/Sub (QUEUE_BACKEND=pubsub): a topic the webhook publishes to, a
    # subscription the workers stream from, and a dead-letter topic as the backstop
    pubsub_project: str | None = Field(None, validation_alias=_env("PUBSUB_PROJECT"))
    pubsub_topic: str = Field("whatsapp-inbound", validation_alias=_env("PUBSUB_TOPIC"))
    pubsub_subscription: str = Field(
        "whatsapp-inbound-worker", validation_alias=_env("PUBSUB_SUBSCRIPTION")
    )
    pubsub_dead_letter_topic: str = Field(
        "whatsapp-inbound-dead", validation_alias=_env("PUBSUB_DEAD_LETTER_TOPIC")
    )
    # Pub/Sub's own limits for a dead-letter policy
    pubsub_max_delivery_attempts: int = Field(
        10, ge=5, le=100, validation_alias=_env("PUBSUB_MAX_DELIVERY_ATTEMPTS")
    )
    # create the topics and subscriptions that are missing at start (local use, the emulator)
    pubsub_create: bool = Field(False, validation_alias=_env("PYLOTO_PUBSUB_CREATE"))
    # read by the Pub/Sub client library itself; pyloto connects to it explicitly too
    pubsub_emulator_host: str | None = Field(None, validation_alias=_env("PUBSUB_EMULATOR_HOST"))
    # push mode (POST /pubsub/push): the OIDC token's audience and the push service account
    pubsub_push_audience: str | None = Field(None, validation_alias=_env("PUBSUB_PUSH_AUDIENCE"))
    pubsub_push_service_account: str | None = Field(
        None, validation_alias=_env("PUBSUB_PUSH_SERVICE_ACCOUNT")
    )

    # --- Worker and queue policy -------------------------------------------------------------
    worker_enabled: bool = Field(True, validation_alias=_env("PYLOTO_WORKER_ENABLED"))
    workers: int = Field(0, ge=0, le=64, validation_alias=_env("PYLOTO_WORKERS"))
    # set by `serve --workers N` for its children (see pyloto_cli.workers), not by users
    parent_pid: int | None = Field(None, validation_alias=_env("PYLOTO_PARENT_PID"))
    ready_fd: int | None = Field(None, ge=0, validation_alias=_env("PYLOTO_READY_FD"))
    wake_fd: int | None = Field(None, ge=0, validation_alias=_env("PYLOTO_WAKE_FD"))
    concurrency: int = Field(256, ge=1, le=10_000, validation_alias=_env("PYLOTO_CONCURRENCY"))
    lease_seconds: float = Field(30.0, gt=0, validation_alias=_env("PYLOTO_LEASE_SECONDS"))
    poll_interval: float = Field(0.05, gt=0, validation_alias=_env("PYLOTO_POLL_INTERVAL"))
    max_attempts: int = Field(5, ge=1, validation_alias=_env("PYLOTO_MAX_ATTEMPTS"))
    # Known transient failures (Graph or LLM down) retry until this long after the message was
    # sent (or its 24-hour window closes); PYLOTO_MAX_ATTEMPTS bounds only the unknown ones.
    retry_horizon_seconds: float = Field(
        3600.0, gt=0, validation_alias=_env("PYLOTO_RETRY_HORIZON_SECONDS")
    )
    retry_base_seconds: float = Field(1.0, ge=0, validation_alias=_env("PYLOTO_RETRY_BASE_SECONDS"))
    retry_cap_seconds: float = Field(300.0, ge=0, validation_alias=_env("PYLOTO_RETRY_CAP_SECONDS"))
    retry_jitter: float = Field(0.2, ge=0, le=1, validation_alias=_env("PYLOTO_RETRY_JITTER"))
    history_turns: int = Field(50, ge=2, validation_alias=_env("PYLOTO_HISTORY_TURNS"))
    dedupe_ttl_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, validation_alias=_env("PYLOTO_DEDUPE_TTL_SECONDS")
    )
    # inside Cloud Run's 10 s between SIGTERM and SIGKILL, with room to release the rest
    shutdown_grace_seconds: float = Field(
        8.0, ge=0, validation_alias=_env("PYLOTO_SHUTDOWN_GRACE_SECONDS")
    )
    # Burst coalescing (pull queues): a user's messages received within this many seconds of
    # the first one after an idle spell are answered as one turn. 0 = off.
    coalesce_window_seconds: float = Field(
        0.0, ge=0, le=60, validation_alias=_env("PYLOTO_COALESCE_WINDOW_SECONDS")
    )
    coalesce_max: int = Field(10, ge=1, le=100, validation_alias=_env("PYLOTO_COALESCE_MAX"))
    # Cloud Tasks: how long `/tasks/process` waits for another call of the same conversation to
    # finish before it puts its task back (one task per conversation at a time)
    conversation_wait_seconds: float = Field(
        30.0, ge=0, le=600, validation_alias=_env("PYLOTO_CONVERSATION_WAIT_SECONDS")
    )

    # --- LLM stages (issue: LLM stages) --------------------------------------------------------
    prompts_dir: Path | None = Field(None, validation_alias=_env("PYLOTO_PROMPTS_DIR"))
    llm_stage_timeout: float = Field(8.0, gt=0, validation_alias=_env("PYLOTO_LLM_STAGE_TIMEOUT"))
    llm_deadline: float = Field(20.0, gt=0, validation_alias=_env("PYLOTO_LLM_DEADLINE"))
    llm_max_retries: int = Field(1, ge=0, le=1, validation_alias=_env("PYLOTO_LLM_MAX_RETRIES"))
    safe_reply: str = Field(
        "Sorry, I couldn't prepare an answer to that. Could you say it another way?",
        validation_alias=_env("PYLOTO_SAFE_REPLY"),
    )
    # Comma-separated LLM#1 events whose configured message replaces the generated reply. The
    # LLM's opt_out is only recorded: opting out is the user's exact keyword, never a guess.
    override_events: str = Field("human_handoff", validation_alias=_env("PYLOTO_OVERRIDE_EVENTS"))
    handoff_reply: str = Field(
        "Thanks! A person from our team will reply here soon.",
        validation_alias=_env("PYLOTO_HANDOFF_REPLY"),
    )
    optout_reply: str = Field(
        "You won't receive more messages from us. Reply START to receive them again.",
        validation_alias=_env("PYLOTO_OPTOUT_REPLY"),
    )
    # Conversation modes: exact keywords (case- and accent-insensitive) opt a user out and back
    # in; a handed-off conversation with no staff activity for the timeout returns to the bot.
    optout_keywords: str = Field(
        "STOP,PARAR,SAIR,UNSUBSCRIBE", validation_alias=_env("PYLOTO_OPTOUT_KEYWORDS")
    )
    optin_keywords: str = Field(
        "START,VOLTAR,RESUME", validation_alias=_env("PYLOTO_OPTIN_KEYWORDS")
    )
    optin_reply: str = Field(
        "Welcome back! You'll receive our messages again. How can we help?",
        validation_alias=_env("PYLOTO_OPTIN_REPLY"),
    )
    handoff_timeout_seconds: float = Field(
        43200.0, gt=0, validation_alias=_env("PYLOTO_HANDOFF_TIMEOUT_SECONDS")
    )
    # A reply longer than one text message goes as up to this many messages.
    max_reply_parts: int = Field(4, ge=1, le=10, validation_alias=_env("PYLOTO_MAX_REPLY_PARTS"))
    llm_breaker_failures: int = Field(5, ge=1, validation_alias=_env("PYLOTO_LLM_BREAKER_FAILURES"))
    llm_breaker_cooldown: float = Field(
        30.0, gt=0, validation_alias=_env("PYLOTO_LLM_BREAKER_COOLDOWN")
    )
    # Graph API breaker: this many unreachable sends in a row (connection errors, 5xx) pause
    # sending for the cool-down, then one probe send decides.
    graph_breaker_failures: int = Field(
        5, ge=1, validation_alias=_env("PYLOTO_GRAPH_BREAKER_FAILURES")
    )
    graph_breaker_cooldown: float = Field(
        10.0, gt=0, validation_alias=_env("PYLOTO_GRAPH_BREAKER_COOLDOWN")
    )
    # Optional reply cache for short context-free turns (adapters/llm/cache.py); off by default.
    reply_cache: bool = Field(False, validation_alias=_env("PYLOTO_REPLY_CACHE"))
    reply_cache_ttl_seconds: float = Field(
        600.0, gt=0, validation_alias=_env("PYLOTO_REPLY_CACHE_TTL_SECONDS")
    )
    reply_cache_max_words: int = Field(
        4, ge=1, le=20, validation_alias=_env("PYLOTO_REPLY_CACHE_MAX_WORDS")
    )

    # --- Inbound media ------------------------------------------------------------------------
    # one cap for every type, in bytes; unset: Meta's limit per type (image 5 MB, audio 16 MB...)
    media_max_bytes: int | None = Field(None, gt=0, validation_alias=_env("PYLOTO_MEDIA_MAX_BYTES"))
    media_keep_seconds: float = Field(0.0, ge=0, validation_alias=_env("PYLOTO_MEDIA_KEEP_SECONDS"))
    transcribe_model: str = Field(
        "gpt-4o-mini-transcribe", validation_alias=_env("PYLOTO_TRANSCRIBE_MODEL")
    )
    transcribe_timeout: float = Field(
        30.0, gt=0, validation_alias=_env("PYLOTO_TRANSCRIBE_TIMEOUT")
    )
    vision_model: str | None = Field(None, validation_alias=_env("PYLOTO_VISION_MODEL"))
    document_max_pages: int = Field(10, ge=1, validation_alias=_env("PYLOTO_DOCUMENT_MAX_PAGES"))

    # --- Sending ------------------------------------------------------------------------------
    mark_read: bool = Field(False, validation_alias=_env("PYLOTO_MARK_READ"))
    typing_indicator: bool = Field(False, validation_alias=_env("PYLOTO_TYPING_INDICATOR"))
    send_rate_per_number: float = Field(
        80.0, gt=0, validation_alias=_env("PYLOTO_SEND_RATE_PER_NUMBER")
    )
    # a message older than this (by its own timestamp, when the task runs) is stored, not
    # answered; at most the 24-hour window, past which no free-form reply may go anyway
    stale_after_seconds: float = Field(
        86400.0, gt=0, le=86400, validation_alias=_env("PYLOTO_STALE_AFTER_SECONDS")
    )
    # an approved template (name and language code, both set) sent instead of a reply whose
    # 24-hour window closed before it could go; unset: the task ends as reply_expired
    reengage_template: str | None = Field(None, validation_alias=_env("PYLOTO_REENGAGE_TEMPLATE"))
    reengage_template_lang: str | None = Field(
        None, validate_default=True, validation_alias=_env("PYLOTO_REENGAGE_TEMPLATE_LANG")
    )

    # --- Web ------------------------------------------------------------------------------------
    # unset: 127.0.0.1, or every interface when PORT is set (see listen_address)
    host: str | None = Field(None, validation_alias=_env("PYLOTO_HOST"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=_env("PYLOTO_PORT"))
    # set by Cloud Run (and other platforms): the port to listen on, on every interface
    platform_port: int | None = Field(None, ge=1, le=65535, validation_alias=_env("PORT"))
    # set by Cloud Run to the service's name: an instance and its disk may go away at any time
    k_service: str | None = Field(None, validation_alias=_env("K_SERVICE"))
    # a client must send a request's headers, and then its body, within these many seconds,
    # or its connection is closed: a slow client cannot hold one open for ever
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600, validation_alias=_env("PYLOTO_HEADER_TIMEOUT_SECONDS")
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, le=3600, validation_alias=_env("PYLOTO_BODY_TIMEOUT_SECONDS")
    )
    log_format: str = Field("console", validation_alias=_env("PYLOTO_LOG_FORMAT"))
    log_level: str = Field("INFO", validation_alias=_env("PYLOTO_LOG_LEVEL"))
    # GET /metrics (Prometheus) on the webhook's port; off: 404
    metrics: bool = Field(False, validation_alias=_env("PYLOTO_METRICS"))
    # when set, /metrics answers only `Authorization: Bearer <token>`
    admin_token: SecretStr | None = Field(None, validation_alias=_env("PYLOTO_ADMIN_TOKEN"))

    # A typo here would otherwise surface as a traceback at start-up (level, Redis URL) or be
    # ignored silently (format): each is refused with the variable named, before anything runs.
    @field_validator("log_level", mode="before")
    @classmethod
    def known_level(cls, value: object) -> object:
        if isinstance(value, str) and value.upper() not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)}")
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def known_format(cls, value: object) -> object:
        if isinstance(value, str) and value.lower() not in LOG_FORMATS:
            raise ValueError(f"unknown log format {value!r}; use one of {', '.join(LOG_FORMATS)}")
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def redis_url_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a Redis URL ({exc}); expected redis://host:6379/0") from exc
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(
                "not a Redis URL; expected redis://host:6379/0 (or rediss://, unix://)"
            )
        return value

    @field_validator("reengage_template_lang")
    @classmethod
    def template_needs_its_language(cls, value: str | None, info: ValidationInfo) -> str | None:
        # a template without its language (or the reverse) would silently send nothing
        if bool(value) != bool(info.data.get("reengage_template")):
            raise ValueError(
                "PYLOTO_REENGAGE_TEMPLATE and PYLOTO_REENGAGE_TEMPLATE_LANG go together: "
                "set both (the template's name and language code) or neither"
            )
        return value

    @property
    def llm_active(self) -> bool:
        """The real LLM stages run only when enabled and a key is present."""
        return self.openai_enabled and self.openai_api_key is not None

    @property
    def pubsub_project_id(self) -> str | None:
        """`PUBSUB_PROJECT`, falling back to `GOOGLE_CLOUD_PROJECT`."""
        return self.pubsub_project or self.google_cloud_project

    @property
    def cloudtasks_project_id(self) -> str | None:
        """`CLOUDTASKS_PROJECT`, falling back to `GOOGLE_CLOUD_PROJECT`."""
        return self.cloudtasks_project or self.google_cloud_project


LOOPBACK = "127.0.0.1"
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - only when PORT (a platform's contract) asks for it


class ListenAddress(NamedTuple):
    """Where `pyloto serve` binds, and whether PORT chose every interface."""

    host: str
    port: int
    from_platform: bool


def listen_address(settings: Settings, host: str | None, port: int | None) -> ListenAddress:
    """The bind address: `--host`/`--port` first, then the settings.

    A platform that sets PORT (Cloud Run) routes to the container from outside, so PORT alone
    means every interface; PYLOTO_PORT or `--port` alone keep the safe loopback default.
    """
    chosen_port = port if port is not None else settings.platform_port or settings.port
    chosen_host = host or settings.host
    if chosen_host is not None:
        return ListenAddress(chosen_host, chosen_port, from_platform=False)
    if settings.platform_port is not None:
        return ListenAddress(EVERY_INTERFACE, chosen_port, from_platform=True)
    return ListenAddress(LOOPBACK, chosen_port, from_platform=False)


# Queues whose tasks live on the instance's own disk or memory.
_INSTANCE_QUEUES = (QueueBackend.SQLITE, QueueBackend.MEMORY)


def cloud_run_problems(settings: Settings) -> list[str]:
    """What would lose messages on Cloud Run (K_SERVICE set), one plain line each; empty
    elsewhere. Shared by `serve`, which refuses to start, and `doctor`."""
    if settings.k_service is None:
        return []
    problems: list[str] = []
    if settings.queue_backend in _INSTANCE_QUEUES:
        problems.append(
            f"QUEUE_BACKEND={settings.queue_backend.value} keeps tasks on the instance, and a "
            "Cloud Run instance (K_SERVICE is set) can go away with them: "
            "set QUEUE_BACKEND=cloud_tasks, pubsub or redis"
        )
    return problems
