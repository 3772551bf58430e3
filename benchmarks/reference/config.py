"""The reference bots' configuration: the environment variables `pyloto serve` reads too.

    WHATSAPP_APP_SECRET    required; checks X-Hub-Signature-256
    WHATSAPP_ACCESS_TOKEN  required; Bearer token of the Graph API
    WHATSAPP_VERIFY_TOKEN  the webhook challenge token (default: a random one)
    GRAPH_API_URL          default https://graph.facebook.com
    GRAPH_API_VERSION      default pyloto's (v25.0)
    OPENAI_API_KEY         required
    OPENAI_BASE_URL        default: the OpenAI API
    OPENAI_MODEL           default gpt-4o-mini, pyloto's default for all three stages
    PORT                   default 8000

Read once, when the app is built; the bots bind 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from pyloto_cli.settings import DEFAULT_GRAPH_API_VERSION

DEFAULT_MODEL: Final = "gpt-4o-mini"
DEFAULT_GRAPH_API_URL: Final = "https://graph.facebook.com"
DEFAULT_PORT: Final = 8000
WEBHOOK_PATH: Final = "/webhooks/whatsapp"  # where `pyloto serve` takes webhooks, too


class ConfigError(ValueError):
    """A required environment variable is missing."""


@dataclass(frozen=True, slots=True)
class BotConfig:
    """What a reference bot needs; secrets are kept out of `repr`."""

    app_secret: str = field(repr=False)
    access_token: str = field(repr=False)
    openai_api_key: str = field(repr=False)
    verify_token: str = field(repr=False, default_factory=lambda: secrets.token_hex(16))
    graph_api_url: str = DEFAULT_GRAPH_API_URL
    graph_api_version: str = DEFAULT_GRAPH_API_VERSION
    openai_base_url: str | None = None
    openai_model: str = DEFAULT_MODEL
    port: int = DEFAULT_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BotConfig:
        """The configuration from environment variables (raises ConfigError)."""

        def need(name: str) -> str:
            value = env.get(name)
            if not value:
                raise ConfigError(f"{name} is required")
            return value

        return cls(
            app_secret=need("WHATSAPP_APP_SECRET"),
            access_token=need("WHATSAPP_ACCESS_TOKEN"),
            openai_api_key=need("OPENAI_API_KEY"),
            verify_token=env.get("WHATSAPP_VERIFY_TOKEN") or secrets.token_hex(16),
            graph_api_url=env.get("GRAPH_API_URL") or DEFAULT_GRAPH_API_URL,
            graph_api_version=env.get("GRAPH_API_VERSION") or DEFAULT_GRAPH_API_VERSION,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            openai_model=env.get("OPENAI_MODEL") or DEFAULT_MODEL,
            port=int(env.get("PORT") or DEFAULT_PORT),
        )
