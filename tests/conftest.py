"""Shared fixtures: a hermetic environment, settings without `.env`, fixture files, real servers
(tests/servers.py)."""

from __future__ import annotations

import json
import os
import time
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


def _messages(payload: Any) -> list[dict[str, Any]]:
    """Every `messages[]` item of a webhook body (none for anything else)."""
    if not isinstance(payload, dict):
        return []
    return [
        message
        for entry in payload.get("entry") or ()
        for change in entry.get("changes") or ()
        for message in (change.get("value") or {}).get("messages") or ()
    ]


def stamp_now(*payloads: Any, now: float | None = None) -> None:
    """Shift the messages' timestamps in place so that the newest is `now` (the wall clock),
    keeping their spacing: recorded fixtures read as just received, as Meta would post them
    (the pipeline does not answer a message older than a day)."""
    messages = [m for payload in payloads for m in _messages(payload)]
    stamps = [int(m["timestamp"]) for m in messages if str(m.get("timestamp", "")).isdigit()]
    if not stamps:
        return
    shift = int(time.time() if now is None else now) - max(stamps)
    for message in messages:
        if str(message.get("timestamp", "")).isdigit():
            message["timestamp"] = str(int(message["timestamp"]) + shift)


def stamped_fixture(name: str) -> dict[str, Any]:
    """`load_fixture(name)` with its messages stamped now (`stamp_now`)."""
    data = load_fixture(name)
    stamp_now(data)
    return data


def stamped_copy(source: Path, dest: Path) -> Path:
    """A copy of a fixture file, or of a directory's `.json` files, under `dest`, written now
    with its messages stamped now (one shift for the whole directory: a conversation keeps its
    spacing). Returns the copy's path."""
    files = sorted(source.glob("*.json")) if source.is_dir() else [source]
    bodies = [json.loads(path.read_text(encoding="utf-8")) for path in files]
    stamp_now(*bodies)
    target = dest / source.name
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    for path, body in zip(files, bodies, strict=True):
        out = target / path.name if source.is_dir() else target
        out.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return target
