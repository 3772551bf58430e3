"""Shared fixtures: settings without `.env`, fixture files, real servers (tests/servers.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyloto_cli.settings import Settings

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


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
