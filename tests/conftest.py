"""Shared fixtures: a hermetic environment, settings without `.env`, fixture files, real servers
(tests/servers.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.settings import Settings

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

# Every variable pyloto, the OpenAI SDK or the Google clients read: a developer's real keys and
# servers must never reach a test. Tests that need a server take its address from a fixture.
HERMETIC_PREFIXES = (
    "PYLOTO_",
    "OPENAI_",
    "WHATSAPP_",
    "GRAPH_",
    "REDIS_",
    "GOOGLE_",
    "FIRESTORE_",
    "CLOUD",
    "PUBSUB_",
)
# Settings read these names too, without a prefix of their own.
HERMETIC_NAMES = ("QUEUE_BACKEND", "SESSION_STORE_BACKEND", "DEDUPE_BACKEND", "PORT", "K_SERVICE")


def make_hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the settings' variables and stop Settings from reading a `.env` in the cwd; the
    monkeypatch restores both."""
    for name in list(os.environ):
        if name.startswith(HERMETIC_PREFIXES) or name in HERMETIC_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.setitem(Settings.model_config, "env_file", None)


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts hermetic; subprocesses it starts inherit the cleared environment."""
    make_hermetic(monkeypatch)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings built from keyword arguments only (no environment file), data in tmp_path."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "whatsapp_app_secret": "test-app-secret",
            "whatsapp_verify_token": "test-verify-token",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return factory


def load_fixture(name: str) -> dict[str, Any]:
    """A webhook or Graph JSON file from `fixtures/` (path relative to it)."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data
